//! Part 10 framing and a bounds-checked walk over the data set.
//!
//! dicom-rs trusts element lengths: it reserves and zero-fills a buffer of the declared
//! length before reading, so a 200-byte file declaring a 4 GiB element costs 4 GiB.
//! Before anything reaches dicom-rs, [`walk`] checks that every declared length (in
//! nested sequences and items too) fits inside its container, and records where the
//! top-level PixelData lies. dicom-rs then parses only the bytes before PixelData (the
//! header); pixel data is used in place, never copied or parsed element by element.
//! Deflated data sets are inflated here, capped by [`ReadLimits`], for the same reason.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;

use dicom_core::dictionary::{DataDictionary, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags, uids};
use dicom_encoding::{Codec, TransferSyntax, TransferSyntaxIndex};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use medlabel_imaging::ReadLimits;

use crate::DicomError;
use crate::error::instance_label;

const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
const UNDEFINED: u32 = u32::MAX;
/// Real data sets nest a handful of levels (SR content trees a dozen); the cap keeps a
/// crafted file from overflowing the stack, here or in dicom-rs.
const MAX_DEPTH: usize = 64;

/// Where the top-level PixelData value lies in the data set bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PixelLocation {
    /// Uncompressed pixel data.
    Native(Range<usize>),
    /// Encapsulated (compressed) pixel data: the Basic Offset Table and the fragments.
    Encapsulated {
        offset_table: Vec<u32>,
        fragments: Vec<Range<usize>>,
    },
}

/// One parsed instance: its header as a dicom-rs object and its pixel data in place.
pub(crate) struct Instance<'a> {
    /// How errors name this instance.
    pub label: String,
    pub ts: &'static TransferSyntax,
    pub header: InMemDicomObject,
    data: Cow<'a, [u8]>,
    pixels: Option<PixelLocation>,
}

impl Instance<'_> {
    /// The pixel data, or [`DicomError::MissingPixelData`].
    pub fn pixels(&self) -> Result<PixelData<'_>, DicomError> {
        match &self.pixels {
            Some(PixelLocation::Native(range)) => Ok(PixelData::Native(&self.data[range.clone()])),
            Some(PixelLocation::Encapsulated {
                offset_table,
                fragments,
            }) => Ok(PixelData::Encapsulated {
                offset_table,
                fragments: fragments.iter().map(|r| &self.data[r.clone()]).collect(),
            }),
            None => Err(DicomError::MissingPixelData {
                instance: self.label.clone(),
            }),
        }
    }
}

/// Pixel data borrowed from an [`Instance`].
pub(crate) enum PixelData<'a> {
    Native(&'a [u8]),
    Encapsulated {
        offset_table: &'a [u32],
        fragments: Vec<&'a [u8]>,
    },
}

/// Parses a Part 10 file (with or without the 128-byte preamble). `index` names the
/// instance in errors until its SOPInstanceUID is known.
pub(crate) fn parse<'a>(
    bytes: &'a [u8],
    index: usize,
    limits: &ReadLimits,
) -> Result<Instance<'a>, DicomError> {
    let label = instance_label(index, None);
    let malformed = |detail: String| DicomError::Malformed {
        instance: label.clone(),
        detail,
    };
    let start = if bytes.get(128..132) == Some(b"DICM") {
        132
    } else if bytes.starts_with(b"DICM") {
        4
    } else {
        return Err(DicomError::NotDicom {
            instance: label,
            detail: "no DICM magic at offset 128 or 0".into(),
        });
    };

    let meta_end = meta_group_end(bytes, start).map_err(malformed)?;
    let meta = FileMetaTable::from_reader(b"DICM".chain(&bytes[start..meta_end]))
        .map_err(|e| malformed(format!("file meta group: {e}")))?;
    let ts = decodable_transfer_syntax(meta.transfer_syntax(), &label)?;

    let data: Cow<'a, [u8]> = if ts.uid() == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        Cow::Owned(inflate(&bytes[meta_end..], limits, &label)?)
    } else {
        Cow::Borrowed(&bytes[meta_end..])
    };
    let explicit = ts.uid() != uids::IMPLICIT_VR_LITTLE_ENDIAN;
    let (header_end, pixels) = walk(&data, explicit).map_err(malformed)?;
    let encapsulated = matches!(ts.codec(), Codec::EncapsulatedPixelData(..));
    match &pixels {
        Some(PixelLocation::Native(_)) if encapsulated => {
            return Err(malformed(format!(
                "native PixelData in a file of compressed transfer syntax {}",
                ts.uid()
            )));
        }
        Some(PixelLocation::Encapsulated { .. }) if !encapsulated => {
            return Err(malformed(format!(
                "encapsulated PixelData in a file of uncompressed transfer syntax {}",
                ts.uid()
            )));
        }
        _ => {}
    }

    // The dataset is explicit VR little endian once inflated.
    let header_ts = if ts.uid() == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        registry_entry(uids::EXPLICIT_VR_LITTLE_ENDIAN)
    } else {
        ts
    };
    let header = InMemDicomObject::read_dataset_with_ts(&data[..header_end], header_ts)
        .map_err(|e| malformed(format!("data set: {e}")))?;
    let sop = header
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string());
    Ok(Instance {
        label: instance_label(index, sop.as_deref()),
        ts,
        header,
        data,
        pixels,
    })
}

