//! Stored pixel values to `f32`: bit layout, sign, rescale, and compressed frames.

use std::borrow::Cow;

use dicom_dictionary_std::tags;
use dicom_encoding::adapters::{PixelDataObject, RawPixelData};
use dicom_encoding::{Codec, TransferSyntax};

use crate::DicomError;
use crate::attrs::Attrs;
use crate::parse::PixelData;

/// How stored values are laid out (Image Pixel module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PixelFormat {
    pub rows: u16,
    pub cols: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub signed: bool,
}

impl PixelFormat {
    /// Reads and checks the Image Pixel attributes: one sample, MONOCHROME1/2, 8, 16
    /// or 32 bits allocated, BitsStored and HighBit inside them.
    pub fn from_header(a: &Attrs<'_>) -> Result<Self, DicomError> {
        let unsupported = |detail: String| DicomError::Unsupported {
            instance: a.label.to_string(),
            detail,
        };
        let rows = a.required_u32(tags::ROWS, "Rows")?;
        let cols = a.required_u32(tags::COLUMNS, "Columns")?;
        if rows == 0 || cols == 0 || rows > u32::from(u16::MAX) || cols > u32::from(u16::MAX) {
            return Err(DicomError::InvalidAttribute {
                instance: a.label.to_string(),
                attribute: "Rows/Columns",
                detail: format!("{rows}×{cols} is not a valid image size"),
            });
        }
        let samples = a.optional_u32(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
        if samples.unwrap_or(1) != 1 {
            return Err(unsupported(format!(
                "SamplesPerPixel {} (colour); only single-sample images are volumes",
                samples.unwrap_or(1)
            )));
        }
        let photometric = a.string(tags::PHOTOMETRIC_INTERPRETATION);
        if !matches!(photometric.as_str(), "MONOCHROME1" | "MONOCHROME2" | "") {
            return Err(unsupported(format!(
                "PhotometricInterpretation {photometric}; only MONOCHROME1/2 are volumes"
            )));
        }
        let bits_allocated = a.required_u32(tags::BITS_ALLOCATED, "BitsAllocated")?;
        if !matches!(bits_allocated, 8 | 16 | 32) {
            return Err(unsupported(format!(
                "BitsAllocated {bits_allocated}; only 8, 16 and 32 are supported"
            )));
        }
        let bits_stored = a
            .optional_u32(tags::BITS_STORED, "BitsStored")?
            .unwrap_or(bits_allocated);
        let high_bit = a
            .optional_u32(tags::HIGH_BIT, "HighBit")?
            .unwrap_or(bits_stored.saturating_sub(1));
        if bits_stored == 0 || high_bit >= bits_allocated || high_bit + 1 < bits_stored {
            return Err(DicomError::InvalidAttribute {
                instance: a.label.to_string(),
                attribute: "BitsStored/HighBit",
                detail: format!(
                    "{bits_stored}/{high_bit} do not fit in BitsAllocated {bits_allocated}"
                ),
            });
        }
        let signed = match a.optional_u32(tags::PIXEL_REPRESENTATION, "PixelRepresentation")? {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                return Err(DicomError::InvalidAttribute {
                    instance: a.label.to_string(),
                    attribute: "PixelRepresentation",
                    detail: format!("{other} is neither 0 nor 1"),
                });
            }
        };
        // Checked above to fit in u16.
        Ok(Self {
            rows: rows as u16,
            cols: cols as u16,
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            high_bit: high_bit as u16,
            signed,
        })
    }

    pub fn pixels_per_frame(&self) -> usize {
        usize::from(self.rows) * usize::from(self.cols)
    }

    pub fn bytes_per_frame(&self) -> usize {
        self.pixels_per_frame() * usize::from(self.bits_allocated / 8)
    }
}

