//! A SEG written here, read by pydicom and highdicom (tools/check_seg.py).
//!
//! Ignored by default: it needs a Python with `pydicom==3.0.2 highdicom numpy`. Run
//! with `MEDLABEL_DICOM_PY=/path/to/python cargo test -p medlabel-dicom -- --ignored`.

use std::collections::BTreeMap;
use std::process::Command;

use medlabel_dicom::synthetic::{SyntheticCt, synthetic_ct_series};
use medlabel_dicom::{SegWriteOptions, Segment, series_to_volume, write_seg};

#[test]
#[ignore = "needs MEDLABEL_DICOM_PY, a Python with pydicom and highdicom"]
fn highdicom_reads_our_seg() {
    let python = std::env::var("MEDLABEL_DICOM_PY").expect("MEDLABEL_DICOM_PY");
    let spec = SyntheticCt {
        orientation: [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
        reversed: true,
        seed: 13,
        ..SyntheticCt::default()
    };
    let files = synthetic_ct_series(&spec);
    let series = series_to_volume(&files).unwrap();
    let plane = spec.dims[0] * spec.dims[1];
    let mask = series.volume.with_data(
        series
            .volume
            .data
            .iter()
            .enumerate()
            .map(|(n, &hu)| match (n / plane, hu) {
                (3..=6, hu) if hu < 0.0 => 1u8,
                (5.., hu) if hu > 2000.0 => 2,
                _ => 0,
            })
            .collect(),
    );
    let segments = [
        Segment {
            value: 1,
            label: "liver".into(),
        },
        Segment {
            value: 2,
            label: "spleen".into(),
        },
    ];
    let written = write_seg(&mask, &series.info, &segments, &SegWriteOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    for (n, file) in files.iter().enumerate() {
        std::fs::write(source.join(format!("{n}.dcm")), file).unwrap();
    }
    let seg_path = dir.path().join("seg.dcm");
    std::fs::write(&seg_path, &written.bytes).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/check_seg.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&seg_path)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(seen["segments"], serde_json::json!(["liver", "spleen"]));
    assert_eq!(
        seen["referenced_series"],
        serde_json::json!([series.info.series_instance_uid])
    );
    assert_eq!(seen["frames"], written.frames);
    // Voxels per (segment, source instance), as highdicom maps frames to instances.
    for (number, value) in [("1", 1u8), ("2", 2u8)] {
        let expected: BTreeMap<String, u64> = series
            .info
            .slices
            .iter()
            .zip(mask.data.chunks(plane))
            .map(|(s, slice)| {
                (
                    s.sop_instance_uid.clone(),
                    slice.iter().filter(|&&v| v == value).count() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let got: BTreeMap<String, u64> = seen["voxels"][number]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(got, expected, "segment {number}");
    }
}