fn registry_entry(uid: &str) -> &'static TransferSyntax {
    TransferSyntaxRegistry
        .get(uid)
        .expect("the registry always has the native transfer syntaxes")
}

/// The transfer syntax if this crate can read its data set and pixel data, else
/// [`DicomError::UnsupportedTransferSyntax`].
fn decodable_transfer_syntax(
    uid: &str,
    label: &str,
) -> Result<&'static TransferSyntax, DicomError> {
    let unsupported = |name: &str| DicomError::UnsupportedTransferSyntax {
        instance: label.to_string(),
        uid: uid.to_string(),
        name: name.to_string(),
    };
    let ts = TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| unsupported("unknown"))?;
    let supported = match ts.codec() {
        Codec::None => ts.endianness() == dicom_encoding::Endianness::Little,
        Codec::EncapsulatedPixelData(reader, _) => reader.is_some(),
        Codec::Dataset(_) => uid == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    };
    if supported {
        Ok(ts)
    } else {
        Err(unsupported(ts.name()))
    }
}

/// Inflates a deflated data set (raw deflate, RFC 1951), stopping one byte past the
/// voxel limit so that a deflate bomb costs at most the limit.
fn inflate(deflated: &[u8], limits: &ReadLimits, label: &str) -> Result<Vec<u8>, DicomError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(limits.max_voxel_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DicomError::Malformed {
            instance: label.to_string(),
            detail: format!("deflated data set: {e}"),
        })?;
    if out.len() as u64 > limits.max_voxel_bytes {
        return Err(DicomError::TooLarge {
            needed: out.len() as u64,
            limit: limits.max_voxel_bytes,
        });
    }
    Ok(out)
}

/// End of the file meta group (group 0002, always explicit VR little endian) that
/// starts at `pos`.
fn meta_group_end(bytes: &[u8], start: usize) -> Result<usize, String> {
    let mut pos = start;
    while let Some(group) = read_u16(bytes, pos)
        && group == 0x0002
    {
        let (header, len) = explicit_header(bytes, pos, bytes.len())?;
        if len == UNDEFINED {
            return Err("file meta element with undefined length".into());
        }
        pos = bounded(pos + header, len, bytes.len(), tag_at(bytes, pos))?;
    }
    if pos == start {
        return Err("no file meta group".into());
    }
    Ok(pos)
}

/// Walks the data set `data` and returns where the header ends (the offset of the
/// top-level PixelData element, or the end) and where the pixel data lies.
pub(crate) fn walk(data: &[u8], explicit: bool) -> Result<(usize, Option<PixelLocation>), String> {
    let mut walker = Walker {
        data,
        pixels: None,
        pixel_element: data.len(),
    };
    walker.dataset(0, data.len(), false, explicit, 0)?;
    Ok((walker.pixel_element, walker.pixels))
}

/// Position after encapsulated pixel data, its Basic Offset Table and fragments.
type Fragments = (usize, Vec<u32>, Vec<Range<usize>>);

