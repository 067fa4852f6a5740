//! NIfTI-1 and NIfTI-2 single-file volumes (`.nii`, `.nii.gz`).
//!
//! Reading accepts either version in either byte order and every [`DataType`]; the
//! voxels are decoded to `f32` with `scl_slope`/`scl_inter` applied. The affine comes
//! from the sform when `sform_code > 0`, else from the qform quaternion when
//! `qform_code > 0`, else it is `diag(pixdim[1..=3])` with a zero origin (NIfTI's
//! "method 1"; nibabel instead centres such images, which no current writer produces).
//! Volumes must be 3D: extra dimensions are accepted only when they have size 1.
//!
//! Writing always produces little-endian NIfTI-1 (`n+1`, `vox_offset` 352, no
//! extensions) with both sform and qform set from the affine and both codes 1
//! ("scanner"), units mm, `scl_slope` 1 and `scl_inter` 0.
//!
//! Every header field that sizes something is validated before use, and the payload
//! is read under [`ReadLimits`], so hostile files fail with an [`ImageError`].

use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::affine::{QForm, from_qform, to_qform};
use crate::limits::{header_read_error, read_payload};
use crate::{Affine, DataType, Grid, IDENTITY, ImageError, ReadLimits, Volume};

const FORMAT: &str = "NIfTI";
const NIFTI1_HEADER: usize = 348;
const NIFTI2_HEADER: usize = 540;
/// Extension blocks between header and data larger than this are taken as hostile.
const MAX_EXTENSION_BYTES: u64 = 64 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a `.nii` or `.nii.gz` file with the default [`ReadLimits`].
pub fn read_nifti(path: impl AsRef<Path>) -> Result<Volume<f32>, ImageError> {
    read_nifti_with_limits(path, &ReadLimits::default())
}

/// [`read_nifti`] with explicit limits. Gzip is detected from the content, so a
/// mis-named file still reads.
pub fn read_nifti_with_limits(
    path: impl AsRef<Path>,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    read_nifti_bytes_with_limits(&bytes, false, limits)
}

/// Reads a NIfTI volume from memory (e.g. an HTTP upload). `gz` says the bytes are
/// gzip-compressed; bytes starting with the gzip magic are inflated regardless, since
/// no uncompressed NIfTI header can start with it.
pub fn read_nifti_bytes(bytes: &[u8], gz: bool) -> Result<Volume<f32>, ImageError> {
    read_nifti_bytes_with_limits(bytes, gz, &ReadLimits::default())
}

/// [`read_nifti_bytes`] with explicit limits.
pub fn read_nifti_bytes_with_limits(
    bytes: &[u8],
    gz: bool,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    if gz || bytes.starts_with(&GZIP_MAGIC) {
        read_stream(&mut MultiGzDecoder::new(bytes), None, limits)
    } else {
        read_stream(&mut &bytes[..], Some(bytes.len() as u64), limits)
    }
}

/// Writes `volume` as NIfTI-1 with voxels stored as `datatype`; the file is gzipped
/// when the path ends in `.gz`.
pub fn write_nifti(
    path: impl AsRef<Path>,
    volume: &Volume<f32>,
    datatype: DataType,
) -> Result<(), ImageError> {
    let path = path.as_ref();
    let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
    let bytes = write_nifti_bytes(volume, datatype, gz)?;
    std::fs::write(path, bytes).map_err(|e| ImageError::io(path, e))
}

/// Encodes `volume` as a NIfTI-1 file image (gzip-compressed when `gz`).
pub fn write_nifti_bytes(
    volume: &Volume<f32>,
    datatype: DataType,
    gz: bool,
) -> Result<Vec<u8>, ImageError> {
    check_writable(volume)?;
    let payload = datatype.encode_le(&volume.data)?;
    let header = encode_header(volume, datatype);
    if !gz {
        let mut out = header;
        out.extend_from_slice(&payload);
        return Ok(out);
    }
    // Level 1, like nibabel: label maps and CT compress almost as well, much faster.
    let mut enc = GzEncoder::new(Vec::with_capacity(payload.len() / 4), Compression::fast());
    enc.write_all(&header)
        .and_then(|()| enc.write_all(&payload))
        .map_err(|e| ImageError::InvalidArgument(format!("gzip encoding failed: {e}")))?;
    enc.finish()
        .map_err(|e| ImageError::InvalidArgument(format!("gzip encoding failed: {e}")))
}

