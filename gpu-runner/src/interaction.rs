//! Training with simulated clicks, as MONAI's DeepGrow/DeepEdit `Interaction` does:
//! before each loss step the network (in eval mode, without gradients) predicts with
//! the guidance so far, and a click goes where a user would put the next one — in the
//! largest region any label is missed ([`crate::guidance::error_clicks`]) — for up to
//! `max_interactions` rounds. Deepgrow starts from one click inside the organ (MONAI's
//! initial seed point); deepedit starts from its automatic segmentation (no clicks),
//! and with probability `1 − click_probability` gets no clicks at all, so it also
//! learns automatic segmentation, then corrects it click by click as a user would.
//!
//! Deepgrow learns to segment whatever was clicked: each crop's target is one of the
//! labels present in it (picked at random), as foreground against everything else.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::config::ModelType;
use crate::error::Result;
use crate::guidance::{channel_labels, deepest_in_largest, error_clicks, signal};
use crate::interactive::forward_padded;
use crate::loss::mean_dice;
use crate::model::Model;

/// Clicks per sample, per guidance channel, on the crop's grid (tensor order).
type BatchClicks = Vec<Vec<Vec<[f64; 3]>>>;

/// The batch's input with guidance channels after the simulated interaction, and its
/// training target: (`[B, 1 + G, …]` input, `[B, 1, …]` labels).
pub fn simulate(
    model: &Model,
    image: &Tensor,
    label: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<(Tensor, Tensor)> {
    let cfg = &model.config;
    let target = match cfg.model_type {
        ModelType::Deepgrow => clicked_organ(label, rng)?,
        _ => label.shallow_clone(),
    };
    let labels = channel_labels(cfg);
    let size: [i64; 3] = std::array::from_fn(|d| image.size()[2 + d]);
    let dims = size.map(|s| s as usize);
    let truth = host_labels(&target)?;
    let deepgrow = cfg.model_type == ModelType::Deepgrow;
    let with_clicks = deepgrow || rng.random::<f64>() < cfg.guidance.click_probability;
    // Deepgrow's first click: deep inside the organ (channel 0 is its foreground).
    let mut clicks: BatchClicks = truth
        .iter()
        .map(|t| {
            let mut channels = vec![Vec::new(); labels.len()];
            let inside: Vec<bool> = t.iter().map(|&v| v > 0).collect();
            if let (true, Some((p, _))) = (deepgrow, deepest_in_largest(&inside, dims)) {
                channels[0].push(p.map(|c| c as f64));
            }
            channels
        })
        .collect();
    let rounds = if with_clicks {
        rng.random_range(usize::from(!deepgrow)..=cfg.guidance.max_interactions)
    } else {
        0
    };
    for _ in 0..rounds {
        let input = with_guidance(image, &clicks, size, cfg.guidance.sigma);
        let pred = tch::no_grad(|| forward_padded(model, &input))?.argmax(1, true);
        let pred = host_labels(&pred)?;
        for ((sample, t), p) in clicks.iter_mut().zip(&truth).zip(&pred) {
            if let Some((channel, click)) = largest_error(t, p, dims, &labels, 1.0) {
                sample[channel].push(click);
            }
        }
    }
    Ok((
        with_guidance(image, &clicks, size, cfg.guidance.sigma),
        target,
    ))
}

/// The next click a user makes: the channel and voxel of the largest region any
/// label is missed (counting voxels at least `min_depth` inside, see
/// [`error_clicks`]), or `None` when there is none.
pub fn largest_error(
    truth: &[u8],
    pred: &[u8],
    dims: [usize; 3],
    labels: &[i64],
    min_depth: f32,
) -> Option<(usize, [f64; 3])> {
    error_clicks(truth, pred, dims, labels, min_depth)
        .into_iter()
        .enumerate()
        .filter_map(|(c, e)| e.map(|(voxel, size)| (c, voxel, size)))
        .max_by_key(|&(_, _, size)| size)
        .map(|(c, voxel, _)| (c, voxel.map(|v| v as f64)))
}

/// `[B, 1, …]` images with each sample's guidance channels beside them.
fn with_guidance(image: &Tensor, clicks: &BatchClicks, size: [i64; 3], sigma: f64) -> Tensor {
    let device = image.device();
    let guidance: Vec<Tensor> = clicks
        .iter()
        .map(|sample| signal(sample, size, sigma, device))
        .collect();
    Tensor::cat(&[image.shallow_clone(), Tensor::cat(&guidance, 0)], 1)
}

/// Each sample's labels as bytes on the host (`[B, 1, …]` → B vectors).
fn host_labels(t: &Tensor) -> Result<Vec<Vec<u8>>> {
    let host = t.to_kind(Kind::Uint8).to_device(Device::Cpu);
    (0..host.size()[0])
        .map(|b| Ok(Vec::<u8>::try_from(&host.get(b).flatten(0, -1))?))
        .collect()
}

/// Per sample, one label present in it (at random) as foreground, the rest background.
fn clicked_organ(label: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let host = host_labels(label)?;
    let per_sample: Vec<Tensor> = host
        .iter()
        .enumerate()
        .map(|(b, voxels)| {
            let mut seen = [false; 256];
            voxels.iter().for_each(|&v| seen[v as usize] = true);
            let organs: Vec<i64> = (1..256).filter(|&v| seen[v as usize]).collect();
            let sample = label.get(b as i64);
            match organs.as_slice() {
                [] => sample.zeros_like(),
                _ => sample
                    .eq(organs[rng.random_range(0..organs.len())])
                    .to_kind(Kind::Int64),
            }
        })
        .collect();
    Ok(Tensor::stack(&per_sample, 0))
}

/// Validation Dice of a deepgrow model: for each labelled organ of each volume, one
/// click deep inside it, then the Dice of the mask it gives (whole volumes, sliding
/// window over image and guidance; a 2D model's clicked slice).
pub fn deepgrow_dice(model: &Model, set: &[crate::dataset::Sample], overlap: f64) -> Result<f64> {
    let opts = crate::InferOptions {
        overlap: Some(overlap),
        ..Default::default()
    };
    let sw = crate::infer::sliding_window(model, &opts);
    let mut scores = Vec::new();
    for s in set {
        let size: [i64; 3] = std::array::from_fn(|d| s.image.size()[2 + d]);
        let truth = host_labels(&s.label)?.remove(0);
        let organs = truth.iter().copied().filter(|&v| v > 0).max().unwrap_or(0);
        for organ in 1..=organs {
            let inside: Vec<bool> = truth.iter().map(|&v| v == organ).collect();
            let Some((p, _)) = deepest_in_largest(&inside, size.map(|v| v as usize)) else {
                continue;
            };
            // A 2D model answers the clicked slice only, and is scored there.
            let (image, label, size, p) = if model.config.dimension() == 2 {
                let slice = |t: &Tensor| t.narrow(2, p[0], 1);
                let plane = [1, size[1], size[2]];
                (slice(&s.image), slice(&s.label), plane, [0, p[1], p[2]])
            } else {
                (s.image.shallow_clone(), s.label.shallow_clone(), size, p)
            };
            let clicks = vec![vec![p.map(|c| c as f64)], Vec::new()];
            let input = with_guidance(&image, &vec![clicks], size, model.config.guidance.sigma);
            let logits =
                tch::no_grad(|| sw.run(&input, |x| model.forward(x, crate::networks::Mode::EVAL)))?;
            let target = label.eq(i64::from(organ)).to_kind(Kind::Int64);
            if let Some(d) = mean_dice(&logits.argmax(1, true), &target, 2) {
                scores.push(d);
            }
        }
    }
    Ok(if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    })
}
