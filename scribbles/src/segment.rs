//! The whole pipeline: scribbles and image in, mask on the image's grid out.

use medlabel_imaging::transforms::{BoundingBox, Interpolation, crop, resample_to_spacing};
use medlabel_imaging::{ImageError, Volume, check_same_grid};

use crate::graphcut::{Seed, Smoothness, graph_cut};
use crate::histogram::Histograms;
use crate::{ScribblesError, ScribblesParams};

/// Half-width in voxels of the foreground cube MONAI Label puts at the centre of an ROI
/// that holds no foreground scribble (`offset = 5` in `AddBackgroundScribblesFromROId`).
const ROI_CENTRE_HALF_WIDTH: usize = 5;

/// Segments the object the scribbles mark: 1 for foreground, 0 for background, on the
/// image's grid (its dims and affine).
///
/// `scribbles` is the client's labelmap on the same grid; voxels equal to the
/// background or foreground scribbles label (see [`ScribblesParams::scribble_labels`])
/// are strokes and every other value is ignored. The result agrees with every stroke.
/// See the [crate docs](crate) for the steps and their costs.
///
/// # Errors
///
/// [`ScribblesError::InvalidParameter`] for a parameter out of its domain,
/// [`ScribblesError::GridMismatch`] when the scribbles' dims or affine differ from the
/// image's, [`ScribblesError::EmptyRoi`] for an ROI that selects no voxel,
/// [`ScribblesError::NoForeground`] / [`ScribblesError::NoBackground`] when a class has
/// no stroke (with an ROI, everything outside it is background and an ROI without
/// foreground strokes gets MONAI Label's centre cube instead), and
/// [`ScribblesError::Image`] for a volume whose data does not match its dims or whose
/// affine has a zero-length axis.
pub fn segment(
    image: &Volume<f32>,
    scribbles: &Volume<f32>,
    params: &ScribblesParams,
) -> Result<Volume<u8>, ScribblesError> {
    params.validate()?;
    check_same_grid(image, scribbles).map_err(ScribblesError::GridMismatch)?;
    let dims = image.dims;
    let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if n != Some(image.len()) || n != Some(scribbles.len()) || n == Some(0) {
        return Err(ImageError::InvalidArgument(format!(
            "dims {dims:?} do not match the image's {} and the scribbles' {} voxels",
            image.len(),
            scribbles.len()
        ))
        .into());
    }
    let spacing = image.spacing();
    if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(ImageError::InvalidArgument(format!(
            "image affine has voxel sizes {spacing:?}: an axis has zero length"
        ))
        .into());
    }

    let strokes = Strokes::scan(scribbles, params)?;
    let (crop_box, proc_spacing) = processing_region(&strokes, spacing, params);
    let resample = (0..3).any(|a| (proc_spacing[a] / spacing[a] - 1.0).abs() > 1e-9);
    let cropped = crop(image, &crop_box)?;
    let proc_image = if resample {
        resample_to_spacing(&cropped, proc_spacing, Interpolation::Linear)?
    } else {
        cropped
    };
    let proc_dims = proc_image.dims;
    // Crop voxel t along an axis lies nearest processing voxel maps[axis][t] (both
    // grids share voxel 0's centre); seeds scatter and the mask gathers through it.
    let maps: [Vec<usize>; 3] = std::array::from_fn(|a| {
        let ratio = spacing[a] / proc_spacing[a];
        (0..crop_box.size()[a])
            .map(|t| ((t as f64 * ratio).round() as usize).min(proc_dims[a] - 1))
            .collect()
    });
    let proc_index = |i: usize, j: usize, k: usize| {
        maps[0][i] + proc_dims[0] * (maps[1][j] + proc_dims[1] * maps[2][k])
    };

    let window = Window::new(params, &image.data);
    let intensity: Vec<f32> = proc_image.data.iter().map(|&v| window.apply(v)).collect();
    drop(proc_image);

    // A processing voxel is a seed when strokes of one class only fall into it.
    let mut marks = vec![0u8; intensity.len()];
    for_each_voxel(&crop_box, dims, |idx, [i, j, k]| {
        let bit = match strokes.label(idx, [i, j, k]) {
            Seed::None => return,
            Seed::Background => 1,
            Seed::Foreground => 2,
        };
        let s = crop_box.start;
        marks[proc_index(i - s[0], j - s[1], k - s[2])] |= bit;
    });
    let seeds: Vec<Seed> = marks
        .into_iter()
        .map(|m| match m {
            1 => Seed::Background,
            2 => Seed::Foreground,
            _ => Seed::None,
        })
        .collect();

    let mut hist = Histograms::new(params.num_bins);
    for (&seed, &v) in seeds.iter().zip(&intensity) {
        match seed {
            Seed::Foreground => hist.add_foreground(window.normalised(v), 1.0),
            Seed::Background => hist.add_background(window.normalised(v), 1.0),
            Seed::None => {}
        }
    }
    if let Scope::Roi { .. } = strokes.scope {
        // Everything outside the ROI is background to MONAI Label, beyond the crop
        // too. Those voxels are on the image's grid; weighting each by its volume in
        // processing voxels keeps the balance MONAI Label's resampled counts have.
        let weight = (0..3).map(|a| spacing[a] / proc_spacing[a]).product();
        let (start, end) = (crop_box.start, crop_box.end);
        for (row_index, row) in image.data.chunks_exact(dims[0]).enumerate() {
            let (j, k) = (row_index % dims[1], row_index / dims[1]);
            let crosses_crop = (start[1]..end[1]).contains(&j) && (start[2]..end[2]).contains(&k);
            let (before, after) = if crosses_crop {
                (&row[..start[0]], &row[end[0]..])
            } else {
                (row, &row[..0])
            };
            for &v in before.iter().chain(after) {
                hist.add_background(window.normalised(window.apply(v)), weight);
            }
        }
    }
    let by_bin = hist.foreground_probabilities();
    let probability: Vec<f32> = intensity
        .iter()
        .map(|&v| by_bin[hist.bin(window.normalised(v))])
        .collect();

    let smoothness = Smoothness {
        lamda: params.lamda as f32,
        sigma: params.sigma as f32,
    };
    let foreground = graph_cut(proc_dims, &intensity, &probability, &seeds, smoothness);

    let mut out = Volume::filled(dims, image.affine, 0u8);
    for_each_voxel(&crop_box, dims, |idx, [i, j, k]| {
        let s = crop_box.start;
        out.data[idx] = match strokes.label(idx, [i, j, k]) {
            Seed::Foreground => 1,
            Seed::Background => 0,
            Seed::None => u8::from(foreground[proc_index(i - s[0], j - s[1], k - s[2])]),
        };
    });
    Ok(out)
}