fn check_writable(volume: &Volume<f32>) -> Result<(), ImageError> {
    let expected = volume.dims.iter().product::<usize>();
    if volume.dims.contains(&0) || volume.data.len() != expected {
        return Err(ImageError::InvalidArgument(format!(
            "volume dims {:?} need {expected} voxels (none zero) but data has {}",
            volume.dims,
            volume.data.len()
        )));
    }
    if volume.dims.iter().any(|&d| d > i16::MAX as usize) {
        return Err(ImageError::InvalidArgument(format!(
            "dims {:?} exceed NIfTI-1's limit of 32767 per axis",
            volume.dims
        )));
    }
    if volume.affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ImageError::InvalidArgument(
            "affine has non-finite values".into(),
        ));
    }
    Ok(())
}

/// What the reader needs from either header version.
struct Header {
    dims: [u64; 3],
    datatype: DataType,
    vox_offset: u64,
    header_len: u64,
    slope: f64,
    inter: f64,
    affine: Affine,
    big_endian: bool,
}

/// Typed little/big-endian field access into a header buffer.
struct Fields<'a> {
    buf: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.buf[off..off + N]);
        if self.big {
            b.reverse();
        }
        b
    }
    fn i16(&self, off: usize) -> i64 {
        i16::from_le_bytes(self.bytes(off)).into()
    }
    fn i32(&self, off: usize) -> i64 {
        i32::from_le_bytes(self.bytes(off)).into()
    }
    fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.bytes(off))
    }
    fn f32(&self, off: usize) -> f64 {
        f32::from_le_bytes(self.bytes(off)).into()
    }
    fn f64(&self, off: usize) -> f64 {
        f64::from_le_bytes(self.bytes(off))
    }
}

/// Version-specific field offsets and widths.
struct Layout {
    header_len: usize,
    dim: fn(&Fields, usize) -> i64,
    float: fn(&Fields, usize) -> f64,
    code: fn(&Fields, usize) -> i64,
    offset: fn(&Fields, usize) -> f64,
    dim_width: usize,
    float_width: usize,
    datatype: usize,
    dims: usize,
    pixdim: usize,
    vox_offset: usize,
    slope: usize,
    inter: usize,
    qform_code: usize,
    sform_code: usize,
    quatern: usize,
    srow: usize,
}

const NIFTI1: Layout = Layout {
    header_len: NIFTI1_HEADER,
    dim: |f, o| f.i16(o),
    float: |f, o| f.f32(o),
    code: |f, o| f.i16(o),
    offset: |f, o| f.f32(o),
    dim_width: 2,
    float_width: 4,
    datatype: 70,
    dims: 40,
    pixdim: 76,
    vox_offset: 108,
    slope: 112,
    inter: 116,
    qform_code: 252,
    sform_code: 254,
    quatern: 256,
    srow: 280,
};

const NIFTI2: Layout = Layout {
    header_len: NIFTI2_HEADER,
    dim: |f, o| f.i64(o),
    float: |f, o| f.f64(o),
    code: |f, o| f.i32(o),
    offset: |f, o| f.i64(o) as f64,
    dim_width: 8,
    float_width: 8,
    datatype: 12,
    dims: 16,
    pixdim: 104,
    vox_offset: 168,
    slope: 176,
    inter: 184,
    qform_code: 344,
    sform_code: 348,
    quatern: 352,
    srow: 400,
};

/// Reads only the header of a NIfTI file image: its voxel grid. `prefix` need hold
/// only the file's first bytes (those of a `.nii.gz` are inflated just far enough).
pub fn read_grid_bytes(prefix: &[u8]) -> Result<Grid, ImageError> {
    let header = if prefix.starts_with(&GZIP_MAGIC) {
        read_header(&mut MultiGzDecoder::new(prefix))?
    } else {
        read_header(&mut &prefix[..])?
    };
    Ok(Grid {
        dims: header.dims.map(|d| d as usize),
        affine: header.affine,
    })
}

