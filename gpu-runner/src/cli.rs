//! A small `--key value` / `--flag` parser: each command takes what it needs and
//! [`Args::finish`] rejects anything left over, so typos are errors, not silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use medlabel_runner::{Result, RunnerError};

/// Parsed options of one command.
pub struct Args {
    values: BTreeMap<String, Option<String>>,
}

impl Args {
    /// Parses `--key value` pairs; a `--key` followed by another option or nothing is a flag.
    pub fn parse(argv: Vec<String>) -> Result<Self> {
        let mut values = BTreeMap::new();
        let mut it = argv.into_iter().peekable();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| RunnerError::invalid(format!("unexpected argument {arg:?}")))?
                .to_owned();
            let value = it.next_if(|v| !v.starts_with("--"));
            values.insert(key, value);
        }
        Ok(Self { values })
    }

    pub fn get(&mut self, key: &str) -> Option<String> {
        self.values.remove(key).flatten()
    }

    pub fn get_or(&mut self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    pub fn flag(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    pub fn path(&mut self, key: &str) -> Result<PathBuf> {
        self.opt_path(key)
            .ok_or_else(|| RunnerError::invalid(format!("--{key} is required")))
    }

    pub fn opt_path(&mut self, key: &str) -> Option<PathBuf> {
        self.get(key).map(PathBuf::from)
    }

    pub fn parse_or<T: FromStr>(&mut self, key: &str, default: T) -> Result<T> {
        match self.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| RunnerError::invalid(format!("--{key}: cannot parse {v:?}"))),
            None => Ok(default),
        }
    }

    /// A comma-separated list.
    pub fn list_or<T: FromStr>(&mut self, key: &str, default: Vec<T>) -> Result<Vec<T>> {
        match self.get(key) {
            Some(v) => v
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .map_err(|_| RunnerError::invalid(format!("--{key}: cannot parse {v:?}")))
                })
                .collect(),
            None => Ok(default),
        }
    }

    /// Exactly three comma-separated values.
    pub fn triple_or<T: FromStr + Copy>(&mut self, key: &str, default: [T; 3]) -> Result<[T; 3]> {
        let v = self.list_or(key, default.to_vec())?;
        v.try_into().map_err(|_| {
            RunnerError::invalid(format!("--{key} needs three comma-separated values"))
        })
    }

    /// Errors on options no one consumed.
    pub fn finish(self) -> Result<()> {
        match self.values.keys().next() {
            Some(k) => Err(RunnerError::invalid(format!("unknown option --{k}"))),
            None => Ok(()),
        }
    }
}

/// Reads `[{"image": …, "label": …}, …]`; relative paths are taken from the file's folder.
pub fn read_datalist(file: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    #[derive(serde::Deserialize)]
    struct Item {
        image: PathBuf,
        label: PathBuf,
    }
    let text = std::fs::read_to_string(file).map_err(|e| RunnerError::io(file, e))?;
    let items: Vec<Item> = serde_json::from_str(&text)
        .map_err(|e| RunnerError::json(file.display().to_string(), e))?;
    let base = file.parent().unwrap_or(Path::new("."));
    Ok(items
        .into_iter()
        .map(|i| (base.join(i.image), base.join(i.label)))
        .collect())
}
