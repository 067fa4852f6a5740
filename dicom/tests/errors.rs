//! Hostile and broken input: every failure is a clear error naming the instance, found
//! before voxel memory is allocated.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, from_reader};
use medlabel_dicom::synthetic::{SyntheticCt, SyntheticEncoding, synthetic_ct_series};
use medlabel_dicom::{DicomError, series_to_volume, series_to_volume_with_limits};
use medlabel_imaging::ReadLimits;

fn series() -> Vec<Vec<u8>> {
    synthetic_ct_series(&SyntheticCt::default())
}

/// Parses a file, lets `change` edit its data set, writes it back.
fn edit(file: &[u8], change: impl FnOnce(&mut InMemDicomObject)) -> Vec<u8> {
    let mut obj = from_reader(file).unwrap();
    change(&mut obj);
    let mut out = Vec::new();
    obj.write_all(&mut out).unwrap();
    out
}

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: PrimitiveValue) {
    obj.put(DataElement::new(tag, vr, value));
}

fn sop_uid(file: &[u8]) -> String {
    let obj = from_reader(file).unwrap();
    obj.element(tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn garbage_and_empty_input() {
    let err = series_to_volume(&[b"this is not a DICOM file at all".to_vec()]).unwrap_err();
    assert!(matches!(err, DicomError::NotDicom { .. }), "{err}");
    assert!(err.to_string().starts_with("instance 0"), "{err}");
    let mut garbage = vec![0u8; 128];
    garbage.extend_from_slice(b"DICM");
    garbage.extend_from_slice(&[0xFF; 64]);
    assert!(matches!(
        series_to_volume(&[garbage]),
        Err(DicomError::Malformed { .. })
    ));
    assert!(matches!(
        series_to_volume::<Vec<u8>>(&[]),
        Err(DicomError::EmptySeries)
    ));
    // Truncated anywhere: a clear error, never a panic.
    let file = &series()[0];
    for cut in [10, 132, 200, 400, file.len() - 1] {
        assert!(series_to_volume(&[&file[..cut]]).is_err(), "cut at {cut}");
    }
}

#[test]
fn missing_and_short_pixel_data_name_the_instance() {
    let mut files = series();
    let uid = sop_uid(&files[3]);
    files[3] = edit(&files[3], |o| {
        o.remove_element(tags::PIXEL_DATA);
    });
    let err = series_to_volume(&files).unwrap_err();
    assert!(matches!(err, DicomError::MissingPixelData { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("instance 3 ({uid})")),
        "{err}"
    );

    let mut files = series();
    files[5] = edit(&files[5], |o| {
        put(
            o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(vec![0u16; 100].into()),
        )
    });
    let err = series_to_volume(&files).unwrap_err();
    assert!(
        matches!(
            err,
            DicomError::PixelDataTooShort {
                expected: 1536,
                found: 200,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gaps_duplicates_and_mixed_series() {
    let mut files = series();
    files.remove(4);
    assert!(matches!(
        series_to_volume(&files),
        Err(DicomError::InconsistentSpacing { .. })
    ));

    let mut files = series();
    files.push(edit(&files[2], |o| {
        put(o, tags::SOP_INSTANCE_UID, VR::UI, "2.25.1".into())
    }));
    let err = series_to_volume(&files).unwrap_err();
    assert!(matches!(err, DicomError::DuplicatePosition { .. }), "{err}");
    assert!(err.to_string().contains("2.25.1"), "{err}");

    let mut files = series();
    files[6] = edit(&files[6], |o| {
        put(
            o,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            PrimitiveValue::from("1\\0\\0\\0\\0.8\\0.6"),
        )
    });
    let err = series_to_volume(&files).unwrap_err();
    assert!(
        err.to_string()
            .contains("a series must have one orientation"),
        "{err}"
    );

    // Same seed, hence same SeriesInstanceUID, but half the columns.
    let mut files = series();
    files[1] = synthetic_ct_series(&SyntheticCt {
        dims: [16, 24, 10],
        ..SyntheticCt::default()
    })[1]
        .clone();
    let err = series_to_volume(&files).unwrap_err();
    assert!(
        err.to_string().contains("24×16 pixels differ from 24×32"),
        "{err}"
    );

    let mut files = series();
    files.push(
        synthetic_ct_series(&SyntheticCt {
            seed: 1,
            ..SyntheticCt::default()
        })[0]
            .clone(),
    );
    let err = series_to_volume(&files).unwrap_err();
    assert!(err.to_string().contains("SeriesInstanceUID"), "{err}");
}

#[test]
fn unsupported_pixel_formats() {
    type Edit = fn(&mut InMemDicomObject);
    let cases: [(&str, Edit); 3] = [
        ("SamplesPerPixel 3", |o| {
            put(o, tags::SAMPLES_PER_PIXEL, VR::US, 3u16.into())
        }),
        ("BitsAllocated 12", |o| {
            put(o, tags::BITS_ALLOCATED, VR::US, 12u16.into())
        }),
        ("PhotometricInterpretation RGB", |o| {
            put(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB".into())
        }),
    ];
    for (message, change) in cases {
        let mut files = series();
        files[0] = edit(&files[0], change);
        let err = series_to_volume(&files).unwrap_err();
        assert!(matches!(err, DicomError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains(message), "{err}");
    }
}

/// MONOCHROME1 only says how to display values; the values (HU after rescale) are
/// what the model needs, so they are not inverted.
#[test]
fn monochrome1_is_not_inverted() {
    let files: Vec<_> = series()
        .iter()
        .map(|f| {
            edit(f, |o| {
                put(
                    o,
                    tags::PHOTOMETRIC_INTERPRETATION,
                    VR::CS,
                    "MONOCHROME1".into(),
                )
            })
        })
        .collect();
    assert_eq!(
        series_to_volume(&files).unwrap().volume,
        SyntheticCt::default().volume()
    );
}

#[test]
fn bombs_are_refused_before_allocating() {
    // A header claiming 60000 × 60000 pixels with a few KiB of pixel data.
    let mut files = series();
    files[0] = edit(&files[0], |o| {
        put(o, tags::ROWS, VR::US, 60000u16.into());
        put(o, tags::COLUMNS, VR::US, 60000u16.into());
    });
    assert!(matches!(
        series_to_volume(&files[..1]),
        Err(DicomError::PixelDataTooShort {
            expected: 7_200_000_000,
            ..
        })
    ));
    // Real data over the voxel limit.
    let tight = ReadLimits {
        max_voxel_bytes: 10_000,
    };
    let err = series_to_volume_with_limits(&series(), &tight).unwrap_err();
    assert!(
        matches!(
            err,
            DicomError::TooLarge {
                needed: 30720,
                limit: 10_000
            }
        ),
        "{err}"
    );
    // An element claiming 4 GiB in a 400-byte file.
    let mut file = series()[0].clone();
    let at = file
        .windows(4)
        .position(|w| w == [0x10, 0x00, 0x10, 0x00])
        .unwrap(); // PatientName
    file[at + 6..at + 8].copy_from_slice(&[0xFF, 0xFF]);
    let err = series_to_volume(&[file]).unwrap_err();
    assert!(err.to_string().contains("declares 65535 bytes"), "{err}");
    let mut file = series()[0].clone();
    let at = file
        .windows(4)
        .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap(); // PixelData
    file[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let err = series_to_volume(&[file]).unwrap_err();
    assert!(
        err.to_string().contains("declares 4294967280 bytes"),
        "{err}"
    );
    // A deflated data set inflating past the limit stops at the limit.
    let deflated = synthetic_ct_series(&SyntheticCt {
        encoding: SyntheticEncoding::DeflatedExplicitVrLittleEndian,
        ..SyntheticCt::default()
    });
    let tiny = ReadLimits {
        max_voxel_bytes: 1000,
    };
    let err = series_to_volume_with_limits(&deflated, &tiny).unwrap_err();
    assert!(
        matches!(
            err,
            DicomError::TooLarge {
                needed: 1001,
                limit: 1000
            }
        ),
        "{err}"
    );
}

#[test]
fn multiframe_needs_positions_per_frame() {
    let mut files = series();
    files[0] = edit(&files[0], |o| {
        put(o, tags::NUMBER_OF_FRAMES, VR::IS, "2".into())
    });
    let err = series_to_volume(&files[..1]).unwrap_err();
    assert!(
        err.to_string()
            .contains("without per-frame functional groups"),
        "{err}"
    );
}

/// Corrupted bytes anywhere (a flaky transfer, a hostile upload) give an error or a
/// volume, never a panic or a large allocation. Every call here handles a 2 KiB file
/// in microseconds; one that takes a quarter of a second has zero-filled a buffer of
/// gigabytes that a corrupted length asked for (as an unknown VR once made dicom-rs do).
#[test]
fn corrupted_files_never_panic_or_allocate_from_bad_lengths() {
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut slowest = Duration::ZERO;
    for encoding in [
        SyntheticEncoding::ExplicitVrLittleEndian,
        SyntheticEncoding::ImplicitVrLittleEndian,
    ] {
        let spec = SyntheticCt {
            dims: [8, 6, 3],
            encoding,
            ..SyntheticCt::default()
        };
        let files = synthetic_ct_series(&spec);
        let series = series_to_volume(&files).unwrap();
        let seg = medlabel_dicom::write_seg(
            &series.volume.with_data(vec![1u8; series.volume.len()]),
            &series.info,
            &[medlabel_dicom::Segment {
                value: 1,
                label: "all".into(),
            }],
            &medlabel_dicom::SegWriteOptions::default(),
        )
        .unwrap()
        .bytes;
        for _ in 0..500 {
            let mut file = files[0].clone();
            let mut seg = seg.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(128..file.len());
                file[at] = rng.random();
                let at = rng.random_range(128..seg.len());
                seg[at] = rng.random();
            }
            let start = Instant::now();
            let _ = series_to_volume(&[file, files[1].clone(), files[2].clone()]);
            let _ = medlabel_dicom::read_seg(&seg, &series.info, &Default::default());
            slowest = slowest.max(start.elapsed());
        }
    }
    assert!(
        slowest < Duration::from_millis(250),
        "slowest call took {slowest:?}"
    );
}
