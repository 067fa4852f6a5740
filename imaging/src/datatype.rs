//! On-disk voxel datatypes and their conversion to and from `f32`.
//!
//! Every reader decodes to `f32` (exact for all 8- and 16-bit integers and for `f32`;
//! 32- and 64-bit integers and `f64` above 2^24 lose precision, which no label map or
//! CT intensity reaches). Writers round to the nearest integer for integer types and
//! refuse values that do not fit rather than wrapping or clamping them silently.

use std::fmt;
use std::str::FromStr;

use crate::ImageError;

/// A scalar voxel type as stored in a NIfTI or NRRD file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl DataType {
    /// Every supported type, for parsers and tests.
    pub const ALL: [DataType; 10] = [
        Self::U8,
        Self::I8,
        Self::I16,
        Self::U16,
        Self::I32,
        Self::U32,
        Self::I64,
        Self::U64,
        Self::F32,
        Self::F64,
    ];

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// The numpy-style name (`uint8`, `int16`, `float32`, ...), as MONAI Label's
    /// `result_dtype` parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }

    /// The NIfTI `datatype` header code.
    pub fn nifti_code(self) -> i16 {
        match self {
            Self::U8 => 2,
            Self::I16 => 4,
            Self::I32 => 8,
            Self::F32 => 16,
            Self::F64 => 64,
            Self::I8 => 256,
            Self::U16 => 512,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
        }
    }

    /// Inverse of [`DataType::nifti_code`]; `None` for complex, RGB and other codes.
    pub fn from_nifti_code(code: i32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| i32::from(t.nifti_code()) == code)
    }

    /// The canonical NRRD `type` field value.
    pub fn nrrd_name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float",
            Self::F64 => "double",
        }
    }

    /// Parses any of the NRRD spellings of a type (`uchar`, `unsigned char`, `uint8`,
    /// `uint8_t`, `short`, `signed short int`, `float`, ...).
    pub fn from_nrrd_name(name: &str) -> Option<Self> {
        let t = match name.trim() {
            "uchar" | "unsigned char" | "uint8" | "uint8_t" => Self::U8,
            "signed char" | "int8" | "int8_t" => Self::I8,
            "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
                Self::I16
            }
            "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Self::U16,
            "int" | "signed int" | "int32" | "int32_t" => Self::I32,
            "uint" | "unsigned int" | "uint32" | "uint32_t" => Self::U32,
            "longlong"
            | "long long"
            | "long long int"
            | "signed long long"
            | "signed long long int"
            | "int64"
            | "int64_t" => Self::I64,
            "ulonglong"
            | "unsigned long long"
            | "unsigned long long int"
            | "uint64"
            | "uint64_t" => Self::U64,
            "float" => Self::F32,
            "double" => Self::F64,
            _ => return None,
        };
        Some(t)
    }

    /// Decodes `raw` (exactly `n * self.size()` bytes) and appends the values to `out`.
    pub(crate) fn decode_into(self, raw: &[u8], big_endian: bool, out: &mut Vec<f32>) {
        macro_rules! decode {
            ($t:ty) => {{
                const N: usize = std::mem::size_of::<$t>();
                let words = raw.chunks_exact(N).map(|c| {
                    let mut b = [0u8; N];
                    b.copy_from_slice(c);
                    b
                });
                if big_endian {
                    out.extend(words.map(|b| <$t>::from_be_bytes(b) as f32));
                } else {
                    out.extend(words.map(|b| <$t>::from_le_bytes(b) as f32));
                }
            }};
        }
        match self {
            Self::U8 => out.extend(raw.iter().map(|&b| f32::from(b))),
            Self::I8 => out.extend(raw.iter().map(|&b| f32::from(b as i8))),
            Self::I16 => decode!(i16),
            Self::U16 => decode!(u16),
            Self::I32 => decode!(i32),
            Self::U32 => decode!(u32),
            Self::I64 => decode!(i64),
            Self::U64 => decode!(u64),
            Self::F32 => decode!(f32),
            Self::F64 => decode!(f64),
        }
    }

    /// Encodes `values` little-endian, rounding to the nearest integer for integer
    /// types; a value that is NaN or outside the type's range is an error.
    pub(crate) fn encode_le(self, values: &[f32]) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        macro_rules! encode_int {
            ($t:ty) => {{
                for (index, &v) in values.iter().enumerate() {
                    let r = v.round();
                    // `as f32` of the bounds rounds outward for 32/64-bit types; the
                    // saturating `as $t` cast below then keeps the edge value exact.
                    if !(r >= <$t>::MIN as f32 && r <= <$t>::MAX as f32) {
                        return Err(ImageError::ValueOutOfRange {
                            value: v,
                            index,
                            datatype: self.name(),
                        });
                    }
                    out.extend_from_slice(&(r as $t).to_le_bytes());
                }
            }};
        }
        match self {
            Self::U8 => encode_int!(u8),
            Self::I8 => encode_int!(i8),
            Self::I16 => encode_int!(i16),
            Self::U16 => encode_int!(u16),
            Self::I32 => encode_int!(i32),
            Self::U32 => encode_int!(u32),
            Self::I64 => encode_int!(i64),
            Self::U64 => encode_int!(u64),
            Self::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Self::F64 => values
                .iter()
                .for_each(|&v| out.extend_from_slice(&f64::from(v).to_le_bytes())),
        }
        Ok(out)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataType {
    type Err = ImageError;

    /// Accepts the numpy names (`uint8`, `float32`, ...) and every NRRD spelling.
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .or_else(|| Self::from_nrrd_name(s))
            .ok_or_else(|| ImageError::InvalidArgument(format!("unknown datatype {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_integers_and_codes() {
        let values = [0.0f32, 1.0, 7.0, 100.0, 127.0];
        for t in DataType::ALL {
            let raw = t.encode_le(&values).unwrap();
            assert_eq!(raw.len(), values.len() * t.size(), "{t}");
            let mut back = Vec::new();
            t.decode_into(&raw, false, &mut back);
            assert_eq!(back, values, "{t}");
            assert_eq!(DataType::from_nifti_code(t.nifti_code().into()), Some(t));
            assert_eq!(DataType::from_nrrd_name(t.nrrd_name()), Some(t));
            assert_eq!(t.name().parse::<DataType>().unwrap(), t);
        }
    }

    #[test]
    fn big_endian_decoding_swaps_bytes() {
        let mut out = Vec::new();
        DataType::I16.decode_into(&[0xff, 0x38], true, &mut out);
        DataType::F32.decode_into(&1.5f32.to_be_bytes(), true, &mut out);
        assert_eq!(out, [-200.0, 1.5]);
    }

    #[test]
    fn encoding_rounds_and_refuses_out_of_range() {
        let raw = DataType::I16.encode_le(&[2.6, -2.6]).unwrap();
        assert_eq!(raw, [3, 0, 0xfd, 0xff]);
        let err = DataType::U8.encode_le(&[1.0, 256.0]).unwrap_err();
        assert!(
            matches!(err, ImageError::ValueOutOfRange { index: 1, .. }),
            "{err}"
        );
        assert!(DataType::I16.encode_le(&[f32::NAN]).is_err());
        assert!(DataType::U8.encode_le(&[-0.7]).is_err());
        assert!("complex64".parse::<DataType>().is_err());
    }
}