/// Calls `f(linear index, [i, j, k])` for every voxel of `bbox` in a `dims` grid, in
/// memory order.
fn for_each_voxel(bbox: &BoundingBox, dims: [usize; 3], mut f: impl FnMut(usize, [usize; 3])) {
    for k in bbox.start[2]..bbox.end[2] {
        for j in bbox.start[1]..bbox.end[1] {
            let row = dims[0] * (j + dims[1] * k);
            for i in bbox.start[0]..bbox.end[0] {
                f(row + i, [i, j, k]);
            }
        }
    }
}

#[inline]
fn contains(b: &BoundingBox, [i, j, k]: [usize; 3]) -> bool {
    (b.start[0]..b.end[0]).contains(&i)
        && (b.start[1]..b.end[1]).contains(&j)
        && (b.start[2]..b.end[2]).contains(&k)
}

/// The strokes as MONAI Label sees them after `AddBackgroundScribblesFromROId`.
struct Strokes<'a> {
    values: &'a [f32],
    dims: [usize; 3],
    background: f32,
    foreground: f32,
    scope: Scope,
}

/// Where foreground may be.
enum Scope {
    /// In the ROI only: everything outside is background, and `centre_cube` stands in
    /// for missing foreground strokes.
    Roi {
        roi: BoundingBox,
        centre_cube: Option<BoundingBox>,
    },
    /// Anywhere; `extent` is the strokes' bounding box.
    Strokes { extent: BoundingBox },
}

