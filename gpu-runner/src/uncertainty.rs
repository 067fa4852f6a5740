//! Epistemic uncertainty by Monte-Carlo dropout (MONAI Label's `EpistemicScoring`):
//! `passes` sliding-window predictions with dropout active and normalisation in eval
//! mode, averaged class probabilities, and the mean per-voxel entropy
//! `−Σ_c p̄_c ln p̄_c` as the image's score. Higher means the model is less sure, so
//! active learning should pick that image next.

use medlabel_imaging::Volume;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Result, RunnerError};
use crate::infer::{InferOptions, sliding_window};
use crate::model::Model;
use crate::networks::Mode;
use crate::pipeline::prepare;

/// The result of scoring one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Uncertainty {
    /// Mean voxel entropy of the averaged prediction (nats), in `[0, ln C]`.
    pub entropy: f64,
    /// Mean over voxels of the across-pass variance of the foreground probabilities.
    pub variance: f64,
    pub passes: usize,
}

/// Scores `image` with `passes` stochastic forward passes; `seed` makes it reproducible.
pub fn mc_dropout(
    model: &Model,
    image: &Volume<f32>,
    passes: usize,
    overlap: f64,
    seed: i64,
) -> Result<Uncertainty> {
    if !model.supports_mc_dropout() {
        return Err(RunnerError::invalid(
            "MC-dropout needs a native network trained with dropout > 0 (a TorchScript \
             module cannot switch its dropout on alone)",
        ));
    }
    if passes < 2 {
        return Err(RunnerError::invalid("MC-dropout needs at least two passes"));
    }
    let prep = prepare(image, None, &model.config, model.device())?;
    let opts = InferOptions {
        overlap: Some(overlap),
        ..Default::default()
    };
    let sw = sliding_window(model, &opts);
    tch::manual_seed(seed);
    let mut sum: Option<Tensor> = None;
    let mut sum_sq: Option<Tensor> = None;
    for _ in 0..passes {
        let p = tch::no_grad(|| sw.run(&prep.image, |x| model.forward(x, Mode::MC_DROPOUT)))?
            .softmax(1, Kind::Float);
        let fg = p.narrow(1, 1, p.size()[1] - 1);
        sum_sq = Some(match sum_sq {
            Some(s) => s + &fg * &fg,
            None => &fg * &fg,
        });
        sum = Some(match sum {
            Some(s) => s + p,
            None => p,
        });
    }
    let n = passes as f64;
    let mean = sum.ok_or_else(|| RunnerError::invalid("no passes"))? / n;
    let entropy = -(&mean * mean.clamp_min(1e-12).log()).sum_dim_intlist(
        [1i64].as_slice(),
        false,
        Kind::Float,
    );
    let fg_mean = mean.narrow(1, 1, mean.size()[1] - 1);
    let var = sum_sq.ok_or_else(|| RunnerError::invalid("no passes"))? / n - &fg_mean * &fg_mean;
    Ok(Uncertainty {
        entropy: entropy.mean(Kind::Float).double_value(&[]),
        variance: var.clamp_min(0.0).mean(Kind::Float).double_value(&[]),
        passes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Intensity, ModelConfig};
    use crate::unet::UNetConfig;
    use std::collections::BTreeMap;
    use tch::Device;

    fn config(dropout: f64) -> ModelConfig {
        ModelConfig {
            model_type: Default::default(),
            guidance: Default::default(),
            labels: BTreeMap::from([("background".into(), 0), ("spleen".into(), 1)]),
            spacing: [2.0; 3],
            intensity: Intensity::Mr,
            roi_size: [8; 3],
            network: UNetConfig {
                spatial_dims: 3,
                in_channels: 1,
                out_channels: 2,
                channels: vec![4, 8],
                strides: vec![2],
                num_res_units: 1,
                norm: Default::default(),
                dropout,
            }
            .into(),
            format: Default::default(),
            layout: Default::default(),
            pipeline: Default::default(),
        }
    }

    #[test]
    fn scores_are_bounded_and_need_dropout() {
        // (Reproducibility under one seed is not asserted here: libtorch's generator is
        // process-global and the test harness runs other seeded tests concurrently.)
        tch::manual_seed(0);
        let (image, _) = crate::synth::case(1, [12, 12, 10], [2.0; 3]);
        let model = Model::new(config(0.3), Device::Cpu).unwrap();
        let a = mc_dropout(&model, &image, 4, 0.25, 11).unwrap();
        assert_eq!(a.passes, 4);
        assert!(a.entropy > 0.0 && a.entropy <= 2f64.ln() + 1e-6, "{a:?}");
        // Dropout makes the passes differ, so there is variance to measure.
        assert!(a.variance > 0.0, "{a:?}");
        let plain = Model::new(config(0.0), Device::Cpu).unwrap();
        assert!(mc_dropout(&plain, &image, 4, 0.25, 1).is_err());
        assert!(mc_dropout(&model, &image, 1, 0.25, 1).is_err());
    }
}