/// Reads and parses the header (either version, either byte order).
fn read_header(reader: &mut dyn Read) -> Result<Header, ImageError> {
    let mut buf = vec![0u8; NIFTI2_HEADER];
    reader
        .read_exact(&mut buf[..4])
        .map_err(|e| header_read_error(e, FORMAT, "header"))?;
    let sizeof_le = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let sizeof_be = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let (layout, big) = match (sizeof_le, sizeof_be) {
        (348, _) => (&NIFTI1, false),
        (_, 348) => (&NIFTI1, true),
        (540, _) => (&NIFTI2, false),
        (_, 540) => (&NIFTI2, true),
        _ => {
            return Err(ImageError::header(
                FORMAT,
                format!("sizeof_hdr is {sizeof_le}, expected 348 (NIfTI-1) or 540 (NIfTI-2)"),
            ));
        }
    };
    let buf = &mut buf[..layout.header_len];
    reader
        .read_exact(&mut buf[4..])
        .map_err(|e| header_read_error(e, FORMAT, "header"))?;
    parse_header(buf, layout, big)
}

fn read_stream(
    reader: &mut dyn Read,
    known_len: Option<u64>,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    let header = read_header(reader)?;
    let (voxels, raw_len) = limits.budget(header.dims, header.datatype)?;
    let skip = header.vox_offset - header.header_len;
    let skipped = std::io::copy(&mut reader.take(skip), &mut std::io::sink())
        .map_err(|e| header_read_error(e, FORMAT, "extensions"))?;
    if skipped < skip {
        return Err(ImageError::header(
            FORMAT,
            format!(
                "vox_offset {} is beyond the end of the data ({} bytes)",
                header.vox_offset,
                header.header_len + skipped
            ),
        ));
    }
    let remaining = known_len.map(|n| n.saturating_sub(header.vox_offset));
    let raw = read_payload(reader, raw_len, remaining, FORMAT)?;
    let mut data = Vec::with_capacity(voxels);
    header
        .datatype
        .decode_into(&raw, header.big_endian, &mut data);
    drop(raw);
    if header.slope != 1.0 || header.inter != 0.0 {
        let (s, i) = (header.slope as f32, header.inter as f32);
        data.iter_mut().for_each(|v| *v = *v * s + i);
    }
    let dims = header.dims.map(|d| d as usize);
    Ok(Volume {
        data,
        dims,
        affine: header.affine,
    })
}

