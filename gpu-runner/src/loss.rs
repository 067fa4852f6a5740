//! Training loss and validation metric, as MONAI defines them.
//!
//! [`dice_ce_loss`] is `DiceCELoss(to_onehot_y=True, softmax=True)` with its defaults:
//! soft Dice per sample and channel over the spatial dims, background included,
//! `1 − (2·Σpg + 1e-5) / (Σp + Σg + 1e-5)`, averaged, plus mean cross-entropy.
//! [`mean_dice`] is `DiceMetric(include_background=False)` on argmax predictions, where
//! a class absent from both prediction and ground truth is skipped rather than counted.

use tch::{Kind, Tensor};

const SMOOTH: f64 = 1e-5;

/// Dice + cross-entropy for logits `[N, C, …]` and integer labels `[N, 1, …]`.
pub fn dice_ce_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let classes = logits.size()[1];
    let target = labels.squeeze_dim(1);
    let ce = logits.cross_entropy_loss::<Tensor>(&target, None, tch::Reduction::Mean, -100, 0.0);
    let probs = logits.softmax(1, Kind::Float);
    let onehot = one_hot(&target, classes);
    let spatial: Vec<i64> = (2..logits.dim() as i64).collect();
    let inter = (&probs * &onehot).sum_dim_intlist(spatial.as_slice(), false, Kind::Float);
    let denom = probs.sum_dim_intlist(spatial.as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist(spatial.as_slice(), false, Kind::Float);
    let dice: Tensor = 1.0 - (inter * 2.0 + SMOOTH) / (denom + SMOOTH);
    dice.mean(Kind::Float) + ce
}

/// `[N, …]` class indices → `[N, C, …]` float one-hot.
pub fn one_hot(target: &Tensor, classes: i64) -> Tensor {
    let n = target.dim() as i64;
    let mut perm = vec![0, n];
    perm.extend(1..n);
    target
        .one_hot(classes)
        .permute(perm.as_slice())
        .to_kind(Kind::Float)
}

/// Mean foreground Dice of predicted labels against ground truth (both `[…]` integer
/// tensors of the same shape), or `None` when no foreground class occurs in either.
pub fn mean_dice(pred: &Tensor, truth: &Tensor, classes: i64) -> Option<f64> {
    let scores: Vec<f64> = (1..classes)
        .filter_map(|c| {
            let p = pred.eq(c);
            let t = truth.eq(c);
            let sp = p.sum(Kind::Float).double_value(&[]);
            let st = t.sum(Kind::Float).double_value(&[]);
            if st == 0.0 && sp == 0.0 {
                return None;
            }
            let inter = p.logical_and(&t).sum(Kind::Float).double_value(&[]);
            Some(2.0 * inter / (sp + st))
        })
        .collect();
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn perfect_confident_prediction_has_near_zero_loss() {
        let labels = Tensor::from_slice(&[0i64, 1, 1, 0, 2, 2]).reshape([1, 1, 6]);
        let logits = one_hot(&labels.squeeze_dim(1), 3) * 40.0;
        let loss = dice_ce_loss(&logits, &labels).double_value(&[]);
        assert!(loss.abs() < 1e-4, "{loss}");
        // Uniform logits: CE = ln 3, soft Dice per class = 1 − 2·(n_c/3)/(2 + n_c).
        let uniform = Tensor::zeros([1, 3, 6], (Kind::Float, Device::Cpu));
        let loss = dice_ce_loss(&uniform, &labels).double_value(&[]);
        let dice = 1.0 - (2.0 * (2.0 / 3.0)) / 4.0;
        assert!((loss - (dice + 3f64.ln())).abs() < 1e-4, "{loss}");
    }

    #[test]
    fn mean_dice_skips_absent_classes_and_scores_overlap() {
        let truth = Tensor::from_slice(&[0i64, 1, 1, 1, 0, 0]);
        let pred = Tensor::from_slice(&[0i64, 1, 1, 0, 0, 0]);
        let d = mean_dice(&pred, &truth, 3).unwrap();
        assert!((d - 0.8).abs() < 1e-9, "{d}");
        assert_eq!(mean_dice(&truth.zeros_like(), &truth.zeros_like(), 2), None);
    }
}
