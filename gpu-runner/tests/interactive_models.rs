//! The shipped click-guided starter models on synthetic volumes from seeds they never
//! saw (they trained on seeds 0–15): clicks placed as a user would, where the mask is
//! most wrong, must make the masks better.

use std::path::Path;

use medlabel_imaging::Volume;
use medlabel_runner::guidance::{Click, Clicks, error_clicks};
use medlabel_runner::interactive::{AutoMask, answer};
use medlabel_runner::{InferOptions, Model, synth};
use tch::Device;

/// The starter models' training geometry (`make-sample` in their READMEs).
const DIMS: [usize; 3] = [128, 128, 80];
const SPACING: [f64; 3] = [1.5, 1.5, 2.5];
const HELD_OUT: [u64; 4] = [5000, 5001, 5002, 5003];

fn starter(name: &str) -> Model {
    tch::set_num_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    Model::load(&dir, Device::Cpu).unwrap()
}

fn dice(mask: &Volume<u8>, truth: &Volume<u8>, label: u8) -> f64 {
    let (mut both, mut sum) = (0usize, 0usize);
    for (&m, &t) in mask.data.iter().zip(&truth.data) {
        both += usize::from(m == label && t == label);
        sum += usize::from(m == label) + usize::from(t == label);
    }
    2.0 * both as f64 / sum.max(1) as f64
}

/// The voxel order of a volume, `[k, j, i]`, as the click helpers take it.
fn tensor_dims(v: &Volume<u8>) -> [usize; 3] {
    [v.dims[2], v.dims[1], v.dims[0]]
}

/// The click a user makes next: in the largest region any label is wrong, at its
/// deepest voxel, on the channel of the label that is really there.
fn next_click(mask: &Volume<u8>, truth: &Volume<u8>, labels: &[i64]) -> (usize, Click) {
    let errors = error_clicks(&truth.data, &mask.data, tensor_dims(truth), labels);
    let (channel, (voxel, _)) = errors
        .into_iter()
        .enumerate()
        .filter_map(|(c, e)| e.map(|e| (c, e)))
        .max_by_key(|(_, (_, size))| *size)
        .expect("the mask has an error left");
    (channel, [voxel[2], voxel[1], voxel[0]])
}

#[test]
fn deepedit_improves_with_every_click_and_reaches_a_dice_of_0_9() {
    let model = starter("deepedit_spleen_liver");
    let labels = medlabel_runner::guidance::channel_labels(&model.config);
    let opts = InferOptions::default();
    let clicks_made = 5;
    let mut mean = vec![0.0; clicks_made + 1];
    for seed in HELD_OUT {
        let (image, truth) = synth::labelled_case(seed, DIMS, SPACING, true);
        let mut auto = AutoMask::default();
        let mut clicks = Clicks {
            channels: vec![Vec::new(); labels.len()],
        };
        let mut mask = answer(&model, &image, &clicks, &mut auto, &opts).unwrap().0;
        for n in 0..=clicks_made {
            if n > 0 {
                let (channel, click) = next_click(&mask, &truth, &labels);
                clicks.channels[channel].push(click);
                mask = answer(&model, &image, &clicks, &mut auto, &opts).unwrap().0;
            }
            let organs = (dice(&mask, &truth, 1) + dice(&mask, &truth, 2)) / 2.0;
            mean[n] += organs / HELD_OUT.len() as f64;
        }
    }
    eprintln!("mean Dice (spleen, liver) by click: {mean:.4?}");
    for n in 1..=clicks_made {
        assert!(mean[n] > mean[n - 1], "click {n} did not help: {mean:?}");
    }
    assert!(mean[clicks_made] >= 0.9, "{mean:?}");
}

#[test]
fn deepgrow_segments_the_organ_that_was_clicked() {
    let model = starter("deepgrow_3d");
    let opts = InferOptions::default();
    let mut auto = AutoMask::default();
    for seed in HELD_OUT {
        let (image, truth) = synth::labelled_case(seed, DIMS, SPACING, true);
        for organ in [1u8, 2] {
            let organ_only = truth.with_data(
                truth
                    .data
                    .iter()
                    .map(|&t| u8::from(t == organ))
                    .collect(),
            );
            let empty = organ_only.with_data(vec![0; organ_only.len()]);
            // The first click: where the empty mask misses the organ most.
            let (_, click) = next_click(&empty, &organ_only, &[1]);
            let clicks = Clicks {
                channels: vec![vec![click], Vec::new()],
            };
            let (mask, _) = answer(&model, &image, &clicks, &mut auto, &opts).unwrap();
            let d = dice(&mask, &organ_only, 1);
            eprintln!("seed {seed} organ {organ}: Dice {d:.3}");
            assert!(d > 0.8, "seed {seed} organ {organ}: Dice {d}");
        }
    }
}
