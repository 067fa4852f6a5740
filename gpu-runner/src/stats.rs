//! `train_stats.json`: the progress document MONAI Label writes at every epoch end and
//! serves under `/info/` (`train_stats[model]`), with the same keys so clients show it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RunnerError};

/// File name inside a training output folder.
pub const STATS_FILE: &str = "train_stats.json";

/// One phase's metrics (`train` or `eval`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    pub metrics: BTreeMap<String, f64>,
    pub key_metric_name: String,
    pub best_metric: f64,
    pub best_metric_epoch: usize,
}

/// MONAI Label's `train_stats` keys. `total_time` is present only once training has
/// finished (clients read its presence as "done"); until then `current_time` is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    pub rank: usize,
    pub current_epoch: usize,
    pub current_iteration: usize,
    pub total_epochs: usize,
    pub total_iterations: usize,
    pub epoch: usize,
    /// Unix seconds when training started.
    pub start_ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_time: Option<String>,
    pub best_metric: f64,
    pub train: PhaseStats,
    pub eval: PhaseStats,
}

impl TrainStats {
    /// Sets `total_time` (done) or `current_time` (running) from elapsed seconds.
    pub fn set_elapsed(&mut self, secs: u64, done: bool) {
        let text = hms(secs);
        if done {
            self.total_time = Some(text);
            self.current_time = None;
        } else {
            self.current_time = Some(text);
            self.total_time = None;
        }
    }

    /// Writes `dir/train_stats.json` via a temporary file, so readers never see half of it.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATS_FILE);
        let tmp = dir.join(format!(".{STATS_FILE}.tmp"));
        let text =
            serde_json::to_string_pretty(self).map_err(|e| RunnerError::json("train stats", e))?;
        std::fs::write(&tmp, text).map_err(|e| RunnerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| RunnerError::io(&path, e))
    }
}

/// Python's `str(timedelta(seconds=s))` for under a day: `H:MM:SS`.
pub fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_and_done_marker() {
        assert_eq!(hms(0), "0:00:00");
        assert_eq!(hms(3 * 3600 + 7 * 60 + 5), "3:07:05");
        let mut s = TrainStats::default();
        s.set_elapsed(61, false);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["current_time"], "0:01:01");
        assert!(v.get("total_time").is_none());
        s.set_elapsed(62, true);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["total_time"], "0:01:02");
        assert!(v.get("current_time").is_none());
        for key in [
            "rank",
            "current_epoch",
            "current_iteration",
            "total_epochs",
            "total_iterations",
            "epoch",
            "start_ts",
            "best_metric",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v["eval"].get("key_metric_name").is_some());
    }
}
