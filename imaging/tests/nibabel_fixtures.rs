//! Files written by nibabel (see tests/data/make_fixtures.py) must read exactly as
//! nibabel itself reads them: big-endian NIfTI-1 with qform only and scaling, and
//! NIfTI-2 float64.

use medlabel_imaging::Affine;
use medlabel_imaging::affine::max_abs_diff;
use medlabel_imaging::io::read_volume;

struct Expected {
    dims: [usize; 3],
    affine: Affine,
    data: Vec<f64>,
}

/// Read when the test runs, not baked in by `env!`: a binary reused from another
/// checkout's build would point there.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
}

fn expected(name: &str) -> Expected {
    let path = format!("{}/tests/data/{name}.json", manifest_dir());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dims: Vec<usize> = serde_json::from_value(v["dims"].clone()).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(v["affine"].clone()).unwrap();
    let mut affine = [[0.0; 4]; 4];
    for (r, row) in rows.iter().enumerate() {
        affine[r].copy_from_slice(row);
    }
    Expected {
        dims: [dims[0], dims[1], dims[2]],
        affine,
        data: serde_json::from_value(v["data"].clone()).unwrap(),
    }
}

fn check(name: &str, value_tolerance: f64) {
    let want = expected(name);
    let got = read_volume(format!("{}/tests/data/{name}", manifest_dir())).unwrap();
    assert_eq!(got.dims, want.dims, "{name}");
    let diff = max_abs_diff(&got.affine, &want.affine);
    assert!(
        diff < 1e-5,
        "{name}: affine differs by {diff}: {:?}",
        got.affine
    );
    assert_eq!(got.data.len(), want.data.len());
    for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= value_tolerance * w.abs().max(1.0),
            "{name}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn big_endian_int16_with_qform_and_scaling() {
    check("be_int16_qform.nii.gz", 0.0);
}

#[test]
fn nifti2_float64_with_sform() {
    check("nifti2_f64.nii", 1e-6);
}
