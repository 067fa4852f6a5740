//! Binary segmentation of a 3D grid by one minimum cut.
//!
//! The labelling `x` (1 = foreground) minimises
//!
//! ```text
//! E(x) = Σ_v U_v(x_v) + Σ_{u~v} w_uv · [x_u ≠ x_v]
//! U_v(1) = −ln max(p_v, ε)      U_v(0) = −ln max(1 − p_v, ε)
//! w_uv   = λ · exp(−(I_u − I_v)² / (2σ²))
//! ```
//!
//! over the 6-neighbourhood, with `p_v` the foreground probability of voxel `v`, `I` the
//! windowed intensity and ε = `f32::EPSILON`: the energy numpymaxflow's `maxflow3d`
//! minimises for MONAI Label (source link `−ln p_bg`, sink link `−ln p_fg`, source side
//! = foreground). Like numpymaxflow and SimpleCRF, `w_uv` is not divided by the distance
//! between voxel centres: MONAI Label resamples to its `pix_dim` first, and so does
//! [`segment`](crate::segment).
//!
//! Seeds are hard constraints. MONAI Label sets their probability to `1 − ε`/`ε`, which
//! costs at most `−ln ε ≈ 16` and lets a scribble flip once `λ` exceeds about 2.7; here a
//! seed's link to its own terminal is `7λ + 1`, more than its 6 neighbour links can
//! ever save, so every minimum cut keeps it.

use crate::maxflow::GridGraph;

/// What a scribble says about a voxel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seed {
    #[default]
    None,
    Background,
    Foreground,
}

/// The pairwise term's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothness {
    /// λ ≥ 0: weight of a link between identical intensities.
    pub lamda: f32,
    /// σ > 0, in intensity units.
    pub sigma: f32,
}

