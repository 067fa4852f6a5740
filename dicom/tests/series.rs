//! series_to_volume against the synthetic generator: exact voxels, affine within 1e-6.

use medlabel_dicom::synthetic::{
    SyntheticCt, SyntheticEncoding, synthetic_ct_multiframe, synthetic_ct_series,
};
use medlabel_dicom::{Series, series_to_volume};
use medlabel_imaging::affine::max_abs_diff;

/// Row and column directions rotated 30° about z then 20° about x: a double-oblique
/// orientation whose normal has all three components.
fn oblique() -> [f64; 6] {
    let (s1, c1) = 30f64.to_radians().sin_cos();
    let (s2, c2) = 20f64.to_radians().sin_cos();
    let row = [c1, s1, 0.0];
    let col = [-s1 * c2, c1 * c2, s2];
    [row[0], row[1], row[2], col[0], col[1], col[2]]
}

fn assert_matches(series: &Series, spec: &SyntheticCt) {
    let expected = spec.volume();
    assert_eq!(series.volume.dims, expected.dims);
    let diff = max_abs_diff(&series.volume.affine, &expected.affine);
    assert!(
        diff < 1e-6,
        "affine off by {diff}: {:?} vs {:?}",
        series.volume.affine,
        expected.affine
    );
    assert!(series.volume.data == expected.data, "voxels differ");
    assert_eq!(series.info.grid, series.volume.grid());
}

#[test]
fn axial_series_in_any_order() {
    let spec = SyntheticCt::default();
    let mut files = synthetic_ct_series(&spec);
    files.rotate_left(3);
    files.swap(0, 5);
    let series = series_to_volume(&files).unwrap();
    assert_matches(&series, &spec);
    let uids = spec.uids();
    let info = &series.info;
    assert_eq!(info.series_instance_uid, uids.series);
    assert_eq!(info.study_instance_uid, uids.study);
    assert_eq!(info.frame_of_reference_uid, uids.frame_of_reference);
    assert_eq!((info.rows, info.columns), (24, 32));
    assert_eq!(info.modality, "CT");
    assert_eq!(info.patient_id, "SYNTH-0");
    assert_eq!(info.study_date, "20240101");
    let sops: Vec<_> = info
        .slices
        .iter()
        .map(|s| s.sop_instance_uid.clone())
        .collect();
    assert_eq!(sops, uids.instances);
    assert!(info.slices.iter().all(|s| s.frame_number.is_none()));
}

#[test]
fn reversed_oblique_series() {
    let spec = SyntheticCt {
        orientation: oblique(),
        origin: [12.5, -40.25, 77.0],
        reversed: true,
        seed: 7,
        ..SyntheticCt::default()
    };
    assert_matches(
        &series_to_volume(&synthetic_ct_series(&spec)).unwrap(),
        &spec,
    );
}

#[test]
fn sagittal_and_coronal_series() {
    // k runs along row × column: towards the Right (+x in RAS) for this sagittal
    // orientation, Posterior (−y in RAS) for this coronal one; 2.5 mm apart.
    for (orientation, k_axis_ras) in [
        ([0.0, 1.0, 0.0, 0.0, 0.0, -1.0], [2.5, 0.0, 0.0]),
        ([1.0, 0.0, 0.0, 0.0, 0.0, -1.0], [0.0, -2.5, 0.0]),
    ] {
        let spec = SyntheticCt {
            orientation,
            seed: 3,
            ..SyntheticCt::default()
        };
        let series = series_to_volume(&synthetic_ct_series(&spec)).unwrap();
        assert_matches(&series, &spec);
        let a = series.volume.affine;
        assert_eq!([a[0][2], a[1][2], a[2][2]], k_axis_ras);
    }
}

#[test]
fn implicit_and_deflated_transfer_syntaxes() {
    for encoding in [
        SyntheticEncoding::ImplicitVrLittleEndian,
        SyntheticEncoding::DeflatedExplicitVrLittleEndian,
    ] {
        let spec = SyntheticCt {
            encoding,
            seed: 11,
            ..SyntheticCt::default()
        };
        assert_matches(
            &series_to_volume(&synthetic_ct_series(&spec)).unwrap(),
            &spec,
        );
    }
}

#[test]
fn multiframe_with_shared_and_per_frame_groups() {
    for (per_frame_orientation, reversed) in [(false, false), (true, true)] {
        let spec = SyntheticCt {
            orientation: oblique(),
            reversed,
            seed: 5,
            ..SyntheticCt::default()
        };
        let file = synthetic_ct_multiframe(&spec, per_frame_orientation);
        let series = series_to_volume(&[file]).unwrap();
        assert_matches(&series, &spec);
        let frames: Vec<_> = series
            .info
            .slices
            .iter()
            .map(|s| s.frame_number.unwrap())
            .collect();
        let n = spec.dims[2] as u32;
        let expected: Vec<u32> = if reversed {
            (1..=n).rev().collect()
        } else {
            (1..=n).collect()
        };
        assert_eq!(frames, expected);
        assert!(
            series
                .info
                .slices
                .iter()
                .all(|s| s.sop_instance_uid == spec.uids().instances[0])
        );
    }
}

#[test]
fn single_slice_uses_slice_thickness() {
    let spec = SyntheticCt {
        dims: [8, 6, 1],
        ..SyntheticCt::default()
    };
    assert_matches(
        &series_to_volume(&synthetic_ct_series(&spec)).unwrap(),
        &spec,
    );
}
