//! The arguments of one `_target_` entry (a network or a transform), evaluated one by
//! one as the importer asks for them, so that an argument it does not need (a
//! `SaveImaged` output dtype written as `$numpy.float32`) is never evaluated; an
//! argument it does not know is an error naming it.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::resolve::Resolver;
use crate::error::{Result, RunnerError};

/// One entry's arguments.
pub struct Args<'v> {
    /// The class name without its module (`monai.transforms.Spacingd` → `Spacingd`).
    pub target: String,
    raw: &'v serde_json::Map<String, Value>,
    used: BTreeSet<String>,
    /// Where the entry is, for messages (`configs/inference.json preprocessing`).
    pub context: String,
    /// Its id inside the config, for reference resolution.
    pub at: String,
}

impl<'v> Args<'v> {
    /// `raw` must be an object with a string `_target_`.
    pub fn new(raw: &'v Value, context: &str, at: &str) -> Result<Self> {
        let map = raw.as_object().ok_or_else(|| {
            RunnerError::invalid(format!(
                "{context}: {at} is not a {{\"_target_\": …}} object"
            ))
        })?;
        let target = map
            .get("_target_")
            .and_then(Value::as_str)
            .ok_or_else(|| RunnerError::invalid(format!("{context}: {at} has no _target_")))?;
        let name = target
            .trim_start_matches('$')
            .rsplit('.')
            .next()
            .unwrap_or(target);
        Ok(Self {
            target: name.to_owned(),
            raw: map,
            used: BTreeSet::new(),
            context: context.to_owned(),
            at: at.to_owned(),
        })
    }

    /// Whether `_disabled_` switches the entry off.
    pub fn disabled(&self) -> bool {
        match self.raw.get("_disabled_") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.to_lowercase().as_str(), "true" | "$true"),
            _ => false,
        }
    }

    /// The evaluated argument `key`, if given and not `null`.
    pub fn get<T: DeserializeOwned>(&mut self, r: &mut Resolver, key: &str) -> Result<Option<T>> {
        self.used.insert(key.to_owned());
        let Some(raw) = self.raw.get(key) else {
            return Ok(None);
        };
        let v = r.eval(raw, &format!("{}#{key}", self.at))?;
        if v.is_null() {
            return Ok(None);
        }
        serde_json::from_value(v.clone()).map(Some).map_err(|e| {
            RunnerError::invalid(format!(
                "{}: argument `{key}` = {v} of {} is not usable: {e}",
                self.context, self.target
            ))
        })
    }

    /// [`Args::get`] with a default.
    pub fn get_or<T: DeserializeOwned>(
        &mut self,
        r: &mut Resolver,
        key: &str,
        default: T,
    ) -> Result<T> {
        Ok(self.get(r, key)?.unwrap_or(default))
    }

    /// Marks arguments that do not change the result (devices, logging, keys).
    pub fn ignore(&mut self, keys: &[&str]) {
        self.used.extend(keys.iter().map(|k| (*k).to_owned()));
    }

    /// A clear error about this entry.
    pub fn error(&self, msg: impl std::fmt::Display) -> RunnerError {
        RunnerError::invalid(format!("{}: {} {msg}", self.context, self.target))
    }

    /// Errors on any argument nobody asked for.
    pub fn finish(self) -> Result<()> {
        let unknown: Vec<&String> = self
            .raw
            .keys()
            .filter(|k| !k.starts_with('_') && !self.used.contains(*k))
            .collect();
        match unknown.first() {
            Some(k) => Err(RunnerError::invalid(format!(
                "{}: unsupported argument `{k}` of {}",
                self.context, self.target
            ))),
            None => Ok(()),
        }
    }
}
