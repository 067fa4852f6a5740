//! What an uploaded weights file must be before it can become a model's next version.
//!
//! Models are safetensors files: an 8-byte little-endian header length, a JSON header
//! naming every tensor's dtype, shape and byte range, then the data. The functions do
//! not link libtorch, but the header alone says whether a file is whole and whether it
//! fits the model's network: the same tensor names with the same dtypes and shapes as
//! the version it replaces. A file that fails either check would only fail later, in
//! the runner, after the model had already changed for everyone.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

/// The safetensors format's own limit on the header size.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Every tensor's dtype and shape, by name.
pub type Layout = BTreeMap<String, (String, Vec<u64>)>;

/// Reads the layout from a safetensors file of `len` bytes, checking that the header
/// is well-formed and that every tensor's bytes lie inside the file.
pub fn layout(mut reader: impl Read, len: u64) -> Result<Layout, String> {
    let mut prefix = [0u8; 8];
    reader
        .read_exact(&mut prefix)
        .map_err(|_| "not a safetensors file: shorter than its 8-byte header length")?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES || header_len > len - 8 {
        return Err(format!(
            "not a safetensors file: header length {header_len} does not fit a {len}-byte file"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header)
        .map_err(|_| "truncated safetensors header")?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("malformed safetensors header: {e}"))?;
    let data_len = len - 8 - header_len;
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, entry)| {
            let tensor = tensor(&entry, data_len)
                .map_err(|why| format!("tensor {name:?} in the safetensors header: {why}"))?;
            Ok((name, tensor))
        })
        .collect()
}

fn tensor(entry: &Value, data_len: u64) -> Result<(String, Vec<u64>), String> {
    let dtype = entry["dtype"].as_str().ok_or("no dtype")?.to_owned();
    let shape = entry["shape"]
        .as_array()
        .ok_or("no shape")?
        .iter()
        .map(|d| d.as_u64().ok_or("a shape entry is not a size"))
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets: Vec<u64> = entry["data_offsets"]
        .as_array()
        .map(|o| o.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    match offsets[..] {
        [start, end] if start <= end && end <= data_len => Ok((dtype, shape)),
        _ => Err(format!(
            "data offsets {} outside the file's {data_len} data bytes",
            entry["data_offsets"]
        )),
    }
}

/// Why `new` cannot replace `current`, naming the first difference; `None` if it can.
pub fn mismatch(current: &Layout, new: &Layout) -> Option<String> {
    if let Some(name) = current.keys().find(|name| !new.contains_key(*name)) {
        return Some(format!("the file has no tensor {name:?}"));
    }
    if let Some(name) = new.keys().find(|name| !current.contains_key(*name)) {
        return Some(format!("the model's network has no tensor {name:?}"));
    }
    current.iter().find_map(|(name, (dtype, shape))| {
        let (new_dtype, new_shape) = &new[name];
        (dtype != new_dtype || shape != new_shape).then(|| {
            format!(
                "tensor {name:?} is {new_dtype} {new_shape:?}, the model's network needs {dtype} {shape:?}"
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with one f32 tensor of `shape`.
    fn file(name: &str, shape: &[u64]) -> Vec<u8> {
        let count: u64 = shape.iter().product();
        let header = serde_json::json!({
            "__metadata__": {"format": "pt"},
            name: {"dtype": "F32", "shape": shape, "data_offsets": [0, count * 4]},
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, (count * 4) as usize));
        bytes
    }

    fn read(bytes: &[u8]) -> Result<Layout, String> {
        layout(bytes, bytes.len() as u64)
    }

    #[test]
    fn a_whole_file_gives_its_layout() {
        let layout = read(&file("conv.weight", &[8, 1, 3, 3, 3])).unwrap();
        assert_eq!(
            layout["conv.weight"],
            ("F32".to_owned(), vec![8, 1, 3, 3, 3])
        );
        assert_eq!(layout.len(), 1, "metadata is not a tensor");
    }

    #[test]
    fn truncated_or_malformed_files_are_refused() {
        let whole = file("w", &[4, 4]);
        let truncated = &whole[..whole.len() - 1];
        assert!(read(truncated).unwrap_err().contains("outside"));
        assert!(read(&whole[..5]).unwrap_err().contains("8-byte"));
        assert!(read(&whole[..20]).unwrap_err().contains("header length"));
        let mut huge = whole.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read(&huge).unwrap_err().contains("header length"));
        let mut garbage = whole;
        garbage[8] = b'!';
        assert!(read(&garbage).unwrap_err().contains("malformed"));
    }

    #[test]
    fn layouts_must_match_name_dtype_and_shape() {
        let current = read(&file("w", &[4, 4])).unwrap();
        assert_eq!(mismatch(&current, &current), None);
        let reshaped = read(&file("w", &[4, 5])).unwrap();
        assert!(mismatch(&current, &reshaped).unwrap().contains("[4, 5]"));
        let renamed = read(&file("v", &[4, 4])).unwrap();
        assert!(
            mismatch(&current, &renamed)
                .unwrap()
                .contains("no tensor \"w\"")
        );
    }
}
