//! NRRD volumes with attached data (`.nrrd`, and 3D Slicer's `.seg.nrrd`).
//!
//! Reading accepts `raw` and `gzip` encodings in either byte order, every
//! [`DataType`] spelling, `byte skip` ≥ 0, and `space` RAS, LPS or LAS (long or short
//! names). The voxel-to-world affine is built from `space directions` (columns) and
//! `space origin`, then converted to RAS by negating the rows of the axes the space
//! points the other way (x and y for LPS). Without `space directions`, `spacings`
//! (or 1 mm) give a diagonal RAS affine. Only 3D data reads: a multi-layer
//! `.seg.nrrd` (dimension 4, a `list` axis of overlapping segments) is refused with a
//! clear error; Slicer writes single-layer segmentations as 3D labelmaps, which read.
//! Key/value pairs (`key:=value`, e.g. Slicer's segment metadata) are skipped.
//!
//! Writing produces `NRRD0004`, little-endian, `space: left-posterior-superior` (what
//! ITK and Slicer write themselves), with the directions and origin converted from RAS.
//! Numbers are written with Rust's shortest round-trip formatting, so the affine
//! survives a write/read cycle exactly.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::limits::{header_read_error, read_payload};
use crate::{Affine, DataType, Grid, IDENTITY, ImageError, ReadLimits, Volume};

const FORMAT: &str = "NRRD";
/// Headers longer than this are refused (Slicer's with hundreds of segments stay far
/// below it).
const MAX_HEADER_BYTES: usize = 1 << 20;
const MAX_BYTE_SKIP: u64 = 64 << 20;

/// Reads an attached-data `.nrrd` / `.seg.nrrd` file with the default [`ReadLimits`].
pub fn read_nrrd(path: impl AsRef<Path>) -> Result<Volume<f32>, ImageError> {
    read_nrrd_with_limits(path, &ReadLimits::default())
}

/// [`read_nrrd`] with explicit limits.
pub fn read_nrrd_with_limits(
    path: impl AsRef<Path>,
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    read_nrrd_bytes_with_limits(&bytes, limits)
}

/// Reads an NRRD file image from memory.
pub fn read_nrrd_bytes(bytes: &[u8]) -> Result<Volume<f32>, ImageError> {
    read_nrrd_bytes_with_limits(bytes, &ReadLimits::default())
}

/// [`read_nrrd_bytes`] with explicit limits.
pub fn read_nrrd_bytes_with_limits(
    bytes: &[u8],
    limits: &ReadLimits,
) -> Result<Volume<f32>, ImageError> {
    let (header, data_start) = parse_header(bytes)?;
    let (voxels, raw_len) = limits.budget(header.sizes.map(|s| s as u64), header.datatype)?;
    let body = &bytes[data_start..];
    let mut reader: Box<dyn Read + '_> = if header.gzip {
        Box::new(MultiGzDecoder::new(body))
    } else {
        Box::new(body)
    };
    let skipped = std::io::copy(
        &mut (&mut reader).take(header.byte_skip),
        &mut std::io::sink(),
    )
    .map_err(|e| header_read_error(e, FORMAT, "skipped bytes"))?;
    if skipped < header.byte_skip {
        return Err(ImageError::header(
            FORMAT,
            format!(
                "byte skip {} is beyond the end of the data",
                header.byte_skip
            ),
        ));
    }
    let known_len = (!header.gzip).then(|| (body.len() as u64).saturating_sub(skipped));
    let raw = read_payload(&mut reader, raw_len, known_len, FORMAT)?;
    let mut data = Vec::with_capacity(voxels);
    header
        .datatype
        .decode_into(&raw, header.big_endian, &mut data);
    Ok(Volume {
        data,
        dims: header.sizes,
        affine: header.affine,
    })
}

/// Reads only the header of an NRRD file image: its voxel grid. `prefix` need hold
/// only the file's first bytes, through the blank line that ends the header.
pub fn read_grid_bytes(prefix: &[u8]) -> Result<Grid, ImageError> {
    let (header, _) = parse_header(prefix)?;
    Ok(Grid {
        dims: header.sizes,
        affine: header.affine,
    })
}

/// Writes `volume` as an attached-data NRRD with voxels stored as `datatype`,
/// gzip-encoded when `gzip` (what Slicer writes by default; OHIF asks for raw).
pub fn write_nrrd(
    path: impl AsRef<Path>,
    volume: &Volume<f32>,
    datatype: DataType,
    gzip: bool,
) -> Result<(), ImageError> {
    let path = path.as_ref();
    let bytes = write_nrrd_bytes(volume, datatype, gzip)?;
    std::fs::write(path, bytes).map_err(|e| ImageError::io(path, e))
}