struct Walker<'a> {
    data: &'a [u8],
    pixels: Option<PixelLocation>,
    pixel_element: usize,
}

impl Walker<'_> {
    /// Walks elements from `pos` to `end`; an undefined-length item (`delimited`) ends
    /// at its Item Delimitation instead. Returns the position after the data set.
    fn dataset(
        &mut self,
        mut pos: usize,
        end: usize,
        delimited: bool,
        explicit: bool,
        depth: usize,
    ) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        while pos < end {
            let tag = tag_at(self.data, pos).ok_or_else(|| truncated(pos))?;
            if tag == ITEM_DELIMITER && delimited {
                return if pos + 8 <= end {
                    Ok(pos + 8)
                } else {
                    Err(truncated(pos))
                };
            }
            if tag.group() == 0xFFFE {
                return Err(format!("unexpected {tag} at offset {pos}"));
            }
            let (header, len, is_sequence, vr_un) = if explicit {
                let (header, len) = explicit_header(self.data, pos, end)?;
                let vr = &self.data[pos + 4..pos + 6];
                (header, len, vr == b"SQ", vr == b"UN")
            } else {
                let len = read_u32(self.data, pos + 4).ok_or_else(|| truncated(pos))?;
                (8, len, implicit_is_sequence(tag), false)
            };
            let value = pos + header;
            if tag == tags::PIXEL_DATA && len == UNDEFINED {
                let (next, offset_table, fragments) = self.fragments(value, end)?;
                if depth == 0 {
                    self.pixel_element = pos;
                    self.pixels = Some(PixelLocation::Encapsulated {
                        offset_table,
                        fragments,
                    });
                }
                pos = next;
            } else if len == UNDEFINED {
                // A UN element of undefined length is a sequence encoded in implicit VR.
                let inner_explicit = explicit && !vr_un;
                pos = self.items(value, end, true, inner_explicit, depth + 1)?;
            } else {
                let next = bounded(value, len, end, Some(tag))?;
                if is_sequence {
                    self.items(value, next, false, explicit, depth + 1)?;
                } else if tag == tags::PIXEL_DATA && depth == 0 {
                    self.pixel_element = pos;
                    self.pixels = Some(PixelLocation::Native(value..next));
                }
                pos = next;
            }
        }
        if delimited {
            return Err(format!(
                "item without Item Delimitation before offset {end}"
            ));
        }
        Ok(end)
    }

    /// Walks a sequence's items: up to `end` for a defined length, or up to the
    /// Sequence Delimitation (`delimited`). Returns the position after the sequence.
    fn items(
        &mut self,
        mut pos: usize,
        end: usize,
        delimited: bool,
        explicit: bool,
        depth: usize,
    ) -> Result<usize, String> {
        loop {
            if !delimited && pos == end {
                return Ok(end);
            }
            let tag = tag_at(self.data, pos).ok_or_else(|| truncated(pos))?;
            let len = read_u32(self.data, pos + 4).ok_or_else(|| truncated(pos))?;
            if pos + 8 > end {
                return Err(truncated(pos));
            }
            match tag {
                SEQUENCE_DELIMITER if delimited => return Ok(pos + 8),
                ITEM if len == UNDEFINED => {
                    pos = self.dataset(pos + 8, end, true, explicit, depth)?;
                }
                ITEM => {
                    let next = bounded(pos + 8, len, end, Some(tag))?;
                    self.dataset(pos + 8, next, false, explicit, depth)?;
                    pos = next;
                }
                _ => return Err(format!("expected an item, found {tag} at offset {pos}")),
            }
        }
    }

    /// Reads encapsulated pixel data: the Basic Offset Table item, fragment items, the
    /// Sequence Delimitation. Returns the position after it, the table and fragments.
    fn fragments(&self, mut pos: usize, end: usize) -> Result<Fragments, String> {
        let mut offset_table = None;
        let mut fragments = Vec::new();
        loop {
            let tag = tag_at(self.data, pos).ok_or_else(|| truncated(pos))?;
            let len = read_u32(self.data, pos + 4).ok_or_else(|| truncated(pos))?;
            if pos + 8 > end {
                return Err(truncated(pos));
            }
            match tag {
                SEQUENCE_DELIMITER => {
                    return Ok((pos + 8, offset_table.unwrap_or_default(), fragments));
                }
                ITEM if len != UNDEFINED => {
                    let next = bounded(pos + 8, len, end, Some(tag))?;
                    let value = pos + 8..next;
                    if offset_table.is_none() {
                        let table = &self.data[value];
                        if !table.len().is_multiple_of(4) {
                            return Err("Basic Offset Table length is not a multiple of 4".into());
                        }
                        offset_table = Some(
                            table
                                .chunks_exact(4)
                                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .collect(),
                        );
                    } else {
                        fragments.push(value);
                    }
                    pos = next;
                }
                _ => {
                    return Err(format!(
                        "expected a pixel data fragment, found {tag} at offset {pos}"
                    ));
                }
            }
        }
    }
}

