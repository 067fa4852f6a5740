//! PyTorch state dicts (`torch.save(model.state_dict(), "model.pt")`) read without
//! Python or pickle execution.
//!
//! Since PyTorch 1.6 such a file is a zip archive: `<name>/data.pkl` (a pickle of the
//! dict, read by [`super::pickle`], which refuses anything but data), one entry per
//! storage under `<name>/data/<key>` holding its raw elements, `<name>/byteorder`
//! (`little` or `big`) and a few version markers. Tensors are rebuilt here from a
//! storage's bytes and the (offset, size, stride) the pickle recorded, after checking
//! that every element the view addresses lies inside the storage.
//!
//! Everything a file claims is checked before memory is committed: the pickle is at most
//! [`MAX_PICKLE_BYTES`], each storage entry must be exactly as long as the pickle says,
//! the storages a state dict uses may total at most [`MAX_TOTAL_BYTES`], and a compressed
//! entry may not expand beyond deflate's own limit (a zip bomb); a missing entry, a
//! truncated archive or a legacy (pre-zip) file is an error naming the problem.
//!
//! Checkpoints often wrap the state dict: MONAI Label and Model Zoo save
//! `{"model": state_dict, ...}`, Lightning-style ones `{"state_dict": ...}`. The first
//! of the keys in [`WRAPPER_KEYS`] that holds a dict of tensors is used, and a
//! `module.` prefix that every name shares (`DataParallel`) is removed.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::path::Path;

use tch::{Kind, Tensor};

use super::pickle::{self, Item, Obj, Pickle, TensorSpec};
use crate::error::{Result, RunnerError};

/// Largest `data.pkl` accepted; a state dict's is kilobytes.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Largest total of storage bytes a state dict may use.
pub const MAX_TOTAL_BYTES: u64 = 16 << 30;
/// Deflate cannot expand more than about 1032:1; beyond that an entry lies.
const MAX_DEFLATE_RATIO: u64 = 1100;
/// Keys of checkpoint dicts that may hold the state dict, in order of preference.
pub const WRAPPER_KEYS: [&str; 5] = ["model", "state_dict", "model_state_dict", "network", "net"];

/// Named tensors in file order.
pub type StateDict = Vec<(String, Tensor)>;

fn invalid(what: &str, msg: impl std::fmt::Display) -> RunnerError {
    RunnerError::invalid(format!("{what}: {msg}"))
}

/// Reads the state dict in a `torch.save` file.
pub fn read(path: &Path) -> Result<StateDict> {
    let file = std::fs::File::open(path).map_err(|e| RunnerError::io(path, e))?;
    read_from(file, &path.display().to_string())
}

/// Reads a state dict from any seekable source; `what` names it in errors.
pub fn read_from<R: Read + Seek>(source: R, what: &str) -> Result<StateDict> {
    let mut zip = zip::ZipArchive::new(source).map_err(|e| {
        invalid(
            what,
            format!(
                "not a PyTorch zip archive ({e}); files from torch.save before PyTorch 1.6 \
                 are not read"
            ),
        )
    })?;
    let pkl_name = data_pkl_name(&zip).ok_or_else(|| invalid(what, "no <name>/data.pkl entry"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    if zip
        .index_for_name(&format!("{prefix}constants.pkl"))
        .is_some()
    {
        return Err(invalid(
            what,
            "this is a TorchScript archive, not a state dict: give it as a .ts model",
        ));
    }
    let pkl = read_entry(&mut zip, &pkl_name, None, what)?;
    let big_endian = match zip.index_for_name(&format!("{prefix}byteorder")) {
        Some(_) => read_entry(&mut zip, &format!("{prefix}byteorder"), None, what)? == b"big",
        None => false,
    };
    let pickle = pickle::parse(&pkl).map_err(|e| invalid(what, e))?;
    let entries = state_dict_entries(&pickle).map_err(|e| invalid(what, e))?;

    // Read each storage the state dict uses once; views share it.
    let used: BTreeSet<usize> = entries
        .iter()
        .map(|(_, t)| pickle.tensors[*t].storage)
        .collect();
    let mut total = 0u64;
    let mut storages: Vec<Option<Tensor>> = (0..pickle.storages.len()).map(|_| None).collect();
    for s in used {
        let st = &pickle.storages[s];
        let bytes = st
            .numel
            .checked_mul(st.kind.elt_size_in_bytes() as u64)
            .ok_or_else(|| invalid(what, format!("storage {} is impossibly large", st.key)))?;
        total = total.saturating_add(bytes);
        if total > MAX_TOTAL_BYTES {
            return Err(invalid(
                what,
                format!("storages exceed the {MAX_TOTAL_BYTES}-byte limit"),
            ));
        }
        let name = format!("{prefix}data/{}", st.key);
        let mut data = read_entry(&mut zip, &name, Some(bytes), what)?;
        if big_endian {
            for elem in data.chunks_mut(st.kind.elt_size_in_bytes()) {
                elem.reverse();
            }
        }
        let numel = i64::try_from(st.numel).map_err(|_| invalid(what, "storage too large"))?;
        let t = Tensor::f_from_data_size(&data, &[numel], st.kind).map_err(RunnerError::from)?;
        storages[s] = Some(t);
    }

    let mut names = BTreeSet::new();
    let strip = entries.iter().all(|(n, _)| n.starts_with("module."));
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let spec = &pickle.tensors[t];
        let storage = storages[spec.storage]
            .as_ref()
            .expect("every used storage was read above");
        let tensor = view(storage, pickle.storages[spec.storage].numel, spec)
            .map_err(|e| invalid(what, format!("tensor {name:?}: {e}")))?;
        let name = if strip {
            name["module.".len()..].to_owned()
        } else {
            name
        };
        if !names.insert(name.clone()) {
            return Err(invalid(what, format!("tensor name {name:?} appears twice")));
        }
        out.push((name, tensor));
    }
    Ok(out)
}

/// The single `<name>/data.pkl` entry (torch names the folder after the file).
fn data_pkl_name<R: Read + Seek>(zip: &zip::ZipArchive<R>) -> Option<String> {
    let mut found = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1);
    let first = found.next()?.to_owned();
    found.next().is_none().then_some(first)
}