/// The minimum-energy labelling of a `dims` grid (voxel order of
/// [`medlabel_imaging::Volume`]): `true` for foreground. Ties go to background.
///
/// Panics when a slice's length is not the voxel count.
pub fn graph_cut(
    dims: [usize; 3],
    intensity: &[f32],
    foreground_probability: &[f32],
    seeds: &[Seed],
    smoothness: Smoothness,
) -> Vec<bool> {
    let n = dims.iter().product::<usize>();
    assert!(
        intensity.len() == n && foreground_probability.len() == n && seeds.len() == n,
        "graph_cut: {n} voxels but {} intensities, {} probabilities, {} seeds",
        intensity.len(),
        foreground_probability.len(),
        seeds.len()
    );
    let Smoothness { lamda, sigma } = smoothness;
    let hard = 7.0 * lamda + 1.0;
    let inv_two_sigma2 = 1.0 / (2.0 * sigma * sigma);
    let link = |a: f32, b: f32| {
        let d = a - b;
        lamda * (-(d * d) * inv_two_sigma2).exp()
    };
    let mut g = GridGraph::<f32>::new(dims);
    let [nx, ny, nz] = dims;
    let strides = [1, nx, nx * ny];
    let mut v = 0;
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let (source, sink) = match seeds[v] {
                    Seed::Foreground => (hard, 0.0),
                    Seed::Background => (0.0, hard),
                    Seed::None => {
                        let p = foreground_probability[v];
                        (-(1.0 - p).max(f32::EPSILON).ln(), -p.max(f32::EPSILON).ln())
                    }
                };
                g.add_terminal_weights(v, source, sink);
                for (axis, has_next) in [i + 1 < nx, j + 1 < ny, k + 1 < nz].into_iter().enumerate()
                {
                    if has_next {
                        let w = link(intensity[v], intensity[v + strides[axis]]);
                        g.set_edge(v, axis, w, w);
                    }
                }
                v += 1;
            }
        }
    }
    g.max_flow().source_side
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maxflow::Graph;

    const SMOOTH: Smoothness = Smoothness {
        lamda: 1.0,
        sigma: 0.1,
    };

    /// Energy of a labelling, straight from the formula in the module docs (seeds as
    /// constraints, so only seed-respecting labellings are compared).
    fn energy(dims: [usize; 3], intensity: &[f32], p: &[f32], s: Smoothness, x: &[bool]) -> f64 {
        let [nx, ny, _] = dims;
        let mut e = 0.0f64;
        for v in 0..x.len() {
            let q = if x[v] { p[v] } else { 1.0 - p[v] };
            e -= f64::from(q.max(f32::EPSILON).ln());
            let (i, j) = (v % nx, v / nx % ny);
            for (next, ok) in [
                (v + 1, i + 1 < nx),
                (v + nx, j + 1 < ny),
                (v + nx * ny, true),
            ] {
                if ok && next < x.len() && x[v] != x[next] {
                    let d = f64::from(intensity[v] - intensity[next]);
                    e += f64::from(s.lamda) * (-(d * d) / (2.0 * f64::from(s.sigma).powi(2))).exp();
                }
            }
        }
        e
    }

    #[test]
    fn labelling_minimises_the_energy_on_small_grids() {
        // 2×2×3 = 12 voxels: all 4096 labellings are enumerated. The probabilities and
        // intensities follow a fixed pseudo-random sequence.
        let dims = [2, 2, 3];
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        for _ in 0..50 {
            let intensity: Vec<f32> = (0..12).map(|_| next() * 0.4).collect();
            let p: Vec<f32> = (0..12).map(|_| next()).collect();
            let seeds = vec![Seed::None; 12];
            let x = graph_cut(dims, &intensity, &p, &seeds, SMOOTH);
            let best = (0u32..1 << 12)
                .map(|m| {
                    let y: Vec<bool> = (0..12).map(|v| m >> v & 1 == 1).collect();
                    energy(dims, &intensity, &p, SMOOTH, &y)
                })
                .fold(f64::INFINITY, f64::min);
            let got = energy(dims, &intensity, &p, SMOOTH, &x);
            assert!(got - best < 1e-4, "{got} vs optimum {best}");
        }
    }

    #[test]
    fn seeds_hold_against_any_smoothness() {
        // A foreground seed in a sea of confident background, with λ large enough that
        // MONAI Label's 1 − ε seed would be absorbed.
        let dims = [5, 5, 5];
        let n = 125;
        let intensity = vec![0.5; n];
        let p = vec![0.01; n];
        let mut seeds = vec![Seed::None; n];
        seeds[62] = Seed::Foreground;
        seeds[0] = Seed::Background;
        let s = Smoothness {
            lamda: 50.0,
            sigma: 0.1,
        };
        let x = graph_cut(dims, &intensity, &p, &seeds, s);
        assert!(x[62], "the foreground seed was overruled");
        assert_eq!(x.iter().filter(|&&f| f).count(), 1);
        // And the mirror image: a background seed inside confident foreground.
        let p = vec![0.99; n];
        seeds[62] = Seed::Background;
        seeds[0] = Seed::Foreground;
        let x = graph_cut(dims, &intensity, &p, &seeds, s);
        assert!(!x[62] && x[0]);
        assert_eq!(x.iter().filter(|&&f| !f).count(), 1);
    }

    #[test]
    fn edges_follow_intensity_boundaries() {
        // Two flat halves along i (intensities 0.2 | 0.8), uninformative probabilities,
        // one seed in each half: the cut falls exactly on the intensity step.
        let dims = [8, 3, 3];
        let n = 72;
        let intensity: Vec<f32> = (0..n).map(|v| if v % 8 < 5 { 0.2 } else { 0.8 }).collect();
        let p = vec![0.5; n];
        let mut seeds = vec![Seed::None; n];
        seeds[0] = Seed::Foreground;
        seeds[n - 1] = Seed::Background;
        let x = graph_cut(dims, &intensity, &p, &seeds, SMOOTH);
        assert!((0..n).all(|v| x[v] == (v % 8 < 5)), "{x:?}");
    }

    #[test]
    fn matches_a_general_graph_built_by_hand() {
        // The same energy on a 4×3×2 grid built edge by edge on the general graph.
        let dims = [4, 3, 2];
        let n = 24;
        let intensity: Vec<f32> = (0..n).map(|v| ((v * 7) % 5) as f32 * 0.05).collect();
        let p: Vec<f32> = (0..n).map(|v| ((v * 3) % 7) as f32 / 7.0 + 0.05).collect();
        let seeds = vec![Seed::None; n];
        let x = graph_cut(dims, &intensity, &p, &seeds, SMOOTH);
        let mut g = Graph::<f64>::new(n);
        for v in 0..n {
            let src = -f64::from((1.0 - p[v]).max(f32::EPSILON)).ln();
            let snk = -f64::from(p[v].max(f32::EPSILON)).ln();
            g.add_terminal_weights(v, src, snk);
            for (next, ok) in [(v + 1, v % 4 < 3), (v + 4, v / 4 % 3 < 2), (v + 12, v < 12)] {
                if ok {
                    let d = f64::from(intensity[v] - intensity[next]);
                    let w = (-(d * d) / 0.02).exp();
                    g.add_edge(v, next, w, w);
                }
            }
        }
        assert_eq!(x, g.max_flow().source_side);
    }
}