impl<'a> Strokes<'a> {
    fn scan(scribbles: &'a Volume<f32>, params: &ScribblesParams) -> Result<Self, ScribblesError> {
        let dims = scribbles.dims;
        let (bg_label, fg_label) = params.scribble_labels();
        let roi = params.roi.map(|r| clip_roi(r, dims)).transpose()?;
        let (background, foreground) = (bg_label as f32, fg_label as f32);
        let (mut fg, mut bg) = (0usize, 0usize);
        let mut lo = [usize::MAX; 3];
        let mut hi = [0; 3];
        let region = roi.unwrap_or(BoundingBox::full(dims));
        for k in region.start[2]..region.end[2] {
            for j in region.start[1]..region.end[1] {
                let at = dims[0] * (j + dims[1] * k);
                let row = &scribbles.data[at + region.start[0]..at + region.end[0]];
                let is_stroke = |v: &f32| *v == foreground || *v == background;
                // Most rows hold no stroke; this test vectorises.
                if !row.iter().any(is_stroke) {
                    continue;
                }
                for (offset, v) in row.iter().enumerate() {
                    if !is_stroke(v) {
                        continue;
                    }
                    if *v == foreground {
                        fg += 1;
                    } else {
                        bg += 1;
                    }
                    for (a, x) in [region.start[0] + offset, j, k].into_iter().enumerate() {
                        lo[a] = lo[a].min(x);
                        hi[a] = hi[a].max(x + 1);
                    }
                }
            }
        }
        let scope = match roi {
            Some(roi) if bg == 0 && roi == BoundingBox::full(dims) => {
                return Err(ScribblesError::NoBackground { label: bg_label });
            }
            Some(roi) => Scope::Roi {
                roi,
                centre_cube: (fg == 0).then(|| centre_cube(&roi)),
            },
            None if fg == 0 => return Err(ScribblesError::NoForeground { label: fg_label }),
            None if bg == 0 => return Err(ScribblesError::NoBackground { label: bg_label }),
            None => Scope::Strokes {
                extent: BoundingBox { start: lo, end: hi },
            },
        };
        Ok(Strokes {
            values: &scribbles.data,
            dims,
            background,
            foreground,
            scope,
        })
    }

    /// The class voxel `idx` = (i, j, k) belongs to, if any.
    #[inline]
    fn label(&self, idx: usize, ijk: [usize; 3]) -> Seed {
        if let Scope::Roi { roi, centre_cube } = &self.scope {
            if !contains(roi, ijk) {
                return Seed::Background;
            }
            if let Some(cube) = centre_cube
                && contains(cube, ijk)
            {
                return Seed::Foreground;
            }
        }
        let v = self.values[idx];
        if v == self.foreground {
            Seed::Foreground
        } else if v == self.background {
            Seed::Background
        } else {
            Seed::None
        }
    }
}

/// The ROI as a box within the image. Each pair is ordered first (Slicer's RAS → IJK
/// conversion swaps them along a flipped axis) and then clipped to the image, where
/// Python's slicing would instead wrap negative indices.
fn clip_roi(roi: [i64; 6], dims: [usize; 3]) -> Result<BoundingBox, ScribblesError> {
    let mut b = BoundingBox::full(dims);
    for a in 0..3 {
        let (x0, x1) = (
            roi[2 * a].min(roi[2 * a + 1]),
            roi[2 * a].max(roi[2 * a + 1]),
        );
        let clip = |x: i64| x.clamp(0, dims[a] as i64) as usize;
        (b.start[a], b.end[a]) = (clip(x0), clip(x1));
        if b.start[a] >= b.end[a] {
            return Err(ScribblesError::EmptyRoi { roi, dims });
        }
    }
    Ok(b)
}

