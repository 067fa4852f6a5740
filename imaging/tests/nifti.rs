//! NIfTI reading and writing, including hostile input.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use medlabel_imaging::affine::max_abs_diff;
use medlabel_imaging::nifti::{
    read_nifti, read_nifti_bytes, read_nifti_bytes_with_limits, write_nifti, write_nifti_bytes,
};
use medlabel_imaging::{Affine, DataType, IDENTITY, ImageError, ReadLimits, Volume};

/// 30° about z, LPS-flipped, anisotropic, with an origin far from zero.
fn oblique_lps() -> Affine {
    let (s, c) = 30f64.to_radians().sin_cos();
    let sp = [0.75, 0.8, 2.5];
    [
        [-c * sp[0], s * sp[1], 0.0, 150.25],
        [-s * sp[0], -c * sp[1], 0.0, 80.5],
        [0.0, 0.0, sp[2], -400.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

fn sample(dims: [usize; 3]) -> Volume<f32> {
    let n = dims.iter().product::<usize>();
    let data = (0..n).map(|i| ((i * 7) % 101) as f32).collect();
    Volume {
        data,
        dims,
        affine: oblique_lps(),
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Like `unwrap_err`, without printing a whole volume when the call succeeds.
fn expect_err<T>(r: Result<T, ImageError>) -> ImageError {
    match r {
        Ok(_) => panic!("expected an error, got a volume"),
        Err(e) => e,
    }
}

fn put_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn raw_u8_file(dims: [usize; 3]) -> Vec<u8> {
    write_nifti_bytes(&sample(dims), DataType::U8, false).unwrap()
}

#[test]
fn every_datatype_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let vol = sample([7, 5, 3]);
    for dt in DataType::ALL {
        for name in ["v.nii", "v.nii.gz"] {
            let path = dir.path().join(format!("{dt}-{name}"));
            write_nifti(&path, &vol, dt).unwrap();
            let raw = std::fs::read(&path).unwrap();
            assert_eq!(
                raw.starts_with(&[0x1f, 0x8b]),
                name.ends_with(".gz"),
                "{dt} {name}"
            );
            let back = read_nifti(&path).unwrap();
            assert_eq!(back.dims, vol.dims);
            assert_eq!(back.data, vol.data, "{dt} {name}");
            // The sform is stored as float32.
            assert!(
                max_abs_diff(&back.affine, &vol.affine) < 1e-4,
                "{:?}",
                back.affine
            );
        }
    }
}

#[test]
fn float_values_and_negative_ints_survive() {
    let mut vol = sample([4, 4, 4]);
    vol.data
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = -1000.0 + i as f32 * 0.37);
    let back =
        read_nifti_bytes(&write_nifti_bytes(&vol, DataType::F32, true).unwrap(), true).unwrap();
    assert_eq!(back.data, vol.data);
    let back = read_nifti_bytes(
        &write_nifti_bytes(&vol, DataType::I16, false).unwrap(),
        false,
    )
    .unwrap();
    let rounded: Vec<f32> = vol.data.iter().map(|v| v.round()).collect();
    assert_eq!(back.data, rounded);
}

#[test]
fn affine_falls_back_to_qform_then_pixdim() {
    let vol = sample([3, 3, 3]);
    let mut bytes = write_nifti_bytes(&vol, DataType::U8, false).unwrap();
    // Scramble the sform so that reading it by mistake would show.
    put_f32(&mut bytes, 280, 99.0);
    put_i16(&mut bytes, 254, 0);
    let q = read_nifti_bytes(&bytes, false).unwrap();
    assert!(
        max_abs_diff(&q.affine, &vol.affine) < 1e-4,
        "qform gave {:?}",
        q.affine
    );

    put_i16(&mut bytes, 252, 0);
    let p = read_nifti_bytes(&bytes, false).unwrap();
    let mut expected = IDENTITY;
    [0.75, 0.8, 2.5]
        .iter()
        .enumerate()
        .for_each(|(i, &s)| expected[i][i] = s);
    assert!(max_abs_diff(&p.affine, &expected) < 1e-6, "{:?}", p.affine);

    // A left-handed affine (det < 0) must come back through qfac.
    let mut lh = vol.clone();
    (0..3).for_each(|r| lh.affine[r][2] = -lh.affine[r][2]);
    let mut bytes = write_nifti_bytes(&lh, DataType::U8, false).unwrap();
    put_i16(&mut bytes, 254, 0);
    let q = read_nifti_bytes(&bytes, false).unwrap();
    assert!(max_abs_diff(&q.affine, &lh.affine) < 1e-4, "{:?}", q.affine);
}

#[test]
fn scl_slope_and_inter_are_applied_unless_slope_is_zero() {
    let mut bytes = raw_u8_file([2, 2, 2]);
    put_f32(&mut bytes, 112, 2.0);
    put_f32(&mut bytes, 116, -10.0);
    let v = read_nifti_bytes(&bytes, false).unwrap();
    let expected: Vec<f32> = sample([2, 2, 2])
        .data
        .iter()
        .map(|x| x * 2.0 - 10.0)
        .collect();
    assert_eq!(v.data, expected);
    put_f32(&mut bytes, 112, 0.0);
    assert_eq!(
        read_nifti_bytes(&bytes, false).unwrap().data,
        sample([2, 2, 2]).data
    );
}

#[test]
fn trailing_unit_dimensions_are_accepted_but_real_4d_is_not() {
    let mut bytes = raw_u8_file([2, 3, 4]);
    put_i16(&mut bytes, 40, 5);
    put_i16(&mut bytes, 48, 1);
    put_i16(&mut bytes, 50, 1);
    assert_eq!(read_nifti_bytes(&bytes, false).unwrap().dims, [2, 3, 4]);
    put_i16(&mut bytes, 48, 3);
    let err = expect_err(read_nifti_bytes(&bytes, false));
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("dim[4] = 3"), "{err}");
}

#[test]
fn gzip_flag_is_not_needed_when_content_is_gzip() {
    let vol = sample([3, 2, 2]);
    let bytes = write_nifti_bytes(&vol, DataType::I16, true).unwrap();
    assert_eq!(read_nifti_bytes(&bytes, false).unwrap().data, vol.data);
}

fn expect_header_error(bytes: &[u8], needle: &str) {
    let err = expect_err(read_nifti_bytes(bytes, false));
    assert!(
        matches!(err, ImageError::InvalidHeader { .. }),
        "{needle}: {err:?}"
    );
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in {err}"
    );
    // The same file gzipped must fail the same way.
    let err = expect_err(read_nifti_bytes(&gz(bytes), true));
    assert!(
        err.to_string().contains(needle),
        "gz: expected {needle:?} in {err}"
    );
}

#[test]
fn malformed_headers_are_rejected() {
    let good = raw_u8_file([4, 4, 4]);
    let mut b = good.clone();
    b[0..4].copy_from_slice(&1234i32.to_le_bytes());
    expect_header_error(&b, "sizeof_hdr is 1234");

    for (ndim, needle) in [(0, "dim[0] = 0"), (8, "dim[0] = 8"), (-3, "dim[0] = -3")] {
        let mut b = good.clone();
        put_i16(&mut b, 40, ndim);
        expect_header_error(&b, needle);
    }
    let mut b = good.clone();
    put_i16(&mut b, 44, -4);
    expect_header_error(&b, "dim[2] = -4 is not positive");
    let mut b = good.clone();
    put_i16(&mut b, 46, 0);
    expect_header_error(&b, "dim[3] = 0 is not positive");

    let mut b = good.clone();
    b[344..348].copy_from_slice(b"abcd");
    expect_header_error(&b, "magic");

    for off in [f32::NAN, 100.0, 1e12] {
        let mut b = good.clone();
        put_f32(&mut b, 108, off);
        expect_header_error(&b, "vox_offset");
    }
    let mut b = good.clone();
    put_f32(&mut b, 108, 4000.0);
    expect_header_error(&b, "beyond the end");

    let mut b = good.clone();
    put_f32(&mut b, 280, f32::INFINITY);
    expect_header_error(&b, "non-finite");

    expect_header_error(&good[..200], "ends inside the header");
    assert!(read_nifti_bytes(&[], false).is_err());
}

#[test]
fn unsupported_variants_are_named() {
    let mut b = raw_u8_file([2, 2, 2]);
    put_i16(&mut b, 70, 32); // complex64
    let err = expect_err(read_nifti_bytes(&b, false));
    assert!(err.to_string().contains("datatype code 32"), "{err}");
    let mut b = raw_u8_file([2, 2, 2]);
    b[344..348].copy_from_slice(b"ni1\0");
    let err = expect_err(read_nifti_bytes(&b, false));
    assert!(err.to_string().contains("two-file"), "{err}");
}

#[test]
fn absurd_dims_fail_before_allocating() {
    let mut b = raw_u8_file([2, 2, 2]);
    for off in [42, 44, 46] {
        put_i16(&mut b, off, i16::MAX);
    }
    put_i16(&mut b, 70, DataType::F64.nifti_code());
    let err = expect_err(read_nifti_bytes(&b, false));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    let err = expect_err(read_nifti_bytes(&gz(&b), true));
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");

    // Within the default cap but over a configured one.
    let vol = sample([64, 64, 64]);
    let bytes = write_nifti_bytes(&vol, DataType::U8, true).unwrap();
    let small = ReadLimits {
        max_voxel_bytes: (1 << 20) - 1,
    };
    let err = expect_err(read_nifti_bytes_with_limits(&bytes, true, &small));
    assert!(
        matches!(err, ImageError::TooLarge { needed, .. } if needed == 64 * 64 * 64 * 4),
        "{err:?}"
    );
    assert!(read_nifti_bytes_with_limits(&bytes, true, &ReadLimits::default()).is_ok());
}

#[test]
fn truncated_data_is_reported() {
    let good = write_nifti_bytes(&sample([8, 8, 8]), DataType::I16, false).unwrap();
    let cut = &good[..good.len() - 10];
    let err = expect_err(read_nifti_bytes(cut, false));
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                expected: 1024,
                found: 1014,
                ..
            }
        ),
        "{err:?}"
    );
    let err = expect_err(read_nifti_bytes(&gz(cut), true));
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                expected: 1024,
                found: 1014,
                ..
            }
        ),
        "{err:?}"
    );
    // A gzip stream cut mid-way (no trailer) is also an error, not a panic.
    let zipped = write_nifti_bytes(&sample([8, 8, 8]), DataType::I16, true).unwrap();
    assert!(read_nifti_bytes(&zipped[..zipped.len() / 2], true).is_err());
    let mut corrupt = zipped.clone();
    corrupt[20..40].iter_mut().for_each(|b| *b ^= 0x5a);
    assert!(read_nifti_bytes(&corrupt, true).is_err());
}

#[test]
fn gzip_bomb_with_tiny_header_is_rejected_quickly() {
    let header = raw_u8_file([2, 2, 2]);
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(&header).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
    let start = std::time::Instant::now();
    let err = expect_err(read_nifti_bytes(&bomb, true));
    assert!(
        matches!(err, ImageError::ExcessData { expected: 8, .. }),
        "{err:?}"
    );
    // Inflating all 200 MB would take far longer than stopping after the first block.
    assert!(
        start.elapsed().as_millis() < 1000,
        "took {:?}",
        start.elapsed()
    );
}
