//! The request parameters of MONAI Label's scribbles tasks, with its names and defaults.

use serde::{Deserialize, Deserializer};

use crate::ScribblesError;

/// Parameters of [`segment`](crate::segment), deserialisable from the JSON `params` of
/// a MONAI Label infer request. Missing keys take the defaults below and unknown keys
/// (`selected_label_name`, `result_extension`, ...) are ignored.
///
/// Where each default comes from in MONAI Label (`Project-MONAI/MONAILabel`):
///
/// | field | default | source |
/// |---|---|---|
/// | `lamda`, `sigma` | 1.0, 0.1 | `HistogramBasedGraphCut` in `monailabel/scribbles/infer.py`, as the radiology app (`sample-apps/radiology/main.py`) registers "Histogram+GraphCut"; read from the request by `ApplyGraphCutOptimisationd` (`monailabel/scribbles/transforms.py`) |
/// | `num_bins` | 64 | same task; read from the request by `MakeLikelihoodFromScribblesHistogramd` |
/// | `roi` | none | `AddBackgroundScribblesFromROId` (`transforms.py`); sent by the Slicer plugin as `[]` or `[x0, x1, y0, y1, z0, z1]` |
/// | `label_info` | empty | `_set_scribbles_idx_from_labelinfo` (`transforms.py`); the Slicer plugin sends one `{"name", "id"}` per segment |
/// | `scribbles_bg_label`, `scribbles_fg_label` | 2, 3 | `ScribblesLikelihoodInferTask` (`infer.py`) when the task has no labels (else `len(labels) + 1` and `+ 2`) |
/// | `a_min`, `a_max`, `b_min`, `b_max`, `clip` | −300, 200, 0, 1, true | the task's `intensity_range`, applied by MONAI's `ScaleIntensityRanged` |
/// | `pix_dim` | [2.5, 2.5, 5.0] mm | the task's `pix_dim`, applied by MONAI's `Spacingd` |
///
/// In MONAI Label the intensity window, `pix_dim` and the scribble labels are fixed when
/// the task is created and only `lamda`, `sigma`, `num_bins`, `roi` and `label_info` come
/// with a request; here they are all fields so that a server can set them per task.
/// `crop_margin_mm` and `max_graph_voxels` are this crate's own (see the crate docs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScribblesParams {
    /// Weight of the pairwise (smoothness) term, ≥ 0. MONAI Label's spelling.
    pub lamda: f64,
    /// Intensity difference, in windowed units (`b_min..b_max`), at which a neighbour
    /// link has fallen to `exp(-1/2)` of its maximum; > 0.
    pub sigma: f64,
    /// Histogram bins over the normalised intensity range, 1..=65536.
    pub num_bins: usize,
    /// `[x0, x1, y0, y1, z0, z1]`: the half-open voxel box `x0 <= i < x1`, ... of the
    /// image's grid that may contain foreground; everything outside it is background
    /// scribble. `[]` or `null` means no ROI.
    #[serde(deserialize_with = "deserialize_roi")]
    pub roi: Option<[i64; 6]>,
    /// Label names and values of the scribbles labelmap; entries named
    /// `background_scribbles` and `foreground_scribbles` override the two labels below.
    pub label_info: Vec<LabelInfo>,
    /// Scribbles voxel value that marks background.
    pub scribbles_bg_label: u32,
    /// Scribbles voxel value that marks foreground.
    pub scribbles_fg_label: u32,
    /// Intensity window: `[a_min, a_max]` maps linearly onto `[b_min, b_max]`, clamped
    /// there when `clip`.
    pub a_min: f64,
    pub a_max: f64,
    pub b_min: f64,
    pub b_max: f64,
    pub clip: bool,
    /// Voxel size (mm along i, j, k) of the grid the graph cut runs on; `null` runs it
    /// on the image's own grid.
    pub pix_dim: Option<[f64; 3]>,
    /// Without an ROI, the graph covers the scribbles' bounding box grown by this many
    /// mm on every side (clipped to the image); outside it the result is background.
    pub crop_margin_mm: f64,
    /// Upper bound on graph nodes: a larger processing grid is coarsened until it fits.
    pub max_graph_voxels: usize,
}