/// MONAI Label's `[c − 5, c + 5)` cube around the ROI centre `c = ⌊(x0 + x1) / 2⌋`,
/// kept inside the ROI.
fn centre_cube(roi: &BoundingBox) -> BoundingBox {
    let c: [usize; 3] = std::array::from_fn(|a| (roi.start[a] + roi.end[a]) / 2);
    BoundingBox {
        start: std::array::from_fn(|a| {
            c[a].saturating_sub(ROI_CENTRE_HALF_WIDTH).max(roi.start[a])
        }),
        end: std::array::from_fn(|a| (c[a] + ROI_CENTRE_HALF_WIDTH).min(roi.end[a])),
    }
}

/// The box of the image the graph covers, and the voxel size it is resampled to.
///
/// With an ROI: the ROI plus a ring of at least one processing voxel, which holds
/// background seeds; beyond the ring everything is background too, and background
/// next to background costs nothing, so the cut inside equals the cut of the whole
/// image with the outside seeded as MONAI Label does. Without: the strokes' bounding
/// box grown by `crop_margin_mm`. The voxel size is `pix_dim` (or the image's), grown
/// evenly until the resampled box has at most `max_graph_voxels` voxels.
fn processing_region(
    strokes: &Strokes,
    spacing: [f64; 3],
    params: &ScribblesParams,
) -> (BoundingBox, [f64; 3]) {
    let dims = strokes.dims;
    let mut proc = params.pix_dim.unwrap_or(spacing);
    loop {
        let (core, grow): (&BoundingBox, [usize; 3]) = match &strokes.scope {
            Scope::Roi { roi, .. } => (roi, std::array::from_fn(|a| ring(proc[a], spacing[a]))),
            Scope::Strokes { extent } => (
                extent,
                std::array::from_fn(|a| ring(params.crop_margin_mm, spacing[a])),
            ),
        };
        let bbox = BoundingBox {
            start: std::array::from_fn(|a| core.start[a].saturating_sub(grow[a])),
            end: std::array::from_fn(|a| (core.end[a] + grow[a]).min(dims[a])),
        };
        // The dims `resample_to_spacing` gives this box.
        let voxels: f64 = (0..3)
            .map(|a| {
                (bbox.size()[a] as f64 * spacing[a] / proc[a])
                    .round()
                    .max(1.0)
            })
            .product();
        let limit = params.max_graph_voxels as f64;
        if voxels <= limit {
            return (bbox, proc);
        }
        let factor = (voxels / limit).cbrt().max(1.01);
        proc = proc.map(|s| s * factor);
    }
}

/// Voxels of size `spacing` needed to span `mm`.
fn ring(mm: f64, spacing: f64) -> usize {
    (mm / spacing).ceil() as usize
}

/// MONAI's `ScaleIntensityRanged` followed by the `[0, 1]` normalisation that MONAI
/// Label's histogram step applies when the windowed image leaves `[0, 1]`.
struct Window {
    a_min: f32,
    scale: f32,
    b_min: f32,
    lo: f32,
    hi: f32,
    clip: bool,
    /// `(min, 1 / (max − min))` of the windowed image, when it leaves `[0, 1]`.
    normalise: Option<(f32, f32)>,
}

impl Window {
    fn new(p: &ScribblesParams, image: &[f32]) -> Self {
        let (b_min, b_max) = (p.b_min as f32, p.b_max as f32);
        let mut w = Window {
            a_min: p.a_min as f32,
            scale: ((p.b_max - p.b_min) / (p.a_max - p.a_min)) as f32,
            b_min,
            lo: b_min.min(b_max),
            hi: b_min.max(b_max),
            clip: p.clip,
            normalise: None,
        };
        if !(w.clip && w.lo >= 0.0 && w.hi <= 1.0) {
            let (min, max) = image
                .iter()
                .map(|&v| w.apply(v))
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            if min < 0.0 || max > 1.0 {
                // A constant image has no range: every voxel goes to the first bin.
                let inv = if max > min { 1.0 / (max - min) } else { 0.0 };
                w.normalise = Some((min, inv));
            }
        }
        w
    }