/// In implicit VR only the dictionary tells a sequence; private tags are opaque.
fn implicit_is_sequence(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| e.vr == VirtualVr::Exact(VR::SQ))
}

/// Header length and value length of the explicit VR element at `pos`.
fn explicit_header(data: &[u8], pos: usize, end: usize) -> Result<(usize, u32), String> {
    if pos + 8 > end {
        return Err(truncated(pos));
    }
    let vr = &data[pos + 4..pos + 6];
    // dicom-rs reads any other VR as UN, with a 32-bit length, so an unknown VR would
    // make it see a length this walk never checked: refused instead.
    const LONG: [&[u8]; 13] = [
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
    ];
    const SHORT: [&[u8]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    if LONG.contains(&vr) {
        if pos + 12 > end {
            return Err(truncated(pos));
        }
        Ok((12, read_u32(data, pos + 8).ok_or_else(|| truncated(pos))?))
    } else if SHORT.contains(&vr) {
        Ok((
            8,
            u32::from(read_u16(data, pos + 6).ok_or_else(|| truncated(pos))?),
        ))
    } else {
        Err(format!(
            "element {} at offset {pos} has no valid VR",
            tag_at(data, pos).map_or_else(|| "?".into(), |t| t.to_string())
        ))
    }
}

/// `value + len` if it stays within `end`, else a message naming the element.
fn bounded(value: usize, len: u32, end: usize, tag: Option<Tag>) -> Result<usize, String> {
    match value.checked_add(len as usize) {
        Some(next) if next <= end => Ok(next),
        _ => Err(format!(
            "element {} at offset {value} declares {len} bytes but its container has {} left",
            tag.map_or_else(|| "?".into(), |t| t.to_string()),
            end.saturating_sub(value)
        )),
    }
}

fn truncated(pos: usize) -> String {
    format!("data ends inside the element header at offset {pos}")
}

fn read_u16(data: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(pos..pos + 2)?.try_into().ok()?))
}

fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?))
}