/// Converts one frame of native little-endian stored values into `out`, applying
/// the bit mask, sign and `value · slope + intercept` (in f64, then rounded once).
///
/// `raw` must hold exactly `out.len()` samples.
pub(crate) fn convert_frame(
    raw: &[u8],
    fmt: &PixelFormat,
    slope: f64,
    intercept: f64,
    out: &mut [f32],
) {
    let shift = u32::from(fmt.high_bit + 1 - fmt.bits_stored);
    let unused = 32 - u32::from(fmt.bits_stored);
    let signed = fmt.signed;
    // Moves the stored bits to the top of a u32, then back down with (arithmetic or
    // logical) shift: masks the unused high bits and sign-extends in one step.
    let value = move |sample: u32| -> f64 {
        let top = (sample >> shift) << unused;
        if signed {
            f64::from((top as i32) >> unused)
        } else {
            f64::from(top >> unused)
        }
    };
    let rescale = |v: f64| (v * slope + intercept) as f32;
    match fmt.bits_allocated {
        8 => {
            for (o, &b) in out.iter_mut().zip(raw) {
                *o = rescale(value(u32::from(b)));
            }
        }
        16 if fmt.bits_stored == 16 && fmt.signed => {
            // The common CT case, kept free of shifts so that it vectorises.
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = rescale(f64::from(i16::from_le_bytes([b[0], b[1]])));
            }
        }
        16 => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = rescale(value(u32::from(u16::from_le_bytes([b[0], b[1]]))));
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = rescale(value(u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
    }
}

/// Decodes frame `frame` (0-based) of encapsulated pixel data into `dst` (replacing
/// its contents) with the transfer syntax's pure-Rust codec.
pub(crate) fn decode_frame(
    ts: &TransferSyntax,
    pixels: &PixelData<'_>,
    fmt: &PixelFormat,
    frames: u32,
    frame: u32,
    label: &str,
    dst: &mut Vec<u8>,
) -> Result<(), DicomError> {
    let PixelData::Encapsulated {
        offset_table,
        fragments,
    } = pixels
    else {
        unreachable!("decode_frame is only called for encapsulated pixel data")
    };
    let Codec::EncapsulatedPixelData(Some(reader), _) = ts.codec() else {
        unreachable!("parse accepts encapsulated transfer syntaxes only with a decoder")
    };
    let decode_error = |detail: String| DicomError::Decode {
        instance: label.to_string(),
        frame: frame + 1,
        detail,
    };
    // The codecs are shown this frame's fragments only: given all of them, the JPEG
    // codec copies every fragment of the instance for each frame it decodes.
    let fragments =
        frame_fragments(fragments, offset_table, frames, frame).map_err(decode_error)?;
    let source = Encapsulated {
        ts_uid: ts.uid(),
        fmt,
        fragments: &fragments,
    };
    dst.clear();
    reader
        .decode_frame(&source, 0, dst)
        .map_err(|e| decode_error(e.to_string()))?;
    if dst.len() != fmt.bytes_per_frame() {
        return Err(DicomError::Decode {
            instance: label.to_string(),
            frame: frame + 1,
            detail: format!(
                "decoded {} bytes, the header needs {}",
                dst.len(),
                fmt.bytes_per_frame()
            ),
        });
    }
    Ok(())
}

/// The fragments of frame `frame`: one fragment per frame, all of them for a single
/// frame, or else those the Basic Offset Table assigns to the frame (offsets count
/// from the first fragment's item tag; each item adds an 8-byte header).
fn frame_fragments<'a>(
    fragments: &[&'a [u8]],
    offset_table: &[u32],
    frames: u32,
    frame: u32,
) -> Result<Vec<&'a [u8]>, String> {
    if fragments.len() == frames as usize {
        return Ok(vec![fragments[frame as usize]]);
    }
    if frames == 1 {
        return Ok(fragments.to_vec());
    }
    if offset_table.len() != frames as usize {
        return Err(format!(
            "{} fragments for {frames} frames and a Basic Offset Table of {} entries: \
             cannot tell which fragments belong to the frame",
            fragments.len(),
            offset_table.len()
        ));
    }
    let start = u64::from(offset_table[frame as usize]);
    let end = offset_table
        .get(frame as usize + 1)
        .map_or(u64::MAX, |&o| u64::from(o));
    let mut offset = 0u64;
    let mut selected = Vec::new();
    for fragment in fragments {
        if (start..end).contains(&offset) {
            selected.push(*fragment);
        }
        offset += fragment.len() as u64 + 8;
    }
    if selected.is_empty() {
        return Err(format!(
            "the Basic Offset Table points past the fragments ({start})"
        ));
    }
    Ok(selected)
}

/// What the dicom-rs codecs need to see of one frame.
struct Encapsulated<'a> {
    ts_uid: &'a str,
    fmt: &'a PixelFormat,
    fragments: &'a [&'a [u8]],
}

