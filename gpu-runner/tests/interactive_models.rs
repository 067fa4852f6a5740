//! The shipped click-guided starter models on synthetic volumes from seeds they never
//! saw (they trained on seeds 0–15): clicks placed as a user would, where the mask is
//! most wrong, must make the masks better.

use std::path::Path;

use medlabel_imaging::Volume;
use medlabel_runner::guidance::{Click, Clicks};
use medlabel_runner::interaction::largest_error;
use medlabel_runner::interactive::{AutoMask, answer};
use medlabel_runner::{InferOptions, Model, synth};
use tch::Device;

/// The starter models' training geometry (`make-sample` in their READMEs).
const DIMS: [usize; 3] = [128, 128, 80];
const SPACING: [f64; 3] = [1.5, 1.5, 2.5];
const HELD_OUT: std::ops::Range<u64> = 5000..5016;
/// A user clicks where the mask is wrong by more than a voxel's outline: errors must
/// be two voxels deep (of 1.5 mm; the models see 3 mm voxels).
const MIN_DEPTH: f32 = 2.0;

fn starter(name: &str) -> Model {
    tch::set_num_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
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

/// The click a user makes next: in the largest region any label is wrong (by more
/// than its outline), at its deepest voxel, on the channel of the label that is
/// really there; as `[i, j, k]`.
fn next_click(mask: &Volume<u8>, truth: &Volume<u8>, labels: &[i64]) -> Option<(usize, Click)> {
    let dims = [truth.dims[2], truth.dims[1], truth.dims[0]];
    let (channel, voxel) = largest_error(&truth.data, &mask.data, dims, labels, MIN_DEPTH)?;
    Some((channel, [voxel[2], voxel[1], voxel[0]].map(|v| v as i64)))
}

/// A user's session per held-out volume: DeepEdit's automatic mask, then up to five
/// clicks, each where the mask is most wrong, until no error is left to click (a user
/// who stops keeps the last mask). No click makes a volume worse, the mean over the
/// volumes rises with every click some volume still needed, every volume ends at a
/// mean organ Dice ≥ 0.9, and the ones the automatic mask gets badly wrong (seeds 5007
/// and 5015) are rescued by the clicks.
#[test]
fn deepedit_clicks_correct_the_automatic_mask_to_a_dice_of_0_9() {
    let model = starter("deepedit_spleen_liver");
    let labels = medlabel_runner::guidance::channel_labels(&model.config);
    let opts = InferOptions::default();
    let clicks_allowed = 5;
    let mut by_click = vec![0.0; clicks_allowed + 1];
    let mut clicked = vec![false; clicks_allowed + 1];
    for seed in HELD_OUT {
        let (image, truth) = synth::labelled_case(seed, DIMS, SPACING, true);
        let organs = |mask: &Volume<u8>| (dice(mask, &truth, 1) + dice(mask, &truth, 2)) / 2.0;
        let mut auto = AutoMask::default();
        let mut clicks = Clicks {
            channels: vec![Vec::new(); labels.len()],
        };
        let mut mask = answer(&model, &image, &clicks, &mut auto, &opts).unwrap().0;
        let mut scores = vec![organs(&mask)];
        while scores.len() <= clicks_allowed {
            let Some((channel, click)) = next_click(&mask, &truth, &labels) else {
                break;
            };
            clicks.channels[channel].push(click);
            mask = answer(&model, &image, &clicks, &mut auto, &opts).unwrap().0;
            scores.push(organs(&mask));
        }
        eprintln!("seed {seed}: mean organ Dice by click {scores:.4?}");
        let (first, last) = (scores[0], scores[scores.len() - 1]);
        assert!(last >= 0.9, "seed {seed}: {scores:?}");
        assert!(
            scores.windows(2).all(|pair| pair[1] >= pair[0]),
            "seed {seed}: a click made the mask worse: {scores:?}"
        );
        for made in &mut clicked[1..scores.len()] {
            *made = true;
        }
        if seed == 5007 || seed == 5015 {
            assert!(first < 0.75 && last > first + 0.2, "{scores:?}");
        }
        // A user who stops clicking keeps the last mask.
        for (n, total) in by_click.iter_mut().enumerate() {
            *total += scores[n.min(scores.len() - 1)] / HELD_OUT.count() as f64;
        }
    }
    eprintln!("mean over volumes by click: {by_click:.4?}");
    for n in 1..=clicks_allowed {
        let rose = by_click[n] > by_click[n - 1] || !clicked[n] && by_click[n] == by_click[n - 1];
        assert!(rose, "click {n} did not raise the mean: {by_click:?}");
    }
    assert!(
        clicked[2],
        "the held-out volumes must ask for more than one click"
    );
}

#[test]
fn deepgrow_segments_the_organ_that_was_clicked() {
    let model = starter("deepgrow_3d");
    let opts = InferOptions::default();
    let mut auto = AutoMask::default();
    for_each_organ(|seed, image, organ, organ_only| {
        let empty = organ_only.with_data(vec![0; organ_only.len()]);
        // The first click: where the empty mask misses the organ most.
        let (_, click) = next_click(&empty, organ_only, &[1]).unwrap();
        let clicks = Clicks {
            channels: vec![vec![click], Vec::new()],
        };
        let (mask, _) = answer(&model, image, &clicks, &mut auto, &opts).unwrap();
        let d = dice(&mask, organ_only, 1);
        eprintln!("seed {seed} organ {organ}: Dice {d:.3}");
        assert!(d > 0.8, "seed {seed} organ {organ}: Dice {d}");
    });
}

/// Calls `check(seed, image, organ, organ_only)` for the spleen (1) and the liver (2)
/// of each held-out volume, `organ_only` the organ's mask (1) against everything else.
fn for_each_organ(mut check: impl FnMut(u64, &Volume<f32>, u8, &Volume<u8>)) {
    for seed in HELD_OUT {
        let (image, truth) = synth::labelled_case(seed, DIMS, SPACING, true);
        for organ in [1u8, 2] {
            let organ_only =
                truth.with_data(truth.data.iter().map(|&t| u8::from(t == organ)).collect());
            check(seed, &image, organ, &organ_only);
        }
    }
}

/// Slice `k` of `v` as a volume one voxel deep.
fn slice_of(v: &Volume<u8>, k: usize) -> Volume<u8> {
    let plane = v.dims[0] * v.dims[1];
    Volume {
        data: v.data[k * plane..(k + 1) * plane].to_vec(),
        dims: [v.dims[0], v.dims[1], 1],
        affine: v.affine,
    }
}

/// 2D DeepGrow as Slicer uses it: a click on an organ on one slice, where the empty
/// mask misses it most, gives that slice's mask and labels no other slice. For each
/// organ of each volume, on the slice through its deepest voxel and on the slices
/// halfway from there to its first and last (where its cross-section is smaller and
/// its neighbours differ): slice Dice ≥ 0.9 for every click, and ≥ 0.95 on average.
#[test]
fn deepgrow_2d_segments_the_clicked_organ_on_its_slice() {
    let model = starter("deepgrow_2d");
    let opts = InferOptions::default();
    let mut auto = AutoMask::default();
    let mut scores = Vec::new();
    for_each_organ(|seed, image, organ, organ_only| {
        let empty = organ_only.with_data(vec![0; organ_only.len()]);
        let (_, deepest) = next_click(&empty, organ_only, &[1]).unwrap();
        let present: Vec<usize> = (0..DIMS[2])
            .filter(|&k| slice_of(organ_only, k).data.contains(&1))
            .collect();
        let (k, first, last) = (deepest[2] as usize, present[0], present[present.len() - 1]);
        for k in [k, (first + k) / 2, (k + last) / 2] {
            let truth_k = slice_of(organ_only, k);
            let (_, c) = next_click(&slice_of(&empty, k), &truth_k, &[1]).unwrap();
            let clicks = Clicks {
                channels: vec![vec![[c[0], c[1], k as i64]], Vec::new()],
            };
            let (mask, _) = answer(&model, image, &clicks, &mut auto, &opts).unwrap();
            let mask_k = slice_of(&mask, k);
            let labelled = |v: &Volume<u8>| v.data.iter().filter(|&&v| v != 0).count();
            assert_eq!(
                labelled(&mask),
                labelled(&mask_k),
                "seed {seed}: other slices"
            );
            let d = dice(&mask_k, &truth_k, 1);
            eprintln!("seed {seed} organ {organ} slice {k}: Dice {d:.3}");
            assert!(d >= 0.9, "seed {seed} organ {organ} slice {k}: Dice {d}");
            scores.push(d);
        }
    });
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    eprintln!("mean slice Dice over {} clicks: {mean:.4}", scores.len());
    assert!(mean >= 0.95, "{scores:?}");
}
