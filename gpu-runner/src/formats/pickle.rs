//! A pickle reader that evaluates data, never code.
//!
//! Python's `pickle.load` calls whatever callable the stream names (`GLOBAL` + `REDUCE`),
//! so loading an untrusted `model.pt` with it is remote code execution. This reader is a
//! small stack machine for the binary opcodes (protocols 2–5) that build plain data —
//! numbers, strings, bytes, lists, tuples, dicts — and it resolves `GLOBAL` names against
//! a fixed allowlist of the few callables a PyTorch state dict needs:
//!
//! - `collections.OrderedDict` (called with no arguments; `BUILD` on it, which sets the
//!   `_metadata` attribute, is accepted and ignored);
//! - `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter` and
//!   `_rebuild_parameter_with_state`, which here only record a tensor *description*
//!   (storage, offset, size, stride) for the zip reader to check and build;
//! - `torch.<Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool>Storage`, which
//!   only appear inside the persistent ids (`BINPERSID`) naming a storage file.
//!
//! Any other global (`os.system`, `builtins.eval`, a model class, `numpy` scalars) is an
//! error naming it, raised when the name is read, before anything could be called; so
//! are opcodes outside that set (`NEWOBJ`, `INST`, `OBJ`, `EXT*`, the text protocol).
//!
//! Objects live in an arena addressed by index, so memo references (`BINGET`) share
//! them without reference counting, cycles cannot leak or recurse, and every structure
//! is bounded by the number of opcodes, hence by the input's length.

use std::collections::HashMap;

use tch::Kind;

use crate::error::{Result, RunnerError};

/// Most memo entries, stack items and arena objects a stream may create.
const MAX_ITEMS: usize = 1 << 24;

/// A value on the machine's stack or in the memo: scalars inline, everything else by
/// index (`Obj` into the arena, `Storage`/`Tensor` into their tables).
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Obj(usize),
    Global(Global),
    Storage(usize),
    Tensor(usize),
}

/// A compound object in the arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    List(Vec<Item>),
    Tuple(Vec<Item>),
    /// Insertion-ordered, as Python dicts are.
    Dict(Vec<(Item, Item)>),
}

/// The callables and classes the reader accepts, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(Kind),
}

/// A storage named by a persistent id: the zip entry `data/<key>` holding `numel`
/// elements of `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub kind: Kind,
    pub numel: u64,
}

/// What `_rebuild_tensor_v2` was asked to build; checked against the storage later.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub storage: usize,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The result of reading a stream: the root item plus the tables it refers to.
#[derive(Debug, Default)]
pub struct Pickle {
    pub root: Option<Item>,
    pub objects: Vec<Obj>,
    pub storages: Vec<StorageRef>,
    pub tensors: Vec<TensorSpec>,
}

impl Pickle {
    /// The arena object an item refers to, if it is one.
    pub fn obj(&self, item: &Item) -> Option<&Obj> {
        match item {
            Item::Obj(i) => self.objects.get(*i),
            _ => None,
        }
    }
}

/// The storage kind of an allowlisted `torch.<Name>Storage` class.
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameter)
        }
        ("torch", n) => storage_kind(n).map(Global::StorageType),
        _ => None,
    };
    global.ok_or_else(|| {
        let hint = if module.starts_with("__torch__") {
            " (this looks like a TorchScript archive: give it as a .ts model)"
        } else {
            ""
        };
        RunnerError::invalid(format!(
            "pickle refers to `{module}.{name}`, which a state dict never needs: model files \
             are read as data and never run code{hint}"
        ))
    })
}

/// Reads a pickle stream under the rules in the module docs.
pub fn parse(data: &[u8]) -> Result<Pickle> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        out: Pickle::default(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
    out: Pickle,
}