/// Reads one entry in full, checking its declared size (`expect`: the exact length a
/// storage must have) against the limits before allocating.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    expect: Option<u64>,
    what: &str,
) -> Result<Vec<u8>> {
    let entry = zip
        .by_name(name)
        .map_err(|e| invalid(what, format!("entry {name}: {e}")))?;
    let size = entry.size();
    let limit = expect.unwrap_or(MAX_PICKLE_BYTES);
    if expect.is_some_and(|n| n != size) {
        return Err(invalid(
            what,
            format!("entry {name} holds {size} bytes, its tensor needs {limit}"),
        ));
    }
    if size > limit {
        return Err(invalid(what, format!("entry {name} exceeds {limit} bytes")));
    }
    if size > entry.compressed_size().saturating_mul(MAX_DEFLATE_RATIO) + 4096 {
        return Err(invalid(
            what,
            format!("entry {name} claims an impossible compression ratio"),
        ));
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(size as usize)
        .map_err(|_| invalid(what, format!("cannot allocate {size} bytes for {name}")))?;
    // Never trust the header alone: read at most one byte past it and compare.
    entry
        .take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| invalid(what, format!("entry {name}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(invalid(
            what,
            format!("entry {name} is {} bytes, not {size}", buf.len()),
        ));
    }
    Ok(buf)
}

/// The (name, tensor index) pairs of the state dict in a pickle: the root dict when all
/// its values are tensors, else the first [`WRAPPER_KEYS`] entry that is such a dict.
fn state_dict_entries(p: &Pickle) -> Result<Vec<(String, usize)>> {
    let root = p
        .root
        .as_ref()
        .ok_or_else(|| RunnerError::invalid("empty pickle"))?;
    let Some(Obj::Dict(items)) = p.obj(root) else {
        return Err(RunnerError::invalid("the file does not hold a dict"));
    };
    if let Some(entries) = tensor_dict(p, items) {
        return Ok(entries);
    }
    for key in WRAPPER_KEYS {
        let inner = items.iter().find(|(k, _)| *k == Item::Str(key.into()));
        if let Some((_, v)) = inner
            && let Some(Obj::Dict(inner)) = p.obj(v)
            && let Some(entries) = tensor_dict(p, inner)
        {
            return Ok(entries);
        }
    }
    Err(RunnerError::invalid(format!(
        "no state dict found: the dict is not name → tensor and none of {WRAPPER_KEYS:?} holds one"
    )))
}

fn tensor_dict(p: &Pickle, items: &[(Item, Item)]) -> Option<Vec<(String, usize)>> {
    let entries: Option<Vec<_>> = items
        .iter()
        .map(|(k, v)| match (k, v) {
            (Item::Str(name), Item::Tensor(t)) if *t < p.tensors.len() => Some((name.clone(), *t)),
            _ => None,
        })
        .collect();
    entries.filter(|e| !e.is_empty())
}

