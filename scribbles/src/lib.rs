//! MONAI Label's "Histogram+GraphCut" scribbles segmentation, in pure Rust.
//!
//! An annotator paints a few foreground and background strokes (on a handful of
//! slices) into a labelmap on the image's grid; [`segment`] turns them into a 3D mask of
//! the object: intensity histograms of the two classes give every voxel a foreground
//! probability, and one minimum cut of a 6-connected graph picks the labelling that
//! balances those probabilities against smooth, edge-following boundaries. It needs no
//! model and no GPU, and answers MONAI Label's scribbles infer requests
//! ([`ScribblesParams`] parses their `params`).
//!
//! # What MONAI Label does
//!
//! `HistogramBasedGraphCut` (`monailabel/scribbles/infer.py`, registered as
//! "Histogram+GraphCut" by the radiology app) runs, with transforms from
//! `monailabel/scribbles/transforms.py` and `utils.py`:
//!
//! 1. `AddBackgroundScribblesFromROId`: with an `roi`, every voxel outside it becomes a
//!    background stroke, and an ROI without foreground strokes gets a 10-voxel
//!    foreground cube at its centre.
//! 2. `Spacingd` to `pix_dim` (2.5 × 2.5 × 5 mm; bilinear image, nearest strokes), then
//!    `ScaleIntensityRanged` (−300..200 HU → 0..1, clipped).
//! 3. `MakeLikelihoodFromScribblesHistogramd`: a histogram per class (`num_bins` bins
//!    over [0, 1], one pseudo-count per bin), looked up per voxel, then a softmax.
//! 4. `MakeISegUnaryd`: stroke voxels get probability `1 − ε` for their class.
//! 5. `ApplyGraphCutOptimisationd`: numpymaxflow's `maxflow3d`, terminal links
//!    `−ln p`, neighbour links `lamda · exp(−ΔI² / 2σ²)` on the windowed image, 6-connected,
//!    not divided by voxel distance (nor does SimpleCRF's `maxflow3d`).
//! 6. `Restored`: the mask is resized (nearest) back to the image's shape.
//!
//! # What this crate does
//!
//! The same pipeline, with these differences, each for a reason:
//!
//! * **Bounded region.** The graph covers only a box of the image: the ROI plus a
//!   ring, one processing voxel thick, of background seeds: background next to
//!   background costs nothing, so this cuts as the whole image would with the outside
//!   as background (outside voxels still feed the background histogram); without an ROI, the strokes' bounding box grown by
//!   [`crop_margin_mm`](ScribblesParams::crop_margin_mm) (50 mm), outside which the
//!   result is background, where MONAI Label would cut the whole image.
//! * **Bounded graph.** The box is resampled to `pix_dim`, with larger voxels (same
//!   proportions) when it would exceed
//!   [`max_graph_voxels`](ScribblesParams::max_graph_voxels) (2²⁰).
//! * **Strokes survive resampling.** Every stroke voxel marks the processing voxel
//!   nearest to it, so a one-voxel line is not lost between the samples of a nearest
//!   resampling; a processing voxel holding strokes of both classes is left free.
//! * **Probabilities.** `f / (f + b)` instead of a softmax of the frequencies (which
//!   keeps every probability near 1/2), and pseudo-counts that give both histograms the
//!   same prior weight, so intensities no stroke has seen stay neutral instead of
//!   going to the class with fewer samples ([`histogram`]).
//! * **Hard strokes.** Strokes are constraints, not `1 − ε` probabilities that a large
//!   `lamda` can overrule ([`graphcut`]), and the returned mask agrees with every stroke
//!   voxel on the image's own grid.
//! * **Explicit errors.** No foreground or no background strokes is an error
//!   ([`ScribblesError`]) instead of a logged warning; the ROI's pairs are put in order
//!   and clipped to the image instead of wrapping around like Python slices.
//!
//! The min cut is this crate's own Boykov–Kolmogorov solver ([`maxflow`]): no Rust
//! crate implementing it for grids was found, and general max-flow crates (Edmonds–Karp
//! and the like) are orders of magnitude too slow for a million nodes. It is exact and
//! is tested against brute force on thousands of random graphs.
//!
//! # Parameters
//!
//! See [`ScribblesParams`] for every field, its default, and where in MONAI Label it
//! comes from. The ones that shape the result: `lamda` (smoothness weight, 1.0), `sigma`
//! (intensity difference that counts as an edge, 0.1 in windowed units, i.e. 50 HU),
//! `num_bins` (64), the window `a_min..a_max` (−300..200 HU) and `pix_dim`.
//!
//! # Time and memory
//!
//! Graph cut time depends on the content, so it is bounded through the graph size:
//! at most `max_graph_voxels` nodes, about 60 bytes each (graph, solver, intensities,
//! probabilities and seeds: ~60 MiB at the default 2²⁰). Beyond that, `segment` reads
//! the image and strokes once, copies the box out of the image (4 bytes per voxel) and
//! writes the `u8` mask. Criterion medians on a 256 × 256 × 128 CT-like volume
//! (0.8 × 0.8 × 2.5 mm) with strokes on three slices, one core of the 2-vCPU development
//! machine, release profile (`cargo bench -p medlabel-scribbles --bench segment`); two
//! runs under load from other builds (load average 2.4–7):
//!
//! | case | graph nodes | median |
//! |---|---|---|
//! | defaults (2.5 × 2.5 × 5 mm), no ROI | 0.13 M | 33–63 ms |
//! | defaults, ROI around the organ | 0.03 M | 35–53 ms |
//! | image's own grid, ROI | 0.43 M | 0.28–0.33 s |
//! | image's own grid, no ROI (coarsened to 2²⁰) | 1.0 M | 0.23–0.30 s |
//! | image's own grid, whole image (budget raised) | 8.4 M | 2.5–3.1 s |
//!
//! Noise far above the contrast (σ 300 HU), the hard case for augmenting paths, costs
//! about five times as much per node: 1.4 s for the 2²⁰ nodes of the default budget.

pub mod graphcut;
pub mod histogram;
pub mod maxflow;
mod params;
mod segment;

use medlabel_imaging::ImageError;

pub use params::{LabelInfo, ScribblesParams};
pub use segment::segment;

/// Why [`segment`] refused. Messages name the offending input, for an HTTP 4xx body.
#[derive(Debug, thiserror::Error)]
pub enum ScribblesError {
    /// A parameter is outside its domain.
    #[error("invalid parameter {name} = {value}: expected {expected}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The scribbles' dims differ from the image's, or their affines differ beyond
    /// [`medlabel_imaging::GRID_TOLERANCE`].
    #[error("the scribbles are not on the image's voxel grid: {0}")]
    GridMismatch(ImageError),
    /// The ROI, clipped to the image, selects no voxel.
    #[error(
        "roi {roi:?} selects no voxel of the image (dims {dims:?}): each pair \
         [start, end) must overlap 0..dim on its axis"
    )]
    EmptyRoi { roi: [i64; 6], dims: [usize; 3] },
    /// No voxel carries the foreground scribbles label (and no ROI was given).
    #[error("no foreground scribbles: no voxel has the foreground scribbles label {label}")]
    NoForeground { label: u32 },
    /// No voxel carries the background scribbles label and no ROI leaves voxels outside.
    #[error(
        "no background scribbles: no voxel has the background scribbles label {label} \
         and no roi leaves part of the image outside"
    )]
    NoBackground { label: u32 },
    /// A volume is malformed (data not matching dims, a degenerate affine).
    #[error(transparent)]
    Image(#[from] ImageError),
}