impl PixelDataObject for Encapsulated<'_> {
    fn transfer_syntax_uid(&self) -> &str {
        self.ts_uid
    }
    fn rows(&self) -> Option<u16> {
        Some(self.fmt.rows)
    }
    fn cols(&self) -> Option<u16> {
        Some(self.fmt.cols)
    }
    fn samples_per_pixel(&self) -> Option<u16> {
        Some(1)
    }
    fn bits_allocated(&self) -> Option<u16> {
        Some(self.fmt.bits_allocated)
    }
    fn bits_stored(&self) -> Option<u16> {
        Some(self.fmt.bits_stored)
    }
    fn photometric_interpretation(&self) -> Option<&str> {
        Some("MONOCHROME2")
    }
    fn number_of_frames(&self) -> Option<u32> {
        Some(1)
    }
    fn number_of_fragments(&self) -> Option<u32> {
        u32::try_from(self.fragments.len()).ok()
    }
    fn fragment(&self, fragment: usize) -> Option<Cow<'_, [u8]>> {
        self.fragments.get(fragment).map(|f| Cow::Borrowed(*f))
    }
    fn offset_table(&self) -> Option<Cow<'_, [u32]>> {
        Some(Cow::Borrowed(&[]))
    }
    fn raw_pixel_data(&self) -> Option<RawPixelData> {
        Some(RawPixelData {
            fragments: self.fragments.iter().map(|f| f.to_vec()).collect(),
            offset_table: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(bits_allocated: u16, bits_stored: u16, high_bit: u16, signed: bool) -> PixelFormat {
        PixelFormat {
            rows: 1,
            cols: 2,
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
        }
    }

    fn convert(raw: &[u8], f: PixelFormat, slope: f64, intercept: f64) -> Vec<f32> {
        let mut out = vec![0.0; raw.len() / usize::from(f.bits_allocated / 8)];
        convert_frame(raw, &f, slope, intercept, &mut out);
        out
    }

    #[test]
    fn sixteen_bit_signed_and_unsigned_with_rescale() {
        let raw = [0x18, 0xFC, 0xFF, 0x7F]; // -1000, 32767
        assert_eq!(
            convert(&raw, fmt(16, 16, 15, true), 1.0, 0.0),
            [-1000.0, 32767.0]
        );
        assert_eq!(
            convert(&raw, fmt(16, 16, 15, false), 1.0, 0.0),
            [64536.0, 32767.0]
        );
        assert_eq!(
            convert(&raw, fmt(16, 16, 15, true), 0.5, -1024.0),
            [-1524.0, 15359.5]
        );
    }

    #[test]
    fn bits_stored_masks_high_bits_and_sign_extends() {
        // 12 stored bits with garbage (an overlay) in the top 4 bits.
        let raw = [0xFF, 0xFF, 0x01, 0xF8]; // 0xFFFF, 0xF801
        // Unsigned: 0xFFF, 0x801.
        assert_eq!(
            convert(&raw, fmt(16, 12, 11, false), 1.0, 0.0),
            [4095.0, 2049.0]
        );
        // Signed 12-bit: 0xFFF = -1, 0x801 = -2047.
        assert_eq!(
            convert(&raw, fmt(16, 12, 11, true), 1.0, 0.0),
            [-1.0, -2047.0]
        );
        // HighBit 15 with 12 stored bits: the low 4 bits are unused.
        let shifted = [0x10, 0x00, 0xF0, 0xFF]; // 0x0010 -> 1, 0xFFF0 -> 0xFFF
        assert_eq!(
            convert(&shifted, fmt(16, 12, 15, false), 1.0, 0.0),
            [1.0, 4095.0]
        );
    }

    #[test]
    fn fragments_are_split_into_frames() {
        let (a, b, c): (&[u8], &[u8], &[u8]) = (&[1, 2], &[3, 4, 5, 6], &[7]);
        // One fragment per frame; one frame in several fragments.
        assert_eq!(frame_fragments(&[a, b], &[], 2, 1).unwrap(), [b]);
        assert_eq!(frame_fragments(&[a, b, c], &[], 1, 0).unwrap(), [a, b, c]);
        // Frame 0 is a, b (10 + 12 bytes with item headers), frame 1 is c.
        assert_eq!(frame_fragments(&[a, b, c], &[0, 22], 2, 0).unwrap(), [a, b]);
        assert_eq!(frame_fragments(&[a, b, c], &[0, 22], 2, 1).unwrap(), [c]);
        assert!(frame_fragments(&[a, b, c], &[], 2, 1).is_err());
        assert!(frame_fragments(&[a, b, c], &[0, 99], 2, 1).is_err());
    }

    #[test]
    fn eight_and_thirty_two_bit() {
        assert_eq!(
            convert(&[0x80, 0x7F], fmt(8, 8, 7, true), 1.0, 0.0),
            [-128.0, 127.0]
        );
        assert_eq!(
            convert(&[0x80, 0x7F], fmt(8, 8, 7, false), 2.0, 1.0),
            [257.0, 255.0]
        );
        let raw = [(-70000i32).to_le_bytes(), 70000i32.to_le_bytes()].concat();
        assert_eq!(
            convert(&raw, fmt(32, 32, 31, true), 1.0, 0.0),
            [-70000.0, 70000.0]
        );
        let raw = [u32::MAX.to_le_bytes(), 5u32.to_le_bytes()].concat();
        assert_eq!(
            convert(&raw, fmt(32, 32, 31, false), 1.0, 0.0),
            [4294967296.0, 5.0]
        );
    }
}
