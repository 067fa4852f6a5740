//! AdamW with its state in checkpoints.
//!
//! tch wraps libtorch's C++ optimizers but cannot save their moment estimates, so a run
//! resumed from a checkpoint would restart AdamW cold and diverge from the run it
//! continues. This is the same algorithm as `torch.optim.AdamW` (decoupled weight decay,
//! bias-corrected moments, `eps` added after the square root), written with tensor ops,
//! and its state (the step count and both moments of every trainable variable, by
//! variable name) saves to and loads from a safetensors file.

use std::path::Path;

use tch::{Kind, Tensor, nn};

use crate::error::{Result, RunnerError};

/// Name of the step counter inside a saved state file.
const STEP: &str = "__step__";

/// AdamW over the trainable variables of a [`nn::VarStore`].
///
/// The moments of all variables live in two flat tensors, and a step works on the
/// concatenated gradients and parameters: a dozen kernels per step instead of a dozen
/// per variable, which on a GPU is what made the per-variable loop slower than
/// PyTorch's multi-tensor AdamW. A variable without a gradient in a step counts as
/// gradient zero (its moments and weight decay still advance).
pub struct AdamW {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i64,
    /// First and second moments of every variable, end to end in `slots` order.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Trainable variables, sorted by name, each with views of its moments.
    slots: Vec<Slot>,
}

struct Slot {
    name: String,
    param: Tensor,
    /// Where the variable's values start in the flat tensors, and how many there are.
    offset: i64,
    numel: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamW {
    /// PyTorch's defaults but `lr` and `weight_decay`: betas (0.9, 0.999), eps 1e-8.
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Self {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let total: i64 = variables.iter().map(|(_, t)| t.numel() as i64).sum();
        let exp_avg = Tensor::zeros([total], (Kind::Float, vs.device()));
        let exp_avg_sq = exp_avg.zeros_like();
        let mut offset = 0;
        let slots = variables
            .into_iter()
            .map(|(name, param)| {
                let numel = param.numel() as i64;
                let view =
                    |flat: &Tensor| flat.narrow(0, offset, numel).view(param.size().as_slice());
                let slot = Slot {
                    exp_avg: view(&exp_avg),
                    exp_avg_sq: view(&exp_avg_sq),
                    name,
                    param,
                    offset,
                    numel,
                };
                offset += numel;
                slot
            })
            .collect();
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            exp_avg,
            exp_avg_sq,
            slots,
        }
    }

