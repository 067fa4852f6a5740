//! A deterministic CT-like abdomen for the scribbles tests and bench: an ellipsoid
//! organ of soft tissue at 60 HU inside tissue of 20–40 HU, a bright (bone, +400 HU) and
//! a dark (fat, −100 HU) structure nearby, air outside the body, Gaussian noise, and
//! the strokes an annotator would draw on three axial slices.
//!
//! Geometry is in mm around the volume's centre, so any dims/spacing give the same
//! anatomy.

use medlabel_imaging::{IDENTITY, Volume};

pub const BACKGROUND: f32 = 2.0;
pub const FOREGROUND: f32 = 3.0;

pub struct Phantom {
    pub image: Volume<f32>,
    /// 1 inside the organ.
    pub truth: Vec<bool>,
    /// 2 for background strokes, 3 for foreground strokes, 0 elsewhere.
    pub scribbles: Volume<f32>,
    /// `[x0, x1, y0, y1, z0, z1]`: the organ's box grown by 10 mm.
    pub roi: [i64; 6],
}

/// Organ centre (mm from the volume centre) and radii.
const ORGAN_CENTRE: [f64; 3] = [-25.0, 10.0, 0.0];
const ORGAN_RADII: [f64; 3] = [32.0, 26.0, 40.0];

pub fn phantom(dims: [usize; 3], spacing: [f64; 3], noise_sd: f32, seed: u64) -> Phantom {
    let mut affine = IDENTITY;
    for a in 0..3 {
        affine[a][a] = spacing[a];
        affine[a][3] = -(dims[a] as f64 - 1.0) / 2.0 * spacing[a];
    }
    let mm = |i: usize, a: usize| (i as f64 - (dims[a] as f64 - 1.0) / 2.0) * spacing[a];
    let inside = |p: [f64; 3], c: [f64; 3], r: [f64; 3]| {
        (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>() <= 1.0
    };
    let mut noise = Noise::new(seed);
    let n = dims.iter().product();
    let (mut image, mut truth) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                let p = [mm(i, 0), mm(j, 1), mm(k, 2)];
                let organ = inside(p, ORGAN_CENTRE, ORGAN_RADII);
                let in_body = (p[0] / 85.0).powi(2) + (p[1] / 70.0).powi(2) <= 1.0;
                // Bone: a vertebra-like cylinder behind the organ; fat: a pad beside it.
                let bone = (p[0] - 10.0).powi(2) + (p[1] + 45.0).powi(2) <= 15.0f64.powi(2);
                let fat = inside(p, [30.0, 20.0, 0.0], [14.0, 18.0, 60.0]);
                let hu = if !in_body {
                    -1000.0
                } else if organ {
                    60.0
                } else if bone {
                    400.0
                } else if fat {
                    -100.0
                } else {
                    // Soft tissue drifting from 20 to 40 HU across the body.
                    30.0 + 10.0 * (p[0] / 85.0) as f32
                };
                image.push(hu + noise_sd * noise.standard_normal());
                truth.push(organ);
            }
        }
    }
    let image = Volume {
        data: image,
        dims,
        affine,
    };

    // Strokes on the organ's central slice and 15 mm above and below it: a 3-voxel-wide
    // foreground line along i through the organ's middle 60 %, and a background
    // rectangle 12 mm outside the organ.
    let mut scribbles = image.with_data(vec![0.0f32; n]);
    let to_index = |x: f64, a: usize| {
        ((x / spacing[a] + (dims[a] as f64 - 1.0) / 2.0).round() as i64)
            .clamp(0, dims[a] as i64 - 1) as usize
    };
    let [ci, cj, _] = std::array::from_fn(|a| to_index(ORGAN_CENTRE[a], a));
    let fg_half = to_index(ORGAN_CENTRE[0] + 0.6 * ORGAN_RADII[0], 0) - ci;
    let bg_lo: [usize; 2] =
        std::array::from_fn(|a| to_index(ORGAN_CENTRE[a] - ORGAN_RADII[a] - 12.0, a));
    let bg_hi: [usize; 2] =
        std::array::from_fn(|a| to_index(ORGAN_CENTRE[a] + ORGAN_RADII[a] + 12.0, a));
    for dz in [-15.0, 0.0, 15.0] {
        let k = to_index(ORGAN_CENTRE[2] + dz, 2);
        let at = |i: usize, j: usize| i + dims[0] * (j + dims[1] * k);
        for i in ci - fg_half..=ci + fg_half {
            for j in cj - 1..=cj + 1 {
                scribbles.data[at(i, j)] = FOREGROUND;
            }
        }
        for i in bg_lo[0]..=bg_hi[0] {
            scribbles.data[at(i, bg_lo[1])] = BACKGROUND;
            scribbles.data[at(i, bg_hi[1])] = BACKGROUND;
        }
        for j in bg_lo[1]..=bg_hi[1] {
            scribbles.data[at(bg_lo[0], j)] = BACKGROUND;
            scribbles.data[at(bg_hi[0], j)] = BACKGROUND;
        }
    }
    let roi = std::array::from_fn(|e| {
        let a = e / 2;
        let x = ORGAN_CENTRE[a] + if e % 2 == 0 { -1.0 } else { 1.0 } * (ORGAN_RADII[a] + 10.0);
        to_index(x, a) as i64 + (e % 2) as i64
    });
    Phantom {
        image,
        truth,
        scribbles,
        roi,
    }
}

/// Dice of a 0/1 mask against the truth.
pub fn dice(mask: &[u8], truth: &[bool]) -> f64 {
    let (mut both, mut sum) = (0usize, 0usize);
    for (&m, &t) in mask.iter().zip(truth) {
        both += usize::from(m == 1 && t);
        sum += usize::from(m == 1) + usize::from(t);
    }
    2.0 * both as f64 / sum.max(1) as f64
}

/// SplitMix64 with Box–Muller: millions of samples, reproducible on any machine.
struct Noise {
    state: u64,
    spare: Option<f32>,
}

impl Noise {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn standard_normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * self.unit()).sin_cos();
        self.spare = Some((r * sin) as f32);
        (r * cos) as f32
    }
}