/// The contiguous tensor a (storage, offset, size, stride) triple describes, after
/// checking that the view stays inside the storage's `numel` elements.
fn view(storage: &Tensor, numel: u64, spec: &TensorSpec) -> Result<Tensor> {
    let TensorSpec {
        offset,
        size,
        stride,
        ..
    } = spec;
    if size.len() != stride.len() {
        return Err(RunnerError::invalid(format!(
            "size {size:?} and stride {stride:?} differ in rank"
        )));
    }
    if *offset < 0 || size.iter().chain(stride).any(|&v| v < 0) {
        return Err(RunnerError::invalid("negative offset, size or stride"));
    }
    if size.contains(&0) {
        return Ok(Tensor::zeros(
            size.as_slice(),
            (storage.kind(), storage.device()),
        ));
    }
    let last = size
        .iter()
        .zip(stride)
        .try_fold(*offset, |acc, (&n, &s)| {
            (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .ok_or_else(|| RunnerError::invalid("size × stride overflows"))?;
    if last as u64 >= numel {
        return Err(RunnerError::invalid(format!(
            "size {size:?}, stride {stride:?} and offset {offset} reach element {last} of a \
             {numel}-element storage"
        )));
    }
    Ok(storage
        .f_as_strided(size.as_slice(), stride.as_slice(), *offset)?
        .contiguous())
}

/// Element type names as a state dict carries them, for messages.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "other",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// One float32 tensor `w` on storage `0` of `numel` elements, with the given view.
    pub(crate) fn pickle_one(numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'('];
        p.extend([0x8c, 1, b'w']);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend([b'(', 0x8c, 7]);
        p.extend(b"storage");
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend([0x8c, 1, b'0', 0x8c, 3]);
        p.extend(b"cpu");
        p.extend([b'K', numel, b't', b'Q', b'K', offset, b'(']);
        for &s in size {
            p.extend([b'K', s]);
        }
        p.push(b't');
        p.push(b'(');
        for &s in stride {
            p.extend([b'K', s]);
        }
        p.extend([b't', 0x89]);
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend([b't', b'R', b'u', b'.']);
        p
    }

    /// A torch.save-shaped zip with `data.pkl` and the given storage entries.
    pub(crate) fn zip_with(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        z.start_file("archive/byteorder", opts).unwrap();
        z.write_all(b"little").unwrap();
        for (key, bytes) in storages {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
        out.into_inner()
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn strided_views_are_rebuilt_contiguously() {
        // arange(10).view(2, 5)[:, 1:4].t(): offset 1, size (3, 2), stride (1, 5).
        let data: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let zip = zip_with(
            &pickle_one(10, 1, &[3, 2], &[1, 5]),
            &[("0", floats(&data))],
        );
        let sd = read_from(Cursor::new(zip), "test").unwrap();
        assert_eq!(sd[0].0, "w");
        let v = Vec::<f32>::try_from(sd[0].1.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![1.0, 6.0, 2.0, 7.0, 3.0, 8.0]);
    }

    #[test]
    fn views_beyond_their_storage_are_refused() {
        let data = floats(&[0.0; 10]);
        for (numel, offset, size, stride) in [
            (10u8, 0u8, vec![11u8], vec![1u8]),
            (10, 5, vec![2, 5], vec![5, 1]),
            (10, 0, vec![3, 4], vec![4, 1]),
            (10, 10, vec![1], vec![1]),
        ] {
            let zip = zip_with(
                &pickle_one(numel, offset, &size, &stride),
                &[("0", data.clone())],
            );
            let err = read_from(Cursor::new(zip), "test").unwrap_err().to_string();
            assert!(err.contains("storage"), "{size:?}: {err}");
        }
        // The storage entry shorter than the pickle says.
        let zip = zip_with(&pickle_one(10, 0, &[10], &[1]), &[("0", floats(&[0.0; 9]))]);
        let err = read_from(Cursor::new(zip), "test").unwrap_err().to_string();
        assert!(err.contains("needs 40"), "{err}");
        // The storage entry missing.
        let zip = zip_with(&pickle_one(10, 0, &[10], &[1]), &[]);
        let err = read_from(Cursor::new(zip), "test").unwrap_err().to_string();
        assert!(err.contains("archive/data/0"), "{err}");
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let data: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let zip = zip_with(&pickle_one(10, 0, &[10], &[1]), &[("0", floats(&data))]);
        assert!(read_from(Cursor::new(zip.clone()), "ok").is_ok());
        for cut in [0, 10, zip.len() / 2, zip.len() - 30, zip.len() - 1] {
            assert!(
                read_from(Cursor::new(zip[..cut].to_vec()), "cut").is_err(),
                "{cut}"
            );
        }
        let err = read_from(Cursor::new(b"\x80\x02}q\x00.".to_vec()), "legacy")
            .unwrap_err()
            .to_string();
        assert!(err.contains("before PyTorch 1.6"), "{err}");
    }
}