fn tag_at(data: &[u8], pos: usize) -> Option<Tag> {
    Some(Tag(read_u16(data, pos)?, read_u16(data, pos + 2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit VR LE element with a short (16-bit) length.
    fn short(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = [group.to_le_bytes(), elem.to_le_bytes()].concat();
        out.extend_from_slice(vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// An explicit VR LE element with a long (32-bit) length field set to `len`.
    fn long(group: u16, elem: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut out = [group.to_le_bytes(), elem.to_le_bytes()].concat();
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn item(len: u32, value: &[u8]) -> Vec<u8> {
        [&[0xFE, 0xFF, 0x00, 0xE0][..], &len.to_le_bytes(), value].concat()
    }

    const SEQ_END: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];
    const ITEM_END: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];

    #[test]
    fn finds_native_pixel_data_after_nested_sequences() {
        let inner = short(0x0020, 0x0032, b"DS", b"1\\2\\3 ");
        // One defined-length item and one undefined-length item, in an
        // undefined-length sequence.
        let seq_value = [
            item(inner.len() as u32, &inner),
            item(UNDEFINED, &[inner.clone(), ITEM_END.to_vec()].concat()),
            SEQ_END.to_vec(),
        ]
        .concat();
        let data = [
            short(0x0008, 0x0060, b"CS", b"CT"),
            long(0x5200, 0x9229, b"SQ", UNDEFINED, &seq_value),
            long(0x7FE0, 0x0010, b"OW", 4, &[1, 2, 3, 4]),
        ]
        .concat();
        let (header_end, pixels) = walk(&data, true).unwrap();
        assert_eq!(header_end, data.len() - 16);
        assert_eq!(
            pixels,
            Some(PixelLocation::Native(data.len() - 4..data.len()))
        );
    }

    #[test]
    fn finds_fragments_and_offset_table() {
        let fragments = [
            item(8, &[0, 0, 0, 0, 10, 0, 0, 0]),
            item(2, &[0xAA, 0xBB]),
            item(4, &[1, 2, 3, 4]),
            SEQ_END.to_vec(),
        ]
        .concat();
        let data = [
            short(0x0028, 0x0010, b"US", &[2, 0]),
            long(0x7FE0, 0x0010, b"OB", UNDEFINED, &fragments),
        ]
        .concat();
        let (header_end, pixels) = walk(&data, true).unwrap();
        assert_eq!(header_end, 10);
        let Some(PixelLocation::Encapsulated {
            offset_table,
            fragments,
        }) = pixels
        else {
            panic!("{pixels:?}")
        };
        assert_eq!(offset_table, vec![0, 10]);
        assert_eq!(fragments.len(), 2);
        assert_eq!(&data[fragments[0].clone()], &[0xAA, 0xBB]);
        assert_eq!(&data[fragments[1].clone()], &[1, 2, 3, 4]);
    }

    #[test]
    fn rejects_lengths_beyond_the_container() {
        // A top-level element claiming 4 GiB: refused without allocating.
        let data = long(0x0010, 0x4000, b"UT", 0xFFFF_FFF0, b"abc");
        let err = walk(&data, true).unwrap_err();
        assert!(err.contains("declares 4294967280 bytes"), "{err}");
        // An item whose element runs past the item even though the file is long enough.
        let inner = short(0x0020, 0x0032, b"DS", b"1\\2\\3 ");
        let mut lying = inner.clone();
        lying[6] = 200;
        let seq = long(
            0x5200,
            0x9229,
            b"SQ",
            8 + inner.len() as u32,
            &item(inner.len() as u32, &lying),
        );
        let data = [seq, vec![0u8; 400]].concat();
        let err = walk(&data, true).unwrap_err();
        assert!(err.contains("(0020,0032)"), "{err}");
        // Implicit VR: a sequence known from the dictionary is walked into as well.
        let mut implicit = [0x20u8, 0x00, 0x13, 0x91].to_vec();
        implicit.extend_from_slice(&16u32.to_le_bytes());
        implicit.extend_from_slice(&item(8, &[0x20, 0, 0x32, 0, 0xFF, 0xFF, 0, 0]));
        implicit.extend_from_slice(&[0u8; 8]);
        assert!(walk(&implicit, false).unwrap_err().contains("declares"));
    }

    #[test]
    fn rejects_truncation_missing_delimiters_and_deep_nesting() {
        let data = short(0x0008, 0x0060, b"CS", b"CT");
        assert!(walk(&data[..data.len() - 1], true).is_err());
        assert!(walk(&data[..5], true).is_err());
        let open = long(0x5200, 0x9229, b"SQ", UNDEFINED, &item(UNDEFINED, &data));
        assert!(walk(&open, true).unwrap_err().contains("Item Delimitation"));
        for vr in [b"cs", b"QQ"] {
            let bad_vr = [0x08, 0x00, 0x60, 0x00, vr[0], vr[1], 2, 0, b'C', b'T'];
            assert!(walk(&bad_vr, true).unwrap_err().contains("no valid VR"));
        }
        let mut nested = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            nested = long(
                0x5200,
                0x9229,
                b"SQ",
                UNDEFINED,
                &[
                    item(UNDEFINED, &[nested, ITEM_END.to_vec()].concat()),
                    SEQ_END.to_vec(),
                ]
                .concat(),
            );
        }
        assert!(walk(&nested, true).unwrap_err().contains("nested deeper"));
    }
}