/// Encodes `volume` as an NRRD file image.
pub fn write_nrrd_bytes(
    volume: &Volume<f32>,
    datatype: DataType,
    gzip: bool,
) -> Result<Vec<u8>, ImageError> {
    if volume.dims.contains(&0) || volume.data.len() != volume.dims.iter().product::<usize>() {
        return Err(ImageError::InvalidArgument(format!(
            "volume dims {:?} do not match its {} voxels",
            volume.dims,
            volume.data.len()
        )));
    }
    if volume.affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ImageError::InvalidArgument(
            "affine has non-finite values".into(),
        ));
    }
    let payload = datatype.encode_le(&volume.data)?;
    let a = &volume.affine;
    // RAS → LPS: negate the x and y world coordinates.
    let lps = |r: usize, c: usize| if r < 2 { -a[r][c] } else { a[r][c] };
    let dirs: Vec<String> = (0..3)
        .map(|c| format!("({},{},{})", lps(0, c), lps(1, c), lps(2, c)))
        .collect();
    let [x, y, z] = volume.dims;
    let mut out = format!(
        "NRRD0004\n\
         # written by medlabel-imaging\n\
         type: {}\n\
         dimension: 3\n\
         space: left-posterior-superior\n\
         sizes: {x} {y} {z}\n\
         space directions: {}\n\
         kinds: domain domain domain\n\
         endian: little\n\
         encoding: {}\n\
         space origin: ({},{},{})\n\n",
        datatype.nrrd_name(),
        dirs.join(" "),
        if gzip { "gzip" } else { "raw" },
        lps(0, 3),
        lps(1, 3),
        lps(2, 3),
    )
    .into_bytes();
    if gzip {
        let mut enc = GzEncoder::new(out, Compression::fast());
        enc.write_all(&payload)
            .map_err(|e| ImageError::InvalidArgument(format!("gzip encoding failed: {e}")))?;
        out = enc
            .finish()
            .map_err(|e| ImageError::InvalidArgument(format!("gzip encoding failed: {e}")))?;
    } else {
        out.extend_from_slice(&payload);
    }
    Ok(out)
}

/// Re-encodes an attached-data NRRD file image as `gzip` or `raw`, leaving every other
/// header line and the voxels exactly as they are (MONAI Label's `result_compress`:
/// OHIF reads raw NRRD). Borrows the bytes back, uncopied, when they already are.
pub fn recode_nrrd_bytes(bytes: &[u8], gzip: bool) -> Result<Cow<'_, [u8]>, ImageError> {
    let (header, data_start) = parse_header(bytes)?;
    if header.gzip == gzip {
        return Ok(Cow::Borrowed(bytes));
    }
    let failed =
        |e: std::io::Error| ImageError::InvalidArgument(format!("NRRD re-encoding failed: {e}"));
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes[..data_start].split_inclusive(|&b| b == b'\n') {
        let key = line.split(|&b| b == b':').next().unwrap_or_default();
        if key.eq_ignore_ascii_case(b"encoding") {
            out.extend_from_slice(if gzip {
                b"encoding: gzip\n"
            } else {
                b"encoding: raw\n"
            });
        } else {
            out.extend_from_slice(line);
        }
    }
    let body = &bytes[data_start..];
    if gzip {
        let mut enc = GzEncoder::new(out, Compression::fast());
        enc.write_all(body).map_err(failed)?;
        Ok(Cow::Owned(enc.finish().map_err(failed)?))
    } else {
        MultiGzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(failed)?;
        Ok(Cow::Owned(out))
    }
}

struct Header {
    sizes: [usize; 3],
    datatype: DataType,
    big_endian: bool,
    gzip: bool,
    byte_skip: u64,
    affine: Affine,
}