    /// Clears the gradients, back-propagates `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
        loss.backward();
        self.step();
    }

    fn step(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        self.step += 1;
        let bias1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(self.step as i32)).sqrt();
        let step_size = self.lr / bias1;
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        let decay = 1.0 - self.lr * self.weight_decay;
        tch::no_grad(|| {
            let flat = |of: &dyn Fn(&Slot) -> Tensor| {
                Tensor::cat(&self.slots.iter().map(of).collect::<Vec<_>>(), 0)
            };
            let grad = flat(&|slot| {
                let grad = slot.param.grad();
                if grad.defined() {
                    grad.reshape(-1)
                } else {
                    slot.param.zeros_like().reshape(-1)
                }
            });
            let mut params = flat(&|slot| slot.param.reshape(-1));
            let _ = params.g_mul_scalar_(decay);
            let _ = self.exp_avg.g_mul_scalar_(beta1);
            let _ = self.exp_avg.g_add_(&(&grad * (1.0 - beta1)));
            let _ = self.exp_avg_sq.g_mul_scalar_(beta2);
            let _ = self.exp_avg_sq.g_add_(&(&grad * &grad * (1.0 - beta2)));
            let denom = self.exp_avg_sq.sqrt() / bias2_sqrt + eps;
            let _ = params.g_sub_(&(&self.exp_avg / denom * step_size));
            for slot in &mut self.slots {
                slot.param.copy_(
                    &params
                        .narrow(0, slot.offset, slot.numel)
                        .view_as(&slot.param),
                );
            }
        });
    }

    /// Writes the step count and every moment to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.slots.len() + 1);
        named.push((STEP.into(), Tensor::from(self.step)));
        for slot in &self.slots {
            named.push((
                format!("{}.exp_avg", slot.name),
                slot.exp_avg.to_device(tch::Device::Cpu),
            ));
            named.push((
                format!("{}.exp_avg_sq", slot.name),
                slot.exp_avg_sq.to_device(tch::Device::Cpu),
            ));
        }
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote; the variables must be the same network's.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let get = |name: &str| {
            saved.get(name).ok_or_else(|| {
                RunnerError::invalid(format!(
                    "{}: optimizer state has no {name:?}",
                    path.display()
                ))
            })
        };
        let step = get(STEP)?.int64_value(&[]);
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                for (suffix, moment) in [
                    ("exp_avg", &mut slot.exp_avg),
                    ("exp_avg_sq", &mut slot.exp_avg_sq),
                ] {
                    let value = get(&format!("{}.{suffix}", slot.name))?;
                    if value.size() != moment.size() {
                        return Err(RunnerError::invalid(format!(
                            "{}: {}.{suffix} has shape {:?}, the network needs {:?}",
                            path.display(),
                            slot.name,
                            value.size(),
                            moment.size()
                        )));
                    }
                    moment.copy_(&value.to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};

    /// Deterministic values without the global generator (tests run in parallel).
    fn ramp(shape: &[i64], k: f64) -> Tensor {
        let n = shape.iter().product::<i64>();
        (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * k)
            .sin()
            .reshape(shape)
    }

    /// A small regression problem on a fresh `VarStore` with fixed weights.
    fn problem() -> (nn::VarStore, nn::Linear, Tensor, Tensor) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut layer = nn::linear(vs.root() / "fc", 6, 2, Default::default());
        tch::no_grad(|| {
            layer.ws.copy_(&ramp(&[2, 6], 0.7));
            if let Some(bias) = layer.bs.as_mut() {
                bias.copy_(&ramp(&[2], 1.3));
            }
        });
        (vs, layer, ramp(&[16, 6], 0.37), ramp(&[16, 2], 0.91))
    }

    fn loss(layer: &nn::Linear, x: &Tensor, y: &Tensor) -> Tensor {
        (layer.forward(x) - y)
            .pow_tensor_scalar(2)
            .mean(Kind::Float)
    }

    fn weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn max_diff(a: &nn::VarStore, b: &nn::VarStore) -> f64 {
        weights(a)
            .iter()
            .zip(weights(b))
            .map(|((_, p), (_, q))| (p - q).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    #[test]
    fn matches_libtorchs_adamw() {
        let (ours_vs, ours_layer, x, y) = problem();
        let (theirs_vs, theirs_layer, _, _) = problem();
        let mut ours = AdamW::new(&ours_vs, 0.01, 0.05);
        let mut theirs = nn::AdamW {
            wd: 0.05,
            ..Default::default()
        }
        .build(&theirs_vs, 0.01)
        .unwrap();
        for _ in 0..25 {
            ours.backward_step(&loss(&ours_layer, &x, &y));
            theirs.backward_step(&loss(&theirs_layer, &x, &y));
        }
        let diff = max_diff(&ours_vs, &theirs_vs);
        assert!(diff < 1e-5, "parameters differ by {diff}");
    }

    #[test]
    fn a_resumed_optimizer_continues_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("optimizer.safetensors");
        let (straight_vs, straight_layer, x, y) = problem();
        let mut straight = AdamW::new(&straight_vs, 0.01, 0.01);
        for _ in 0..10 {
            straight.backward_step(&loss(&straight_layer, &x, &y));
        }

        let (first_vs, first_layer, _, _) = problem();
        let mut first = AdamW::new(&first_vs, 0.01, 0.01);
        for _ in 0..4 {
            first.backward_step(&loss(&first_layer, &x, &y));
        }
        let weights_file = dir.path().join("weights.safetensors");
        first_vs.save(&weights_file).unwrap();
        first.save(&state).unwrap();

        let (mut resumed_vs, resumed_layer, _, _) = problem();
        resumed_vs.load(&weights_file).unwrap();
        let mut resumed = AdamW::new(&resumed_vs, 0.01, 0.01);
        resumed.load(&state).unwrap();
        for _ in 0..6 {
            resumed.backward_step(&loss(&resumed_layer, &x, &y));
        }
        assert_eq!(max_diff(&straight_vs, &resumed_vs), 0.0);

        // Cold moments (what tch's optimizer gave on resume) end elsewhere.
        let (mut cold_vs, cold_layer, _, _) = problem();
        cold_vs.load(&weights_file).unwrap();
        let mut cold = AdamW::new(&cold_vs, 0.01, 0.01);
        for _ in 0..6 {
            cold.backward_step(&loss(&cold_layer, &x, &y));
        }
        assert!(max_diff(&straight_vs, &cold_vs) > 1e-4);
    }

    #[test]
    fn state_of_another_network_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("optimizer.safetensors");
        let (vs, _, _, _) = problem();
        AdamW::new(&vs, 0.01, 0.0).save(&state).unwrap();
        let other = nn::VarStore::new(tch::Device::Cpu);
        let _ = nn::linear(other.root() / "fc", 6, 3, Default::default());
        let err = AdamW::new(&other, 0.01, 0.0).load(&state).unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
    }
}
