//! End-to-end geometry: transforms chained the way training and inference use them,
//! and their inverses restoring the original grid.

use medlabel_imaging::affine::max_abs_diff;
use medlabel_imaging::synthetic::{SPLEEN, SyntheticConfig, generate_case, write_dataset};
use medlabel_imaging::transforms::{
    Interpolation, crop, dice, orient_to_ras, pad_to_min_size, resample_to_grid,
    resample_to_spacing, sum_and_slices,
};
use medlabel_imaging::{Affine, DataType, Volume, check_same_grid, io, nifti};

/// An LPS, axis-permuted, anisotropic grid like a scanner export.
fn scanner_affine() -> Affine {
    [
        [0.0, -0.78, 0.0, 180.0],
        [-0.78, 0.0, 0.0, 170.0],
        [0.0, 0.0, 2.5, -310.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn synthetic_on_scanner_grid() -> (Volume<f32>, Volume<f32>) {
    let cfg = SyntheticConfig {
        dims: [40, 36, 24],
        ..SyntheticConfig::default()
    };
    let (mut img, mut lab) = generate_case(11, &cfg).unwrap();
    img.affine = scanner_affine();
    lab.affine = scanner_affine();
    (img, lab)
}

#[test]
fn resample_then_inverse_restores_shape_and_affine() {
    let (img, lab) = synthetic_on_scanner_grid();
    let fine = resample_to_spacing(&img, [1.0, 1.0, 1.0], Interpolation::Linear).unwrap();
    assert_eq!(fine.dims, [31, 28, 60]);
    let lab_fine = resample_to_spacing(&lab, [1.0, 1.0, 1.0], Interpolation::Nearest).unwrap();
    check_same_grid(&fine, &lab_fine).unwrap();

    let back = resample_to_grid(&lab_fine, &lab.grid(), Interpolation::Nearest).unwrap();
    assert_eq!(back.dims, lab.dims);
    assert_eq!(back.affine, lab.affine);
    // Nearest there and back again loses only boundary voxels.
    let d = dice(&lab, &back).unwrap();
    assert!(d > 0.9, "dice after round trip {d}");
    let back_img = resample_to_grid(&fine, &img.grid(), Interpolation::Linear).unwrap();
    check_same_grid(&back_img, &img).unwrap();
}

#[test]
fn orientation_round_trip_on_lps_permuted_volume() {
    let (img, _) = synthetic_on_scanner_grid();
    let (ras, record) = orient_to_ras(&img);
    assert_eq!(ras.dims, [36, 40, 24]);
    assert!(ras.affine[0][0] > 0.0 && ras.affine[1][1] > 0.0 && ras.affine[2][2] > 0.0);
    let back = record.invert(&ras).unwrap();
    assert_eq!(back, img);
}

/// Forward: orient, resample, pad for a 96³ sliding window; then, as if the network
/// had predicted the label perfectly, undo every step.
fn through_inference_geometry(lab: &Volume<f32>, spacing: [f64; 3]) -> Volume<f32> {
    let (ras_lab, orientation) = orient_to_ras(lab);
    let spaced = resample_to_spacing(&ras_lab, spacing, Interpolation::Nearest).unwrap();
    let (padded, pad_box) = pad_to_min_size(&spaced, [96, 96, 96], 0.0).unwrap();
    assert_eq!(padded.dims, [96, 96, 96]);
    let unpadded = crop(&padded, &pad_box).unwrap();
    let on_ras = resample_to_grid(&unpadded, &ras_lab.grid(), Interpolation::Nearest).unwrap();
    orientation.invert(&on_ras).unwrap()
}

#[test]
fn inference_pipeline_puts_a_prediction_back_on_the_image_grid() {
    let (img, lab) = synthetic_on_scanner_grid();
    // At the native spacing every step is exact, so the label must come back unchanged.
    let same = through_inference_geometry(&lab, [0.78, 0.78, 2.5]);
    assert_eq!(same.affine, img.affine);
    assert_eq!(same, lab);
    // Halving the in-plane resolution of small organs costs boundary voxels only.
    let coarse = through_inference_geometry(&lab, [1.5, 1.5, 2.0]);
    check_same_grid(&coarse, &img).unwrap();
    let d = dice(&lab, &coarse).unwrap();
    assert!(d > 0.8, "dice {d}");
}

#[test]
fn dataset_is_written_in_studies_layout_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SyntheticConfig {
        dims: [32, 32, 32],
        with_liver: true,
        ..SyntheticConfig::default()
    };
    let ids = write_dataset(dir.path(), 3, 100, &cfg).unwrap();
    assert_eq!(ids, ["case_000", "case_001", "case_002"]);
    for (i, id) in ids.iter().enumerate() {
        let img = io::read_volume(dir.path().join(format!("{id}.nii.gz"))).unwrap();
        let lab =
            io::read_volume(dir.path().join("labels/final").join(format!("{id}.nii.gz"))).unwrap();
        check_same_grid(&img, &lab).unwrap();
        let (want_img, want_lab) = generate_case(100 + i as u64, &cfg).unwrap();
        assert_eq!(lab.data, want_lab.data);
        // Images are stored as int16 HU.
        assert!(
            img.data
                .iter()
                .zip(&want_img.data)
                .all(|(a, b)| (a - b).abs() <= 0.5)
        );
        let (sum, slices) = sum_and_slices(&lab);
        assert!(sum > 0 && slices > 0 && slices <= 32);
        assert!(lab.data.contains(&SPLEEN));
    }
}

#[test]
fn label_and_image_grid_mismatch_is_reported() {
    let (img, _) = synthetic_on_scanner_grid();
    let bytes = nifti::write_nifti_bytes(&img, DataType::F32, true).unwrap();
    let back = nifti::read_nifti_bytes(&bytes, true).unwrap();
    // float32 sform storage stays within tolerance...
    assert!(max_abs_diff(&back.affine, &img.affine) < 1e-4);
    check_same_grid(&back, &img).unwrap();
    // ...a shifted or reshaped label does not.
    let mut shifted = back.clone();
    shifted.affine[2][3] += 2.5;
    assert!(check_same_grid(&shifted, &img).is_err());
    let (other, _) = generate_case(
        1,
        &SyntheticConfig {
            dims: [16, 16, 16],
            ..SyntheticConfig::default()
        },
    )
    .unwrap();
    let err = check_same_grid(&other, &img).unwrap_err();
    assert!(err.to_string().contains("shape mismatch"), "{err}");
}