/// Splits off and parses the text header; returns it and the offset of the data.
fn parse_header(bytes: &[u8]) -> Result<(Header, usize), ImageError> {
    let bad = |detail: String| ImageError::header(FORMAT, detail);
    if !bytes.starts_with(b"NRRD000") {
        return Err(bad("file does not start with the NRRD000x magic".into()));
    }
    let window = &bytes[..bytes.len().min(MAX_HEADER_BYTES)];
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    let data_start = loop {
        let Some(nl) = window[pos..].iter().position(|&b| b == b'\n') else {
            return Err(bad(format!(
                "header is not ended by a blank line within {} bytes",
                window.len()
            )));
        };
        let line = &window[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break pos;
        }
        let line = std::str::from_utf8(line).map_err(|_| bad("header line is not UTF-8".into()))?;
        if line.starts_with('#') || line.starts_with("NRRD000") {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("header line {line:?} has no ':'")));
        };
        if value.starts_with('=') {
            continue; // key/value metadata
        }
        let key = key.trim().to_ascii_lowercase().replace(' ', "");
        fields.push((key, value.trim().to_string()));
    };
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let require = |k: &str| get(k).ok_or_else(|| bad(format!("required field {k:?} is missing")));

    if get("datafile").is_some() {
        return Err(ImageError::unsupported(
            FORMAT,
            "detached data files are not supported",
        ));
    }
    if get("lineskip").is_some_and(|v| v != "0") {
        return Err(ImageError::unsupported(
            FORMAT,
            "line skip is not supported",
        ));
    }
    let type_name = require("type")?;
    let datatype = DataType::from_nrrd_name(type_name).ok_or_else(|| {
        ImageError::unsupported(FORMAT, format!("type {type_name:?} is not supported"))
    })?;
    let dimension: i64 = require("dimension")?
        .parse()
        .map_err(|_| bad("dimension is not an integer".into()))?;
    if dimension != 3 {
        let hint = if dimension == 4 {
            " (a multi-layer .seg.nrrd with overlapping segments; export a 3D labelmap \
             instead, e.g. Slicer's 'Export to labelmap')"
        } else {
            ""
        };
        return Err(ImageError::unsupported(
            FORMAT,
            format!("only 3D volumes are supported, but dimension is {dimension}{hint}"),
        ));
    }
    let sizes = parse_numbers::<i64>(require("sizes")?)
        .filter(|s| s.len() == 3)
        .ok_or_else(|| bad("sizes must be three integers".into()))?;
    if let Some(s) = sizes.iter().find(|&&s| s < 1) {
        return Err(bad(format!("size {s} is not positive")));
    }
    let sizes = [0, 1, 2].map(|i| sizes[i] as usize);

    let gzip = match require("encoding")? {
        "raw" => false,
        "gzip" | "gz" => true,
        other => {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("encoding {other:?} is not supported (use raw or gzip)"),
            ));
        }
    };
    let big_endian = match get("endian") {
        None | Some("little") => false,
        Some("big") => true,
        Some(other) => return Err(bad(format!("endian {other:?} is neither little nor big"))),
    };
    let byte_skip = match get("byteskip") {
        None => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (0..=MAX_BYTE_SKIP as i64).contains(&n) => n as u64,
            Ok(-1) => {
                return Err(ImageError::unsupported(
                    FORMAT,
                    "byte skip -1 is not supported",
                ));
            }
            _ => return Err(bad(format!("byte skip {v:?} is not a sane byte count"))),
        },
    };
    let affine = parse_geometry(&get)?;
    Ok((
        Header {
            sizes,
            datatype,
            big_endian,
            gzip,
            byte_skip,
            affine,
        },
        data_start,
    ))
}

/// Builds the RAS affine from the space fields.
fn parse_geometry<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Result<Affine, ImageError> {
    let bad = |detail: String| ImageError::header(FORMAT, detail);
    let flip = match get("space") {
        None | Some("RAS" | "right-anterior-superior") => [1.0, 1.0, 1.0],
        Some("LPS" | "left-posterior-superior") => [-1.0, -1.0, 1.0],
        Some("LAS" | "left-anterior-superior") => [-1.0, 1.0, 1.0],
        Some(other) => {
            return Err(ImageError::unsupported(
                FORMAT,
                format!("space {other:?} is not supported (use RAS, LPS or LAS)"),
            ));
        }
    };
    let mut a = IDENTITY;
    if let Some(dirs) = get("spacedirections") {
        let vectors = parse_vectors(dirs)
            .filter(|v| v.len() == 3)
            .ok_or_else(|| bad(format!("space directions {dirs:?} are not three 3-vectors")))?;
        for (c, v) in vectors.iter().enumerate() {
            (0..3).for_each(|r| a[r][c] = v[r] * flip[r]);
        }
    } else if let Some(sp) = get("spacings") {
        let sp = parse_numbers::<f64>(sp)
            .filter(|s| s.len() == 3)
            .ok_or_else(|| bad(format!("spacings {sp:?} are not three numbers")))?;
        (0..3).for_each(|i| {
            a[i][i] = if sp[i].is_finite() && sp[i] != 0.0 {
                sp[i]
            } else {
                1.0
            }
        });
    }
    if let Some(origin) = get("spaceorigin") {
        let o = parse_vectors(origin)
            .filter(|v| v.len() == 1)
            .ok_or_else(|| bad(format!("space origin {origin:?} is not one 3-vector")))?;
        (0..3).for_each(|r| a[r][3] = o[0][r] * flip[r]);
    }
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad(
            "space directions or origin contain non-finite values".into()
        ));
    }
    Ok(a)
}

fn parse_numbers<T: std::str::FromStr>(s: &str) -> Option<Vec<T>> {
    s.split_whitespace().map(|t| t.parse().ok()).collect()
}

/// Parses `(a,b,c) (d,e,f)`; `none` entries (non-spatial axes) make it fail, which
/// for a 3D volume is what we want.
fn parse_vectors(s: &str) -> Option<Vec<[f64; 3]>> {
    s.split(')')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            let inner = t.strip_prefix('(')?;
            let v: Vec<f64> = inner
                .split(',')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<_>>()?;
            <[f64; 3]>::try_from(v).ok()
        })
        .collect()
}
