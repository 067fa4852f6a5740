//! NRRD reading and writing, Slicer-style segmentations, and hostile input.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use medlabel_imaging::io::{read_volume, read_volume_bytes, write_volume};
use medlabel_imaging::nrrd::{
    read_nrrd_bytes, read_nrrd_bytes_with_limits, recode_nrrd_bytes, write_nrrd_bytes,
};
use medlabel_imaging::{Affine, DataType, ImageError, ReadLimits, Volume};

fn expect_err<T>(r: Result<T, ImageError>) -> ImageError {
    match r {
        Ok(_) => panic!("expected an error, got a volume"),
        Err(e) => e,
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn oblique() -> Affine {
    let (s, c) = 15f64.to_radians().sin_cos();
    [
        [0.8 * c, -0.8 * s, 0.0, -12.3],
        [0.8 * s, 0.8 * c, 0.0, 45.6],
        [0.0, 0.0, 3.0, -78.9],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn sample(dims: [usize; 3]) -> Volume<f32> {
    let n = dims.iter().product::<usize>();
    Volume {
        data: (0..n).map(|i| (i % 5) as f32).collect(),
        dims,
        affine: oblique(),
    }
}

/// A Slicer-style 3D labelmap `.seg.nrrd` header (LPS), with segment metadata.
fn slicer_header(dimension_line: &str, sizes: &str, dirs: &str, kinds: &str) -> String {
    format!(
        "NRRD0004\n# Complete NRRD file format specification at:\n\
         # http://teem.sourceforge.net/nrrd/format.html\n\
         type: unsigned char\n{dimension_line}\nspace: left-posterior-superior\n\
         sizes: {sizes}\nspace directions: {dirs}\nkinds: {kinds}\n\
         encoding: gzip\nspace origin: (10.5,-20,30)\n\
         Segment0_Color:=0.501961 0.682353 0.364706\nSegment0_ID:=Segment_1\n\
         Segment0_LabelValue:=1\nSegment0_Layer:=0\nSegment0_Name:=spleen\n\n"
    )
}

#[test]
fn round_trips_raw_and_gzip_with_exact_affine() {
    let vol = sample([6, 4, 3]);
    for dt in [
        DataType::U8,
        DataType::I16,
        DataType::U16,
        DataType::F32,
        DataType::F64,
    ] {
        for gzip in [false, true] {
            let bytes = write_nrrd_bytes(&vol, dt, gzip).unwrap();
            let back = read_nrrd_bytes(&bytes).unwrap();
            assert_eq!(back.dims, vol.dims);
            assert_eq!(back.data, vol.data, "{dt} gzip={gzip}");
            assert_eq!(back.affine, vol.affine, "{dt} gzip={gzip}");
        }
    }
    let text =
        String::from_utf8_lossy(&write_nrrd_bytes(&vol, DataType::U8, false).unwrap()[..300])
            .to_string();
    assert!(text.contains("space: left-posterior-superior"), "{text}");
    assert!(text.contains("encoding: raw"), "{text}");
}

#[test]
fn files_dispatch_on_extension() {
    let dir = tempfile::tempdir().unwrap();
    let vol = sample([3, 3, 2]);
    for name in ["a.nrrd", "b.seg.nrrd", "c.nii", "d.nii.gz"] {
        let path = dir.path().join(name);
        write_volume(&path, &vol, DataType::U8).unwrap();
        let back = read_volume(&path).unwrap();
        assert_eq!(back.data, vol.data, "{name}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            read_volume_bytes(&bytes, name).unwrap().data,
            vol.data,
            "{name}"
        );
    }
    let err = expect_err(
        write_volume(dir.path().join("x.png"), &vol, DataType::U8).map(|()| vol.clone()),
    );
    assert!(matches!(err, ImageError::UnknownFormat(_)), "{err}");
    let err = expect_err(read_volume(dir.path().join("missing.nii")));
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
}

#[test]
fn slicer_3d_labelmap_seg_nrrd_reads_in_ras() {
    let header = slicer_header(
        "dimension: 3",
        "4 3 2",
        "(0.5,0,0) (0,0.6,0) (0,0,2)",
        "domain domain domain",
    );
    let voxels: Vec<u8> = (0..24).map(|i| u8::from(i % 3 == 0)).collect();
    let mut file = header.into_bytes();
    file.extend(gz(&voxels));
    let v = read_volume_bytes(&file, "label.seg.nrrd").unwrap();
    assert_eq!(v.dims, [4, 3, 2]);
    assert_eq!(
        v.data,
        voxels.iter().map(|&b| f32::from(b)).collect::<Vec<_>>()
    );
    // LPS → RAS flips the sign of x and y, for the directions and the origin.
    let want = [
        [-0.5, 0.0, 0.0, -10.5],
        [0.0, -0.6, 0.0, 20.0],
        [0.0, 0.0, 2.0, 30.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_eq!(v.affine, want);
}

#[test]
fn multi_layer_4d_seg_nrrd_is_refused_clearly() {
    let header = slicer_header(
        "dimension: 4",
        "2 4 3 2",
        "none (0.5,0,0) (0,0.6,0) (0,0,2)",
        "list domain domain domain",
    );
    let mut file = header.into_bytes();
    file.extend(gz(&[0u8; 48]));
    let err = expect_err(read_nrrd_bytes(&file));
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("dimension is 4") && msg.contains(".seg.nrrd"),
        "{msg}"
    );
}

#[test]
fn ras_space_big_endian_and_spacings_fallback() {
    let mut file = b"NRRD0005\ntype: short\ndimension: 3\nspace: RAS\nsizes: 2 1 1\n\
        space directions: (2,0,0) (0,3,0) (0,0,4)\nendian: big\nencoding: raw\n\
        space origin: (1,2,3)\n\n"
        .to_vec();
    file.extend((-300i16).to_be_bytes());
    file.extend(7i16.to_be_bytes());
    let v = read_nrrd_bytes(&file).unwrap();
    assert_eq!(v.data, [-300.0, 7.0]);
    assert_eq!(v.affine[0], [2.0, 0.0, 0.0, 1.0]);
    assert_eq!(v.affine[1], [0.0, 3.0, 0.0, 2.0]);

    let mut file = b"NRRD0001\r\ntype: float\r\ndimension: 3\r\nsizes: 1 1 1\r\n\
        spacings: 1.5 2.5 NaN\r\nencoding: raw\r\nendian: little\r\n\r\n"
        .to_vec();
    file.extend(4.25f32.to_le_bytes());
    let v = read_nrrd_bytes(&file).unwrap();
    assert_eq!(v.data, [4.25]);
    assert_eq!(
        [v.affine[0][0], v.affine[1][1], v.affine[2][2]],
        [1.5, 2.5, 1.0]
    );
}

fn header_with(field_lines: &str) -> Vec<u8> {
    format!("NRRD0004\n{field_lines}\n").into_bytes()
}

const GOOD_FIELDS: &str = "type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n";

#[test]
fn malformed_headers_are_rejected() {
    let cases: &[(&[u8], &str)] = &[
        (b"NIFTI\n\n", "magic"),
        (
            b"NRRD0004\ntype: uchar\ndimension: 3\n",
            "not ended by a blank line",
        ),
        (
            &header_with("dimension: 3\nsizes: 2 2 2\nencoding: raw\n"),
            "\"type\" is missing",
        ),
        (
            &header_with("type: uchar\ndimension: 3\nsizes: 2 -2 2\nencoding: raw\n"),
            "size -2",
        ),
        (
            &header_with("type: uchar\ndimension: 3\nsizes: 2 0 2\nencoding: raw\n"),
            "size 0",
        ),
        (
            &header_with("type: uchar\ndimension: 3\nsizes: 2 2\nencoding: raw\n"),
            "sizes must be",
        ),
        (
            &header_with("type: uchar\ndimension: x\nsizes: 2 2 2\nencoding: raw\n"),
            "dimension is not",
        ),
        (
            &header_with(&format!("{GOOD_FIELDS}endian: middle\n")),
            "endian",
        ),
        (
            &header_with(&format!(
                "{GOOD_FIELDS}space directions: (1,0) (0,1,0) (0,0,1)\n"
            )),
            "space directions",
        ),
        (
            &header_with(&format!("{GOOD_FIELDS}space origin: (1,nan0,0)\n")),
            "space origin",
        ),
        (
            &header_with(&format!("{GOOD_FIELDS}byte skip: 999999999999\n")),
            "byte skip",
        ),
        (
            &header_with(&format!("{GOOD_FIELDS}byte skip: 100\n")),
            "beyond the end",
        ),
        (
            &header_with("type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nno colon here\n"),
            "no ':'",
        ),
    ];
    for (bytes, needle) in cases {
        let err = expect_err(read_nrrd_bytes(bytes));
        assert!(
            matches!(err, ImageError::InvalidHeader { .. }),
            "{needle}: {err:?}"
        );
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in {err}"
        );
    }
}

#[test]
fn unsupported_features_are_named() {
    let cases = [
        (
            "type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: ascii\n",
            "encoding \"ascii\"",
        ),
        (
            "type: complex\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n",
            "type \"complex\"",
        ),
        (
            "type: uchar\ndimension: 2\nsizes: 2 2\nencoding: raw\n",
            "dimension is 2",
        ),
        (&format!("{GOOD_FIELDS}data file: other.raw\n"), "detached"),
        (
            &format!("{GOOD_FIELDS}space: scanner-xyz\n"),
            "space \"scanner-xyz\"",
        ),
    ];
    for (fields, needle) in cases {
        let err = expect_err(read_nrrd_bytes(&header_with(fields)));
        assert!(
            matches!(err, ImageError::Unsupported { .. }),
            "{needle}: {err:?}"
        );
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in {err}"
        );
    }
}

#[test]
fn truncated_oversized_and_bomb_payloads_fail() {
    let mut raw = header_with(GOOD_FIELDS);
    raw.extend([1u8; 5]);
    let err = expect_err(read_nrrd_bytes(&raw));
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                expected: 8,
                found: 5,
                ..
            }
        ),
        "{err:?}"
    );

    let huge =
        header_with("type: double\ndimension: 3\nsizes: 100000 100000 100000\nencoding: gzip\n");
    let err = expect_err(read_nrrd_bytes(&huge));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");

    let small = ReadLimits {
        max_voxel_bytes: 31,
    };
    let mut ok = header_with(GOOD_FIELDS);
    ok.extend([0u8; 8]);
    assert!(read_nrrd_bytes(&ok).is_ok());
    assert!(matches!(
        read_nrrd_bytes_with_limits(&ok, &small),
        Err(ImageError::TooLarge { needed: 32, .. })
    ));

    // 200 MB of zeros behind a header that needs 8 bytes.
    let mut bomb = header_with("type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\n");
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    (0..200).for_each(|_| enc.write_all(&zeros).unwrap());
    bomb.extend(enc.finish().unwrap());
    let start = std::time::Instant::now();
    let err = expect_err(read_nrrd_bytes(&bomb));
    assert!(
        matches!(err, ImageError::ExcessData { expected: 8, .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed().as_millis() < 1000,
        "took {:?}",
        start.elapsed()
    );

    let mut corrupt = header_with("type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: gzip\n");
    corrupt.extend([
        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0xde, 0xad, 0xbe, 0xef,
    ]);
    assert!(read_nrrd_bytes(&corrupt).is_err());
}

#[test]
fn recoding_switches_gzip_and_raw_and_keeps_the_rest() {
    let vol = sample([6, 4, 3]);
    let gzip = write_nrrd_bytes(&vol, DataType::U8, true).unwrap();
    let raw = write_nrrd_bytes(&vol, DataType::U8, false).unwrap();
    assert_eq!(recode_nrrd_bytes(&gzip, false).unwrap(), raw);
    assert_eq!(recode_nrrd_bytes(&raw, false).unwrap(), raw);
    assert!(matches!(
        recode_nrrd_bytes(&raw, false).unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    let back = recode_nrrd_bytes(&raw, true).unwrap();
    assert!(String::from_utf8_lossy(&back[..300]).contains("encoding: gzip"));
    let read = read_nrrd_bytes(&back).unwrap();
    assert_eq!((read.data, read.affine), (vol.data, vol.affine));
}