    /// The windowed intensity; NaN becomes the bottom of the output range and infinities
    /// the largest finite values, so that neighbour weights stay defined.
    #[inline]
    fn apply(&self, v: f32) -> f32 {
        let x = (v - self.a_min) * self.scale + self.b_min;
        if x.is_nan() {
            self.lo
        } else if self.clip {
            x.clamp(self.lo, self.hi)
        } else {
            x.clamp(f32::MIN, f32::MAX)
        }
    }

    /// A windowed intensity on the histograms' `[0, 1]` scale.
    #[inline]
    fn normalised(&self, x: f32) -> f32 {
        match self.normalise {
            None => x,
            Some((min, inv)) => (x - min) * inv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roi_pairs_are_ordered_and_clipped() {
        let b = clip_roi([40, 10, -5, 7, 3, 99], [32, 16, 8]).unwrap();
        assert_eq!(b.start, [10, 0, 3]);
        assert_eq!(b.end, [32, 7, 8]);
        for roi in [
            [5, 5, 0, 4, 0, 4],
            [40, 50, 0, 4, 0, 4],
            [0, 4, 0, 4, -9, -1],
        ] {
            let err = clip_roi(roi, [32, 16, 8]).unwrap_err();
            assert!(matches!(err, ScribblesError::EmptyRoi { .. }), "{roi:?}");
        }
    }

    #[test]
    fn centre_cube_stays_inside_the_roi() {
        let roi = BoundingBox {
            start: [0, 10, 20],
            end: [4, 40, 23],
        };
        let cube = centre_cube(&roi);
        assert_eq!(cube.start, [0, 20, 20]);
        assert_eq!(cube.end, [4, 30, 23]);
    }

    #[test]
    fn processing_grid_respects_the_voxel_budget() {
        let values = vec![0.0f32; 200 * 200 * 100];
        let strokes = Strokes {
            values: &values,
            dims: [200, 200, 100],
            background: 2.0,
            foreground: 3.0,
            scope: Scope::Strokes {
                extent: BoundingBox {
                    start: [50, 60, 40],
                    end: [120, 110, 60],
                },
            },
        };
        let spacing = [1.0, 1.0, 2.0];
        // Within budget: pix_dim as is, and the strokes' box grown by 50 mm.
        let params = ScribblesParams::default();
        let (bbox, proc) = processing_region(&strokes, spacing, &params);
        assert_eq!(proc, [2.5, 2.5, 5.0]);
        assert_eq!((bbox.start, bbox.end), ([0, 10, 15], [170, 160, 85]));
        // Over budget: coarser, in proportion, until the resampled box fits.
        for max in [100_000, 10_000, 500] {
            let params = ScribblesParams {
                max_graph_voxels: max,
                ..ScribblesParams::default()
            };
            let (bbox, proc) = processing_region(&strokes, spacing, &params);
            let voxels: f64 = (0..3)
                .map(|a| {
                    (bbox.size()[a] as f64 * spacing[a] / proc[a])
                        .round()
                        .max(1.0)
                })
                .product();
            assert!(
                voxels <= max as f64 && voxels > 0.5 * max as f64,
                "{max}: {voxels}"
            );
            assert!((proc[2] / proc[0] - 2.0).abs() < 1e-9 && proc[0] == proc[1]);
        }
    }

    #[test]
    fn window_matches_scale_intensity_range() {
        let p = ScribblesParams::default();
        let w = Window::new(&p, &[-1000.0, 0.0, 3000.0]);
        assert_eq!(w.normalise, None);
        assert_eq!(w.apply(-1000.0), 0.0);
        assert_eq!(w.apply(-50.0), 0.5);
        assert_eq!(w.apply(3000.0), 1.0);
        assert_eq!(w.apply(f32::NAN), 0.0);
        // Unclipped, the image leaves [0, 1] and is renormalised by its range.
        let p = ScribblesParams { clip: false, ..p };
        let w = Window::new(&p, &[-300.0, 700.0]);
        assert_eq!(w.apply(700.0), 2.0);
        assert_eq!(w.normalised(w.apply(700.0)), 1.0);
        assert_eq!(w.normalised(w.apply(200.0)), 0.5);
        assert_eq!(w.apply(f32::INFINITY), f32::MAX);
    }
}