impl Default for ScribblesParams {
    fn default() -> Self {
        Self {
            lamda: 1.0,
            sigma: 0.1,
            num_bins: 64,
            roi: None,
            label_info: Vec::new(),
            scribbles_bg_label: 2,
            scribbles_fg_label: 3,
            a_min: -300.0,
            a_max: 200.0,
            b_min: 0.0,
            b_max: 1.0,
            clip: true,
            pix_dim: Some([2.5, 2.5, 5.0]),
            crop_margin_mm: 50.0,
            max_graph_voxels: 1 << 20,
        }
    }
}

/// One segment of the client's labelmap, as the Slicer plugin describes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LabelInfo {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub id: Option<u32>,
}

/// Largest `num_bins` accepted: far beyond any use, small enough to allocate freely.
const MAX_BINS: usize = 1 << 16;

impl ScribblesParams {
    /// `(background, foreground)` scribble values after `label_info` overrides (the
    /// last matching entry wins; an entry without `id` keeps the value).
    pub fn scribble_labels(&self) -> (u32, u32) {
        let (mut bg, mut fg) = (self.scribbles_bg_label, self.scribbles_fg_label);
        for info in &self.label_info {
            match (info.name.as_deref(), info.id) {
                (Some("background_scribbles"), Some(id)) => bg = id,
                (Some("foreground_scribbles"), Some(id)) => fg = id,
                _ => {}
            }
        }
        (bg, fg)
    }

    /// Checks every number is in its domain. [`segment`](crate::segment) calls it first.
    pub fn validate(&self) -> Result<(), ScribblesError> {
        let invalid = |name: &'static str, value: String, expected: &'static str| {
            Err(ScribblesError::InvalidParameter {
                name,
                value,
                expected,
            })
        };
        if !(self.lamda.is_finite() && self.lamda >= 0.0) {
            return invalid("lamda", self.lamda.to_string(), "finite and >= 0");
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return invalid("sigma", self.sigma.to_string(), "finite and > 0");
        }
        if !(1..=MAX_BINS).contains(&self.num_bins) {
            return invalid("num_bins", self.num_bins.to_string(), "1..=65536");
        }
        for (name, v) in [
            ("a_min", self.a_min),
            ("a_max", self.a_max),
            ("b_min", self.b_min),
            ("b_max", self.b_max),
        ] {
            // The window is applied in f32.
            if !(v.is_finite() && v.abs() <= f64::from(f32::MAX)) {
                return invalid(name, v.to_string(), "a finite f32");
            }
        }
        if self.a_min == self.a_max {
            return invalid("a_max", self.a_max.to_string(), "different from a_min");
        }
        if self.b_min == self.b_max {
            return invalid("b_max", self.b_max.to_string(), "different from b_min");
        }
        if let Some(p) = self.pix_dim
            && !p.iter().all(|s| s.is_finite() && *s > 0.0)
        {
            return invalid("pix_dim", format!("{p:?}"), "three finite sizes > 0");
        }
        if !(self.crop_margin_mm.is_finite() && self.crop_margin_mm >= 0.0) {
            return invalid(
                "crop_margin_mm",
                self.crop_margin_mm.to_string(),
                "finite and >= 0",
            );
        }
        if self.max_graph_voxels < 8 {
            return invalid(
                "max_graph_voxels",
                self.max_graph_voxels.to_string(),
                "at least 8",
            );
        }
        let (bg, fg) = self.scribble_labels();
        if bg == fg {
            return invalid(
                "scribbles_fg_label",
                fg.to_string(),
                "different from the background scribbles label",
            );
        }
        Ok(())
    }
}