fn parse_header(buf: &[u8], layout: &Layout, big: bool) -> Result<Header, ImageError> {
    let f = Fields { buf, big };
    let bad = |detail: String| ImageError::header(FORMAT, detail);
    if layout.header_len == NIFTI1_HEADER {
        match &buf[344..348] {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err(ImageError::unsupported(
                    FORMAT,
                    "two-file NIfTI (.hdr/.img) is not supported; use a single .nii",
                ));
            }
            m => return Err(bad(format!("magic is {m:?}, expected \"n+1\\0\""))),
        }
    } else if &buf[4..12] != b"n+2\0\r\n\x1a\n" {
        return Err(bad("NIfTI-2 magic is not \"n+2\\0\\r\\n\\x1a\\n\"".into()));
    }

    let dim = |i: usize| (layout.dim)(&f, layout.dims + i * layout.dim_width);
    let ndim = dim(0);
    if !(1..=7).contains(&ndim) {
        return Err(bad(format!("dim[0] = {ndim} must be between 1 and 7")));
    }
    let mut dims = [1u64; 3];
    for i in 1..=ndim as usize {
        let d = dim(i);
        if d < 1 {
            return Err(bad(format!("dim[{i}] = {d} is not positive")));
        }
        if i <= 3 {
            dims[i - 1] = d as u64;
        } else if d > 1 {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("only 3D volumes are supported, but dim[{i}] = {d}"),
            ));
        }
    }

    // `datatype` is an int16 in both versions.
    let code = f.i16(layout.datatype);
    let datatype = DataType::from_nifti_code(code as i32).ok_or_else(|| {
        ImageError::unsupported(
            FORMAT,
            format!("datatype code {code} is not a supported scalar type"),
        )
    })?;

    let header_len = layout.header_len as u64;
    let vox_offset = (layout.offset)(&f, layout.vox_offset);
    let min_offset = header_len + 4;
    if !vox_offset.is_finite()
        || vox_offset < min_offset as f64
        || vox_offset > (header_len + MAX_EXTENSION_BYTES) as f64
    {
        return Err(bad(format!(
            "vox_offset {vox_offset} must lie between {min_offset} and {} bytes",
            header_len + MAX_EXTENSION_BYTES
        )));
    }

    let slope = (layout.float)(&f, layout.slope);
    let inter = (layout.float)(&f, layout.inter);
    // Per the standard, slope 0 (or a NaN written by nibabel) means "no scaling".
    let (slope, inter) = if slope == 0.0 || !slope.is_finite() {
        (1.0, 0.0)
    } else {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    };

    let pixdim = |i: usize| (layout.float)(&f, layout.pixdim + i * layout.float_width);
    let affine = if (layout.code)(&f, layout.sform_code) > 0 {
        let mut a = IDENTITY;
        for (r, row) in a.iter_mut().take(3).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (layout.float)(&f, layout.srow + (4 * r + c) * layout.float_width);
            }
        }
        a
    } else {
        let spacing = [1, 2, 3].map(|i| {
            let p = pixdim(i).abs();
            if p > 0.0 && p.is_finite() { p } else { 1.0 }
        });
        if (layout.code)(&f, layout.qform_code) > 0 {
            let q = |i: usize| (layout.float)(&f, layout.quatern + i * layout.float_width);
            from_qform(&QForm {
                quat: [q(0), q(1), q(2)],
                qfac: if pixdim(0) < 0.0 { -1.0 } else { 1.0 },
                spacing,
                offset: [q(3), q(4), q(5)],
            })
        } else {
            let mut a = IDENTITY;
            (0..3).for_each(|i| a[i][i] = spacing[i]);
            a
        }
    };
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad("affine (sform/qform) has non-finite values".into()));
    }

    Ok(Header {
        dims,
        datatype,
        vox_offset: vox_offset as u64,
        header_len,
        slope,
        inter,
        affine,
        big_endian: big,
    })
}

fn encode_header(volume: &Volume<f32>, datatype: DataType) -> Vec<u8> {
    let mut h = vec![0u8; NIFTI1_HEADER + 4];
    let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(NIFTI1_HEADER as i32).to_le_bytes());
    let dims = [
        3,
        volume.dims[0],
        volume.dims[1],
        volume.dims[2],
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dims.into_iter().enumerate() {
        put(40 + 2 * i, &(d as i16).to_le_bytes());
    }
    put(70, &datatype.nifti_code().to_le_bytes());
    put(72, &((datatype.size() * 8) as i16).to_le_bytes());
    let q = to_qform(&volume.affine);
    let pixdim = [
        q.qfac,
        q.spacing[0],
        q.spacing[1],
        q.spacing[2],
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (i, p) in pixdim.into_iter().enumerate() {
        put(76 + 4 * i, &(p as f32).to_le_bytes());
    }
    put(108, &((NIFTI1_HEADER + 4) as f32).to_le_bytes());
    put(112, &1f32.to_le_bytes());
    put(116, &0f32.to_le_bytes());
    // xyzt_units: NIFTI_UNITS_MM | NIFTI_UNITS_SEC.
    put(123, &[2 | 8]);
    put(148, b"medlabel-imaging");
    put(252, &1i16.to_le_bytes());
    put(254, &1i16.to_le_bytes());
    let qvals = [
        q.quat[0],
        q.quat[1],
        q.quat[2],
        q.offset[0],
        q.offset[1],
        q.offset[2],
    ];
    for (i, v) in qvals.into_iter().enumerate() {
        put(256 + 4 * i, &(v as f32).to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..4 {
            put(
                280 + 4 * (4 * r + c),
                &(volume.affine[r][c] as f32).to_le_bytes(),
            );
        }
    }
    put(344, b"n+1\0");
    h
}
