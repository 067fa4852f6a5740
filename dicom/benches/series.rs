//! Converting a 512 × 512 × 300 CT series (300 single-frame uncompressed instances,
//! ~157 MB) to a volume, and writing a SEG of it.
//!
//! ```text
//! cargo bench -p medlabel-dicom --bench series
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_series};
use medlabel_dicom::{SegWriteOptions, Segment, series_to_volume, write_seg};

fn bench(c: &mut Criterion) {
    let spec = SyntheticCt {
        dims: [512, 512, 300],
        spacing: [0.7, 0.7, 1.0],
        ..SyntheticCt::default()
    };
    let files = synthetic_ct_series(&spec);
    let mut group = c.benchmark_group("ct_512x512x300");
    group.sample_size(10);
    group.bench_function("series_to_volume", |b| {
        b.iter(|| series_to_volume(&files).unwrap())
    });
    let series = series_to_volume(&files).unwrap();
    // A "liver" label on a third of the slices.
    let mask = series.volume.with_data(
        series
            .volume
            .data
            .iter()
            .enumerate()
            .map(|(n, &hu)| u8::from((100..200).contains(&(n / (512 * 512))) && hu > 1000.0))
            .collect(),
    );
    let segments = [Segment {
        value: 1,
        label: "liver".into(),
    }];
    group.bench_function("write_seg", |b| {
        b.iter(|| write_seg(&mask, &series.info, &segments, &SegWriteOptions::default()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
