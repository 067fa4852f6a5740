//! Transfer syntaxes: compressed fixtures decode to the same voxels as their
//! uncompressed originals, and unsupported ones are refused by name.

use medlabel_dicom::synthetic::SyntheticCt;
use medlabel_dicom::{DicomError, series_to_volume};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The first two slices of the synthetic series the fixtures were made from.
fn expected_two_slices() -> Vec<f32> {
    let volume = SyntheticCt {
        seed: 21,
        ..SyntheticCt::default()
    }
    .volume();
    volume.data[..2 * volume.dims[0] * volume.dims[1]].to_vec()
}

#[test]
fn jpeg_lossless_sv1() {
    let series = series_to_volume(&[
        data("synthetic21_jpeg_lossless_2.dcm"),
        data("synthetic21_jpeg_lossless_1.dcm"),
    ])
    .unwrap();
    assert!(series.volume.data == expected_two_slices());
}

#[test]
fn rle_lossless() {
    let series =
        series_to_volume(&[data("synthetic21_rle_1.dcm"), data("synthetic21_rle_2.dcm")]).unwrap();
    assert!(series.volume.data == expected_two_slices());
}

#[test]
fn compressed_multiframe_with_fragmented_frames() {
    let expected = SyntheticCt {
        seed: 21,
        ..SyntheticCt::default()
    }
    .volume();
    for name in [
        "synthetic21_multiframe_jpeg_lossless_fragmented.dcm",
        "synthetic21_multiframe_rle.dcm",
    ] {
        let series = series_to_volume(&[data(name)]).unwrap();
        assert_eq!(series.volume, expected, "{name}");
    }
}

#[test]
fn jpeg2000_lossless_matches_the_uncompressed_slice() {
    let native = series_to_volume(&[data("MR_small.dcm")]).unwrap();
    let j2k = series_to_volume(&[data("MR_small_jp2klossless.dcm")]).unwrap();
    assert_eq!(j2k.volume, native.volume);
    // Values pydicom reads at (row, column) (0, 1), (10, 20), (63, 0).
    let v = &native.volume;
    assert_eq!(
        [v.get(1, 0, 0), v.get(20, 10, 0), v.get(0, 63, 0)],
        [1019.0, 316.0, 378.0]
    );
    // IPP (-83.9063, -91.2, 6.6406) LPS, 0.3125 mm pixels, 0.8 mm slice thickness.
    let a = v.affine;
    assert_eq!([a[0][3], a[1][3], a[2][3]], [83.9063, 91.2, 6.6406]);
    assert_eq!([a[0][0], a[1][1], a[2][2]], [-0.3125, -0.3125, 0.8]);
}

#[test]
fn unsupported_transfer_syntaxes_are_named() {
    let err = series_to_volume(&[data("MR_small_jpeg_ls_lossless.dcm")]).unwrap_err();
    match err {
        DicomError::UnsupportedTransferSyntax { uid, name, .. } => {
            assert_eq!(uid, "1.2.840.10008.1.2.4.80");
            assert!(name.contains("JPEG-LS"), "{name}");
        }
        other => panic!("{other}"),
    }
    // The same file claiming big endian (a UID of the same length), or a UID nobody knows.
    for (uid, name) in [
        ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
        ("1.2.840.10008.1.2.9", "unknown"),
    ] {
        let bytes = with_transfer_syntax(&data("MR_small.dcm"), uid);
        let err = series_to_volume(&[bytes]).unwrap_err();
        assert!(
            matches!(&err, DicomError::UnsupportedTransferSyntax { uid: u, name: n, .. } if u == uid && n == name),
            "{err}"
        );
        assert!(err.to_string().contains(uid), "{err}");
    }
}

#[test]
fn pixel_data_encoding_must_match_the_transfer_syntax() {
    // Uncompressed pixel data in a file that claims RLE (a UID of the same length).
    let err = series_to_volume(&[with_transfer_syntax(
        &data("MR_small.dcm"),
        "1.2.840.10008.1.2.5",
    )])
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("native PixelData in a file of compressed"),
        "{err}"
    );
    // Fragments in a file that claims explicit VR little endian.
    let mut rle = data("synthetic21_rle_1.dcm");
    let rle_uid = b"1.2.840.10008.1.2.5\0";
    let at = rle
        .windows(rle_uid.len())
        .position(|w| w == rle_uid)
        .unwrap();
    rle[at..at + rle_uid.len()].copy_from_slice(b"1.2.840.10008.1.2.1\0");
    let err = series_to_volume(&[rle]).unwrap_err();
    assert!(
        err.to_string()
            .contains("encapsulated PixelData in a file of uncompressed"),
        "{err}"
    );
}

/// Replaces the explicit VR little endian transfer syntax UID in the meta group with
/// another of the same length.
fn with_transfer_syntax(file: &[u8], uid: &str) -> Vec<u8> {
    let old = b"1.2.840.10008.1.2.1\0";
    assert_eq!(uid.len() + 1, old.len());
    let at = file.windows(old.len()).position(|w| w == old).unwrap();
    let mut out = file.to_vec();
    out[at..at + uid.len()].copy_from_slice(uid.as_bytes());
    out
}
