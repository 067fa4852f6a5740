//! Datastore operations on the embedded backend (SQLite + folder, small blobs inline in
//! the database, as the local server opens it) at 1,000, 10,000 and 100,000 images:
//! add_image and save_label (each a durable append plus a blob), the reads that must
//! cost what their answer costs (status, get_unlabeled_images), and active learning's
//! next-sample (a pick plus a durable two-event append per call).
//!
//! `cargo bench -p medlabel-events --no-default-features --bench datastore`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use medlabel_events::blob::fs::FolderBlobStore;
use medlabel_events::datastore::{Datastore, Strategy, WriteContext};
use medlabel_events::event::{Actor, Event, NewEvent, StreamId};
use medlabel_events::id::{Extension, ImageId, Tag};
use medlabel_events::store::sqlite::SqliteEventStore;
use medlabel_events::store::{EventStore, ExpectedVersion};
use medlabel_events::{BlobStore, Info};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// A datastore with `n` images, a tenth of them with a final label. The log is
/// written straight through the store (one append per image, as the service would),
/// sharing one image blob and one label blob: content addressing makes that realistic.
fn populate(rt: &tokio::runtime::Runtime, dir: &std::path::Path, n: usize) -> Datastore {
    rt.block_on(async {
        let events = SqliteEventStore::open(dir.join("events.db")).expect("open store");
        let blobs = Arc::new(
            FolderBlobStore::open_with_inline(dir.join("blobs"), &events).expect("open blobs"),
        );
        let store: Arc<dyn EventStore> = Arc::new(events);
        let ext = Extension::parse(".nii.gz").unwrap();
        let image_blob = blobs.put_bytes(vec![7; 4096], &ext).await.unwrap();
        let label_blob = blobs.put_bytes(vec![1; 1024], &ext).await.unwrap();
        for i in 0..n {
            let image = ImageId::parse(format!("img_{i:06}")).unwrap();
            let mut events = vec![Event::ImageAdded {
                image: image.clone(),
                ext: ext.clone(),
                blob: image_blob.clone(),
                info: Info::new(),
            }];
            if i % 10 == 0 {
                events.push(Event::LabelSaved {
                    image: image.clone(),
                    tag: Tag::final_tag(),
                    version: 1,
                    ext: ext.clone(),
                    blob: label_blob.clone(),
                    info: Info::new(),
                });
            }
            let events = events
                .into_iter()
                .map(|event| NewEvent {
                    event,
                    actor: Actor::admin(),
                    timestamp_ms: 1_700_000_000_000,
                })
                .collect();
            store
                .append(
                    &StreamId::image(&image),
                    ExpectedVersion::NoStream,
                    events,
                    &format!("seed-{i}"),
                )
                .await
                .unwrap();
        }
        Datastore::open(store, blobs).await.unwrap()
    })
}

fn datastore(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ext = Extension::parse(".nii.gz").unwrap();
    let mut group = c.benchmark_group("datastore");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let ds = populate(&rt, dir.path(), n);
        let upload = dir.path().join("upload.nii.gz");
        let mut counter = 0u64;

        group.bench_with_input(BenchmarkId::new("add_image", n), &n, |b, _| {
            b.iter(|| {
                counter += 1;
                // Distinct content per call: every iteration stores a new blob too.
                std::fs::write(&upload, format!("new image {counter}")).unwrap();
                let image = ImageId::parse(format!("new_{counter}")).unwrap();
                rt.block_on(ds.add_image(
                    &WriteContext::fresh(Actor::admin()),
                    &image,
                    &upload,
                    &ext,
                    Info::new(),
                ))
                .unwrap();
            })
        });
        group.bench_with_input(BenchmarkId::new("save_label", n), &n, |b, _| {
            b.iter(|| {
                counter += 1;
                std::fs::write(&upload, format!("new label {counter}")).unwrap();
                let image = ImageId::parse(format!("img_{:06}", counter as usize % n)).unwrap();
                rt.block_on(ds.save_label(
                    &WriteContext::fresh(Actor::admin()),
                    &image,
                    &Tag::original(),
                    &upload,
                    &ext,
                    Info::new(),
                ))
                .unwrap();
            })
        });
        // A new annotator each call, so every call is a real pick and records a lease;
        // leases of zero length keep the pool from running dry over many iterations.
        let draws = std::sync::atomic::AtomicUsize::new(0);
        let random = |n: usize| {
            let k = draws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            k.wrapping_mul(2_654_435_761) % n
        };
        let hand_out = |client: &str| {
            rt.block_on(ds.next_sample(
                &WriteContext::fresh(Actor::admin()),
                Strategy::Random,
                "random",
                client,
                Duration::ZERO,
                &random,
            ))
            .unwrap()
            .expect("unlabeled images are left");
        };
        group.bench_with_input(BenchmarkId::new("next_sample_random", n), &n, |b, _| {
            b.iter(|| {
                counter += 1;
                let client = format!("annotator-{counter}");
                hand_out(&client);
            })
        });
        // Criterion reports means of batches; the target is a tail latency, so also time
        // single calls and print their distribution.
        let mut latencies: Vec<Duration> = (0..2000)
            .map(|i| {
                let client = format!("tail-{n}-{i}");
                let started = std::time::Instant::now();
                hand_out(&client);
                started.elapsed()
            })
            .collect();
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "next_sample_random/{n} single calls: p50 {:?} p99 {:?} max {:?}",
            at(0.50),
            at(0.99),
            latencies.last().unwrap()
        );
        group.bench_with_input(BenchmarkId::new("status", n), &n, |b, _| {
            b.iter(|| rt.block_on(ds.status()).unwrap())
        });
        // The final-labelled images: 10% of the datastore, so the answer grows with n.
        group.bench_with_input(BenchmarkId::new("get_labeled_images", n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(ds.get_labeled_images(&Tag::final_tag(), &[]))
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("get_unlabeled_images", n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(ds.get_unlabeled_images(&Tag::final_tag(), &[]))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, datastore);
criterion_main!(benches);
