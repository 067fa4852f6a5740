//! Memory limits for untrusted input, and the one routine that reads voxel payloads.
//!
//! Headers are attacker-controlled, so nothing is ever allocated from a header value
//! alone. The voxel count is computed with checked arithmetic and compared against
//! [`ReadLimits`] before any buffer exists; the payload is then read through
//! [`std::io::Read::take`], so a buffer only grows as real bytes arrive, and a gzip
//! stream that inflates beyond what the dims need is cut off and rejected instead of
//! being inflated to the end.

use std::io::Read;

use crate::{DataType, ImageError};

/// Default cap on voxel memory: 2 GiB.
pub const DEFAULT_MAX_VOXEL_BYTES: u64 = 2 << 30;

/// How many bytes beyond the dims a payload may carry before it is called a bomb.
/// Some writers pad the end of a file; a few KiB of padding is tolerated, more is not.
const TRAILING_SLACK: u64 = 64 << 10;

/// Initial buffer reservation when the payload length is not known in advance (gzip),
/// so that a lying header cannot make us reserve gigabytes up front.
const UNKNOWN_LENGTH_RESERVE: u64 = 64 << 20;

/// Limits applied while reading untrusted volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Upper bound, in bytes, for both the raw on-disk voxel buffer and the decoded
    /// `f32` volume. A header that needs more is rejected with
    /// [`ImageError::TooLarge`] before anything is allocated.
    pub max_voxel_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_voxel_bytes: DEFAULT_MAX_VOXEL_BYTES,
        }
    }
}

impl ReadLimits {
    /// Checks `dims` of `datatype` against the limit and returns (voxel count, raw
    /// payload bytes). All arithmetic is checked, so absurd dims cannot overflow.
    pub(crate) fn budget(
        &self,
        dims: [u64; 3],
        datatype: DataType,
    ) -> Result<(usize, u64), ImageError> {
        let too_large = |needed| ImageError::TooLarge {
            needed,
            limit: self.max_voxel_bytes,
        };
        let voxels = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(too_large(u64::MAX))?;
        let raw = voxels
            .checked_mul(datatype.size() as u64)
            .ok_or(too_large(u64::MAX))?;
        let decoded = voxels.checked_mul(4).ok_or(too_large(u64::MAX))?;
        let needed = raw.max(decoded);
        if needed > self.max_voxel_bytes {
            return Err(too_large(needed));
        }
        let voxels = usize::try_from(voxels).map_err(|_| too_large(needed))?;
        Ok((voxels, raw))
    }
}

/// Reads exactly `expected` payload bytes from `reader`.
///
/// `known_len` is how many bytes the reader can still deliver when that is known (an
/// uncompressed buffer); it lets truncation be reported before allocating. Fewer bytes
/// than `expected` is [`ImageError::Truncated`]; more than `expected` plus a small
/// slack is [`ImageError::ExcessData`]; a corrupt gzip stream is
/// [`ImageError::Decompress`].
pub(crate) fn read_payload(
    reader: &mut dyn Read,
    expected: u64,
    known_len: Option<u64>,
    format: &'static str,
) -> Result<Vec<u8>, ImageError> {
    if let Some(len) = known_len
        && len < expected
    {
        return Err(ImageError::Truncated {
            format,
            expected,
            found: len,
        });
    }
    let reserve = known_len.map_or(expected.min(UNKNOWN_LENGTH_RESERVE), |_| expected);
    let mut buf = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
    let limit = expected + TRAILING_SLACK + 1;
    if let Err(e) = reader.take(limit).read_to_end(&mut buf) {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ImageError::Truncated {
                format,
                expected,
                found: buf.len() as u64,
            },
            _ => ImageError::Decompress {
                format,
                detail: e.to_string(),
            },
        });
    }
    let found = buf.len() as u64;
    if found < expected {
        return Err(ImageError::Truncated {
            format,
            expected,
            found,
        });
    }
    if found > expected + TRAILING_SLACK {
        return Err(ImageError::ExcessData { format, expected });
    }
    buf.truncate(usize::try_from(expected).unwrap_or(buf.len()));
    Ok(buf)
}

/// Maps an I/O error met while reading a header to a clear message.
pub(crate) fn header_read_error(e: std::io::Error, format: &'static str, what: &str) -> ImageError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ImageError::header(format, format!("input ends inside the {what}"))
        }
        _ => ImageError::Decompress {
            format,
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_rejects_overflow_and_limit() {
        let limits = ReadLimits {
            max_voxel_bytes: 1000,
        };
        assert_eq!(limits.budget([10, 5, 5], DataType::U8).unwrap(), (250, 250));
        assert!(matches!(
            limits.budget([10, 5, 6], DataType::U8),
            Err(ImageError::TooLarge { needed: 1200, .. })
        ));
        assert!(matches!(
            limits.budget([u64::MAX, 2, 1], DataType::F64),
            Err(ImageError::TooLarge { .. })
        ));
        // f64 raw data is twice the decoded f32 size; the larger one counts.
        assert!(limits.budget([100, 1, 1], DataType::F64).is_ok());
        assert!(limits.budget([126, 1, 1], DataType::F64).is_err());
    }

    /// An endless stream of zeros that counts what it hands out.
    struct Endless(u64);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(0);
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn endless_input_is_cut_off_right_after_the_slack() {
        let mut source = Endless(0);
        let err = read_payload(&mut source, 1000, None, "T").unwrap_err();
        assert!(
            matches!(err, ImageError::ExcessData { expected: 1000, .. }),
            "{err:?}"
        );
        assert_eq!(source.0, 1000 + TRAILING_SLACK + 1);
    }

    #[test]
    fn payload_exact_short_and_long() {
        let data = [7u8; 100];
        assert_eq!(
            read_payload(&mut &data[..], 100, None, "T").unwrap().len(),
            100
        );
        assert!(matches!(
            read_payload(&mut &data[..], 101, None, "T"),
            Err(ImageError::Truncated {
                expected: 101,
                found: 100,
                ..
            })
        ));
        assert!(matches!(
            read_payload(&mut &data[..], 101, Some(100), "T"),
            Err(ImageError::Truncated { found: 100, .. })
        ));
        let long = vec![0u8; 100 + TRAILING_SLACK as usize + 1];
        assert!(matches!(
            read_payload(&mut &long[..], 100, None, "T"),
            Err(ImageError::ExcessData { expected: 100, .. })
        ));
    }
}
