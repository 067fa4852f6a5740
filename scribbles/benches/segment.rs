//! `segment` on a 256 × 256 × 128 CT-like volume (0.8 × 0.8 × 2.5 mm, the phantom of the
//! tests): MONAI Label's defaults with and without an ROI, the graph cut on the image's
//! own grid, the whole 8.4 M-voxel grid as one graph, and a volume of pure noise.
//!
//! `cargo bench -p medlabel-scribbles --bench segment`

#[path = "../tests/phantom/mod.rs"]
mod phantom;

use criterion::{Criterion, criterion_group, criterion_main};
use medlabel_scribbles::{ScribblesParams, segment};

fn bench(c: &mut Criterion) {
    let p = phantom::phantom([256, 256, 128], [0.8, 0.8, 2.5], 15.0, 1);
    let defaults = ScribblesParams::default();
    let native = ScribblesParams {
        pix_dim: None,
        ..defaults.clone()
    };
    let cases = [
        ("pix_dim 2.5x2.5x5, strokes crop", defaults.clone()),
        (
            "pix_dim 2.5x2.5x5, roi",
            ScribblesParams {
                roi: Some(p.roi),
                ..defaults.clone()
            },
        ),
        (
            "native grid, roi",
            ScribblesParams {
                roi: Some(p.roi),
                ..native.clone()
            },
        ),
        ("native grid, strokes crop", native.clone()),
        (
            "native grid, whole image",
            ScribblesParams {
                crop_margin_mm: 1e4,
                max_graph_voxels: 1 << 24,
                ..native
            },
        ),
    ];
    let mut group = c.benchmark_group("segment 256x256x128");
    group.sample_size(10);
    for (name, params) in &cases {
        let mask = segment(&p.image, &p.scribbles, params).unwrap();
        eprintln!("{name}: dice {:.3}", phantom::dice(&mask.data, &p.truth));
        group.bench_function(*name, |b| {
            b.iter(|| segment(&p.image, &p.scribbles, params).unwrap())
        });
    }
    // Noise far above the contrast (σ 300 HU): nothing but noise for the cut to
    // follow, the hard case for augmenting paths.
    let noisy = phantom::phantom([256, 256, 128], [0.8, 0.8, 2.5], 300.0, 1);
    let params = ScribblesParams {
        pix_dim: None,
        ..ScribblesParams::default()
    };
    group.bench_function("native grid, strokes crop, noise 300 HU", |b| {
        b.iter(|| segment(&noisy.image, &noisy.scribbles, &params).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