/// `null`, `[]` or six integers.
fn deserialize_roi<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[i64; 6]>, D::Error> {
    let values = Option::<Vec<i64>>::deserialize(d)?.unwrap_or_default();
    match <[i64; 6]>::try_from(values) {
        Ok(roi) => Ok(Some(roi)),
        Err(v) if v.is_empty() => Ok(None),
        Err(v) => Err(serde::de::Error::custom(format!(
            "roi must be [] or six voxel indices [x0, x1, y0, y1, z0, z1], got {} values",
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monai_label_request_params_parse() {
        // What the Slicer plugin sends for "Histogram+GraphCut" (config + scribbles).
        let json = r#"{
            "lamda": 2.5, "sigma": 0.2, "num_bins": 32,
            "roi": [10, 40, 12, 50, 3, 9],
            "label_info": [
                {"name": "spleen", "id": 1},
                {"name": "background_scribbles", "id": 4},
                {"name": "foreground_scribbles", "id": 5, "color": [1, 0, 0]}
            ],
            "selected_label_name": "spleen",
            "result_extension": ".nrrd"
        }"#;
        let p: ScribblesParams = serde_json::from_str(json).unwrap();
        assert_eq!((p.lamda, p.sigma, p.num_bins), (2.5, 0.2, 32));
        assert_eq!(p.roi, Some([10, 40, 12, 50, 3, 9]));
        assert_eq!(p.scribble_labels(), (4, 5));
        assert_eq!(p.pix_dim, ScribblesParams::default().pix_dim);
        assert!(p.validate().is_ok());
    }

    #[test]
    fn defaults_are_monai_labels() {
        let p: ScribblesParams = serde_json::from_str(r#"{"roi": []}"#).unwrap();
        assert_eq!(p, ScribblesParams::default());
        assert_eq!(p.scribble_labels(), (2, 3));
        assert_eq!(
            (p.a_min, p.a_max, p.b_min, p.b_max),
            (-300.0, 200.0, 0.0, 1.0)
        );
        let p: ScribblesParams = serde_json::from_str(r#"{"pix_dim": null}"#).unwrap();
        assert_eq!(p.pix_dim, None);
    }

    #[test]
    fn malformed_roi_is_a_parse_error() {
        let err = serde_json::from_str::<ScribblesParams>(r#"{"roi": [1, 2, 3]}"#).unwrap_err();
        assert!(err.to_string().contains("got 3 values"), "{err}");
    }

    #[test]
    fn label_info_without_id_keeps_the_label() {
        let p = ScribblesParams {
            label_info: vec![LabelInfo {
                name: Some("foreground_scribbles".into()),
                id: None,
            }],
            ..ScribblesParams::default()
        };
        assert_eq!(p.scribble_labels(), (2, 3));
    }

    #[test]
    fn out_of_domain_values_name_the_parameter() {
        let cases = [
            ScribblesParams {
                sigma: 0.0,
                ..Default::default()
            },
            ScribblesParams {
                lamda: f64::NAN,
                ..Default::default()
            },
            ScribblesParams {
                num_bins: 0,
                ..Default::default()
            },
            ScribblesParams {
                a_max: -300.0,
                ..Default::default()
            },
            ScribblesParams {
                b_min: f64::INFINITY,
                ..Default::default()
            },
            ScribblesParams {
                pix_dim: Some([2.5, 0.0, 5.0]),
                ..Default::default()
            },
            ScribblesParams {
                crop_margin_mm: -1.0,
                ..Default::default()
            },
            ScribblesParams {
                max_graph_voxels: 0,
                ..Default::default()
            },
            ScribblesParams {
                scribbles_fg_label: 2,
                ..Default::default()
            },
        ];
        let names = [
            "sigma",
            "lamda",
            "num_bins",
            "a_max",
            "b_min",
            "pix_dim",
            "crop_margin_mm",
            "max_graph_voxels",
            "scribbles_fg_label",
        ];
        for (p, name) in cases.iter().zip(names) {
            let err = p.validate().unwrap_err();
            assert!(
                matches!(&err, ScribblesError::InvalidParameter { name: n, .. } if *n == name),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