fn bad(msg: impl std::fmt::Display) -> RunnerError {
    RunnerError::invalid(format!("malformed pickle: {msg}"))
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad(format!("truncated at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("GLOBAL name without newline"))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| bad("GLOBAL name is not UTF-8"))?
            .to_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }

    fn len(&mut self, n: usize) -> Result<usize> {
        usize::try_from(self.uint(n)?).map_err(|_| bad("length overflows"))
    }

    fn push(&mut self, item: Item) -> Result<()> {
        if self.stack.len() >= MAX_ITEMS {
            return Err(bad("stack too deep"));
        }
        self.stack.push(item);
        Ok(())
    }

    fn pop(&mut self) -> Result<Item> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(bad("pop across a MARK"));
        }
        self.stack.pop().ok_or_else(|| bad("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let m = self.marks.pop().ok_or_else(|| bad("no MARK"))?;
        Ok(self.stack.split_off(m))
    }

    fn new_obj(&mut self, obj: Obj) -> Result<Item> {
        if self.out.objects.len() >= MAX_ITEMS {
            return Err(bad("too many objects"));
        }
        self.out.objects.push(obj);
        Ok(Item::Obj(self.out.objects.len() - 1))
    }

    fn obj_mut(&mut self, item: &Item) -> Result<&mut Obj> {
        match item {
            Item::Obj(i) => Ok(&mut self.out.objects[*i]),
            other => Err(bad(format!("{other:?} is not a container"))),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| bad("memo of empty stack"))?;
        if self.memo.len() >= MAX_ITEMS {
            return Err(bad("memo too large"));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let item = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| bad(format!("memo key {key} unset")))?;
        self.push(item)
    }

    fn tuple(&mut self, items: Vec<Item>) -> Result<()> {
        let t = self.new_obj(Obj::Tuple(items))?;
        self.push(t)
    }

    fn append(&mut self, target: &Item, items: Vec<Item>) -> Result<()> {
        match self.obj_mut(target)? {
            Obj::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(bad("APPEND to a non-list")),
        }
    }

    fn set_items(&mut self, target: &Item, items: Vec<Item>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(bad("SETITEMS with an odd item count"));
        }
        let Obj::Dict(d) = self.obj_mut(target)? else {
            return Err(bad("SETITEM on a non-dict"));
        };
        // Repeated keys are kept (no quadratic de-duplication); readers of the result
        // treat a repeated name as malformed.
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            let at = self.pos;
            let op = *self.take(1)?.first().expect("one byte");
            match op {
                0x80 => {
                    let proto = self.uint(1)?;
                    if proto > 5 {
                        return Err(bad(format!("unknown protocol {proto}")));
                    }
                }
                0x95 => {
                    self.uint(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let root = self.pop()?;
                    self.out.root = Some(root);
                    return Ok(self.out);
                }
                b'(' => {
                    if self.marks.len() >= MAX_ITEMS {
                        return Err(bad("too many MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self
                        .stack
                        .last()
                        .cloned()
                        .ok_or_else(|| bad("DUP of nothing"))?;
                    self.push(top)?;
                }
                b'N' => self.push(Item::None)?,
                0x88 => self.push(Item::Bool(true))?,
                0x89 => self.push(Item::Bool(false))?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Item::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Item::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Item::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.len(1)?;
                    if n > 8 {
                        return Err(bad("integer wider than 64 bits"));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= i64::from(x) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement of an n-byte value
                    }
                    self.push(Item::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("eight bytes"));
                    self.push(Item::Float(v))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let width = match op {
                        b'X' => 4,
                        0x8c => 1,
                        _ => 8,
                    };
                    let n = self.len(width)?;
                    let s = self.text(n)?;
                    self.push(Item::Str(s))?;
                }
                b'T' | b'U' => {
                    let n = self.len(if op == b'T' { 4 } else { 1 })?;
                    let s = self.text(n)?;
                    self.push(Item::Str(s))?;
                }
                b'B' | b'C' | 0x8e => {
                    let width = match op {
                        b'B' => 4,
                        b'C' => 1,
                        _ => 8,
                    };
                    let n = self.len(width)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Item::Bytes(b))?;
                }
                b']' => {
                    let l = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(l)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let l = self.new_obj(Obj::List(items))?;
                    self.push(l)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.stack.last().cloned().ok_or_else(|| bad("APPEND"))?;
                    self.append(&target, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.stack.last().cloned().ok_or_else(|| bad("APPENDS"))?;
                    self.append(&target, items)?;
                }
                b')' => self.tuple(Vec::new())?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n
                        || self.marks.last().is_some_and(|&m| m > self.stack.len() - n)
                    {
                        return Err(bad("TUPLEn without enough items"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.tuple(items)?;
                }
                b'}' => {
                    let d = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(d)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.set_items(&d, items)?;
                    self.push(d)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.stack.last().cloned().ok_or_else(|| bad("SETITEM"))?;
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.stack.last().cloned().ok_or_else(|| bad("SETITEMS"))?;
                    self.set_items(&target, items)?;
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Item::Global(resolve_global(&module, &name)?))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Item::Str(m), Item::Str(n)) => {
                            self.push(Item::Global(resolve_global(&m, &n)?))?
                        }
                        _ => return Err(bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(&pid)?;
                    self.push(storage)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.reduce(callable, &args)?;
                    self.push(result)?;
                }
                b'b' => {
                    self.pop()?; // the state
                    let target = self.stack.last().ok_or_else(|| bad("BUILD of nothing"))?;
                    // `OrderedDict` state is its `_metadata` attribute: irrelevant here.
                    if !matches!(self.out.obj(target), Some(Obj::Dict(_))) {
                        return Err(bad("BUILD is only accepted on a dict"));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "opcode 0x{other:02x} at byte {at} is not accepted (only plain data and \
                         tensors are read)"
                    )));
                }
            }
        }
    }

    fn tuple_items(&self, item: &Item) -> Result<Vec<Item>> {
        match self.out.obj(item) {
            Some(Obj::Tuple(v)) => Ok(v.clone()),
            _ => Err(bad("expected a tuple")),
        }
    }

    /// `('storage', torch.XStorage, key, location, numel)` → a storage table entry
    /// (the same key always maps to the same entry, so views share storage).
    fn persistent_storage(&mut self, pid: &Item) -> Result<Item> {
        let parts = self.tuple_items(pid)?;
        let [
            Item::Str(tag),
            Item::Global(Global::StorageType(kind)),
            Item::Str(key),
            _,
            Item::Int(numel),
        ] = parts.as_slice()
        else {
            return Err(bad(
                "persistent id is not ('storage', type, key, location, numel)",
            ));
        };
        if tag != "storage" || *numel < 0 {
            return Err(bad("persistent id is not a storage"));
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(format!("storage key {key:?} is not a plain name")));
        }
        if let Some(i) = self.out.storages.iter().position(|s| s.key == *key) {
            if self.out.storages[i].kind != *kind {
                return Err(bad(format!("storage {key} is used with two element types")));
            }
            return Ok(Item::Storage(i));
        }
        self.out.storages.push(StorageRef {
            key: key.clone(),
            kind: *kind,
            numel: *numel as u64,
        });
        Ok(Item::Storage(self.out.storages.len() - 1))
    }

    fn reduce(&mut self, callable: Item, args: &Item) -> Result<Item> {
        let args = self.tuple_items(args)?;
        let Item::Global(g) = callable else {
            return Err(bad("REDUCE of something that is not an allowed global"));
        };
        match g {
            Global::OrderedDict if args.is_empty() => self.new_obj(Obj::Dict(Vec::new())),
            Global::RebuildTensor if (6..=7).contains(&args.len()) => {
                let Item::Storage(storage) = args[0] else {
                    return Err(bad("tensor without a storage"));
                };
                let Item::Int(offset) = args[1] else {
                    return Err(bad("tensor offset is not an integer"));
                };
                let ints = |item: &Item| -> Result<Vec<i64>> {
                    self.tuple_items(item)?
                        .into_iter()
                        .map(|i| match i {
                            Item::Int(v) => Ok(v),
                            _ => Err(bad("tensor size or stride is not integers")),
                        })
                        .collect()
                };
                let (size, stride) = (ints(&args[2])?, ints(&args[3])?);
                self.out.tensors.push(TensorSpec {
                    storage,
                    offset,
                    size,
                    stride,
                });
                Ok(Item::Tensor(self.out.tensors.len() - 1))
            }
            Global::RebuildParameter if (3..=4).contains(&args.len()) => match args[0] {
                Item::Tensor(t) => Ok(Item::Tensor(t)),
                _ => Err(bad("parameter without tensor data")),
            },
            other => Err(bad(format!(
                "{other:?} called with {} arguments",
                args.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(collections.OrderedDict(a=1), protocol=2)` minus the memo ops.
    fn ordered_dict_stream() -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\n");
        p.extend([b')', b'R', b'(']);
        p.extend([0x8c, 1, b'a', b'K', 1]);
        p.extend([b'u', b'}', b'b', b'.']);
        p
    }

    #[test]
    fn reads_an_ordered_dict_and_ignores_its_attributes() {
        let p = parse(&ordered_dict_stream()).unwrap();
        let root = p.root.clone().unwrap();
        assert_eq!(
            p.obj(&root),
            Some(&Obj::Dict(vec![(Item::Str("a".into()), Item::Int(1))]))
        );
    }

    #[test]
    fn code_execution_is_refused_with_the_global_named() {
        // `os.system('echo pwned')` as pickle writes it for a __reduce__ payload.
        let mut p = vec![0x80, 2];
        p.extend(b"cos\nsystem\n");
        p.extend([0x8c, 10]);
        p.extend(b"echo pwned");
        p.extend([0x85, b'R', b'.']);
        let err = parse(&p).unwrap_err().to_string();
        assert!(err.contains("`os.system`"), "{err}");
        for (module, name) in [
            ("builtins", "eval"),
            ("torch", "load"),
            ("__torch__.x", "Net"),
        ] {
            let mut p = vec![0x80, 2];
            p.extend(format!("c{module}\n{name}\n").as_bytes());
            p.push(b'.');
            let err = parse(&p).unwrap_err().to_string();
            assert!(err.contains(&format!("`{module}.{name}`")), "{err}");
        }
        // STACK_GLOBAL goes through the same allowlist.
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend(b"builtins");
        p.extend([0x8c, 4]);
        p.extend(b"exec");
        p.extend([0x93, b'.']);
        assert!(parse(&p).unwrap_err().to_string().contains("builtins.exec"));
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x80],
            vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f],
            vec![0x80, 2, b'a', b'.'],
            vec![0x80, 2, b'h', 9, b'.'],
            vec![0x80, 2, b'(', b'0', b'.'],
            vec![0x80, 2, b'K', 1, b'K', 2, b's', b'.'],
            vec![0x80, 2, b')', b'b', b'.'],
            vec![0x80, 2, 0x81, b'.'],
            vec![0x80, 2, b'i', b'.'],
            vec![0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'.'],
            vec![0x80, 2, b'N', b'Q', b'.'],
        ];
        for c in cases {
            assert!(parse(&c).is_err(), "{c:?}");
        }
        // Every prefix of a valid stream fails cleanly.
        let good = ordered_dict_stream();
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn integers_decode_with_sign() {
        let p = parse(&[0x80, 2, 0x8a, 2, 0x00, 0xff, b'.']).unwrap();
        assert_eq!(p.root, Some(Item::Int(-256)));
        let p = parse(&[0x80, 2, b'J', 0xfe, 0xff, 0xff, 0xff, b'.']).unwrap();
        assert_eq!(p.root, Some(Item::Int(-2)));
        let p = parse(&[0x80, 2, b'M', 0x01, 0x02, b'.']).unwrap();
        assert_eq!(p.root, Some(Item::Int(0x0201)));
    }
}
