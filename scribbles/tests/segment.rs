//! `segment` end to end: quality on the CT-like phantom, the contract on strokes and
//! grids, and every refusal.

mod phantom;

use medlabel_imaging::Volume;
use medlabel_scribbles::{LabelInfo, ScribblesError, ScribblesParams, segment};
use phantom::{BACKGROUND, FOREGROUND, Phantom, dice, phantom};

/// 192 × 192 × 160 mm at 1.5 × 1.5 × 4 mm: the size of an abdominal CT, few voxels.
fn small_phantom() -> Phantom {
    phantom([128, 128, 40], [1.5, 1.5, 4.0], 15.0, 1)
}

fn assert_agrees_with_strokes(p: &Phantom, mask: &Volume<u8>) {
    for (v, (&s, &m)) in p.scribbles.data.iter().zip(&mask.data).enumerate() {
        if s == FOREGROUND {
            assert_eq!(m, 1, "foreground stroke at voxel {v} not in the mask");
        } else if s == BACKGROUND {
            assert_eq!(m, 0, "background stroke at voxel {v} in the mask");
        }
    }
}

#[test]
fn phantom_organ_is_found_with_monai_label_defaults() {
    let p = small_phantom();
    let mask = segment(&p.image, &p.scribbles, &ScribblesParams::default()).unwrap();
    assert_eq!((mask.dims, mask.affine), (p.image.dims, p.image.affine));
    assert!(mask.data.iter().all(|&m| m <= 1));
    let d = dice(&mask.data, &p.truth);
    assert!(d >= 0.85, "dice {d}");
    assert_agrees_with_strokes(&p, &mask);
}

#[test]
fn phantom_organ_is_found_on_the_native_grid() {
    let p = small_phantom();
    let params = ScribblesParams {
        pix_dim: None,
        ..ScribblesParams::default()
    };
    let mask = segment(&p.image, &p.scribbles, &params).unwrap();
    let d = dice(&mask.data, &p.truth);
    assert!(d >= 0.85, "dice {d}");
    assert_agrees_with_strokes(&p, &mask);
}

#[test]
fn phantom_organ_is_found_inside_an_roi() {
    let p = small_phantom();
    let params = ScribblesParams {
        roi: Some(p.roi),
        ..ScribblesParams::default()
    };
    let mask = segment(&p.image, &p.scribbles, &params).unwrap();
    let d = dice(&mask.data, &p.truth);
    assert!(d >= 0.85, "dice {d}");
    // Nothing outside the ROI.
    let [nx, ny, _] = mask.dims;
    for (v, &m) in mask.data.iter().enumerate() {
        let ijk = [v % nx, v / nx % ny, v / (nx * ny)];
        let inside = (0..3).all(|a| (p.roi[2 * a]..p.roi[2 * a + 1]).contains(&(ijk[a] as i64)));
        assert!(
            inside || m == 0,
            "voxel {ijk:?} outside the roi is foreground"
        );
    }
}

#[test]
fn roi_without_foreground_strokes_grows_from_its_centre() {
    // MONAI Label seeds a 10-voxel cube at the ROI's centre; the organ fills the ROI's
    // middle, so the cut still finds most of it.
    let p = small_phantom();
    let mut scribbles = p.scribbles.clone();
    scribbles.data.iter_mut().for_each(|s| {
        if *s == FOREGROUND {
            *s = 0.0;
        }
    });
    let params = ScribblesParams {
        roi: Some(p.roi),
        ..ScribblesParams::default()
    };
    let mask = segment(&p.image, &scribbles, &params).unwrap();
    let c: [usize; 3] = std::array::from_fn(|a| ((p.roi[2 * a] + p.roi[2 * a + 1]) / 2) as usize);
    let [nx, ny, _] = mask.dims;
    assert_eq!(mask.data[c[0] + nx * (c[1] + ny * c[2])], 1);
    let d = dice(&mask.data, &p.truth);
    assert!(d >= 0.8, "dice {d}");
}

#[test]
fn label_info_renames_the_stroke_labels() {
    let p = small_phantom();
    let expected = segment(&p.image, &p.scribbles, &ScribblesParams::default()).unwrap();
    // The Slicer plugin numbers segments in order: here the organ is 1, strokes 7 and 8,
    // and 2 and 3 mean nothing.
    let mut scribbles = p.scribbles.clone();
    scribbles.data.iter_mut().for_each(|s| {
        *s = match *s {
            BACKGROUND => 7.0,
            FOREGROUND => 8.0,
            _ => 0.0,
        }
    });
    scribbles.data[0] = 2.0;
    scribbles.data[1] = 3.0;
    let info = |name: &str, id| LabelInfo {
        name: Some(name.into()),
        id: Some(id),
    };
    let params = ScribblesParams {
        label_info: vec![
            info("spleen", 1),
            info("background_scribbles", 7),
            info("foreground_scribbles", 8),
        ],
        ..ScribblesParams::default()
    };
    let mask = segment(&p.image, &scribbles, &params).unwrap();
    assert_eq!(mask, expected);
}

#[test]
fn a_tight_voxel_budget_still_segments() {
    // The default crop resamples to ~150,000 voxels of 2.5 × 2.5 × 5 mm; a budget of
    // 20,000 makes them about twice as large on each axis.
    let p = small_phantom();
    let params = ScribblesParams {
        max_graph_voxels: 20_000,
        ..ScribblesParams::default()
    };
    let mask = segment(&p.image, &p.scribbles, &params).unwrap();
    assert_agrees_with_strokes(&p, &mask);
    let d = dice(&mask.data, &p.truth);
    assert!(d >= 0.85, "dice {d}");
}

#[test]
fn noisier_phantoms_still_reach_the_target() {
    // σ = 20 HU: the organ's 60 HU sit one σ from the 40 HU side of the tissue.
    for seed in [2, 3] {
        let p = phantom([128, 128, 40], [1.5, 1.5, 4.0], 20.0, seed);
        let mask = segment(&p.image, &p.scribbles, &ScribblesParams::default()).unwrap();
        let d = dice(&mask.data, &p.truth);
        assert!(d >= 0.85, "seed {seed}: dice {d}");
    }
}

fn tiny() -> (Volume<f32>, Volume<f32>) {
    let image = Volume::filled([8, 8, 4], medlabel_imaging::IDENTITY, 0.0f32);
    let mut scribbles = image.clone();
    scribbles.data[10] = FOREGROUND;
    scribbles.data[200] = BACKGROUND;
    (image, scribbles)
}

#[test]
fn scribbles_on_another_grid_are_refused() {
    let (image, scribbles) = tiny();
    let other = Volume::filled([8, 4, 8], image.affine, 0.0f32);
    let err = segment(&image, &other, &ScribblesParams::default()).unwrap_err();
    assert!(matches!(err, ScribblesError::GridMismatch(_)), "{err}");
    assert!(err.to_string().contains("[8, 8, 4] vs [8, 4, 8]"), "{err}");
    let mut shifted = scribbles.clone();
    shifted.affine[2][3] += 0.5;
    let err = segment(&image, &shifted, &ScribblesParams::default()).unwrap_err();
    assert!(matches!(err, ScribblesError::GridMismatch(_)), "{err}");
    // Within the tolerance is the same grid.
    shifted.affine[2][3] = scribbles.affine[2][3] + 1e-4;
    assert!(segment(&image, &shifted, &ScribblesParams::default()).is_ok());
}

#[test]
fn a_missing_class_is_refused() {
    let (image, scribbles) = tiny();
    let mut no_fg = scribbles.clone();
    no_fg.data[10] = 0.0;
    let err = segment(&image, &no_fg, &ScribblesParams::default()).unwrap_err();
    assert!(
        matches!(err, ScribblesError::NoForeground { label: 3 }),
        "{err}"
    );
    let mut no_bg = scribbles.clone();
    no_bg.data[200] = 0.0;
    let err = segment(&image, &no_bg, &ScribblesParams::default()).unwrap_err();
    assert!(
        matches!(err, ScribblesError::NoBackground { label: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("label 2"), "{err}");
    // An ROI supplies background outside it, unless it covers the whole image.
    let roi = |roi| ScribblesParams {
        roi: Some(roi),
        ..ScribblesParams::default()
    };
    assert!(segment(&image, &no_bg, &roi([0, 8, 0, 8, 0, 3])).is_ok());
    let err = segment(&image, &no_bg, &roi([0, 8, 0, 8, 0, 4])).unwrap_err();
    assert!(matches!(err, ScribblesError::NoBackground { .. }), "{err}");
}

#[test]
fn an_roi_selecting_nothing_is_refused() {
    let (image, scribbles) = tiny();
    for roi in [[8, 12, 0, 8, 0, 4], [2, 2, 0, 8, 0, 4], [0, 8, 0, 8, -4, 0]] {
        let params = ScribblesParams {
            roi: Some(roi),
            ..ScribblesParams::default()
        };
        let err = segment(&image, &scribbles, &params).unwrap_err();
        assert!(
            matches!(err, ScribblesError::EmptyRoi { .. }),
            "{roi:?}: {err}"
        );
        assert!(err.to_string().contains("selects no voxel"), "{err}");
    }
}

#[test]
fn non_finite_parameters_are_refused() {
    let (image, scribbles) = tiny();
    let params = ScribblesParams {
        sigma: f64::NAN,
        ..ScribblesParams::default()
    };
    let err = segment(&image, &scribbles, &params).unwrap_err();
    assert!(err.to_string().contains("sigma"), "{err}");
}

#[test]
fn volumes_whose_data_do_not_match_their_dims_are_refused() {
    let (mut image, scribbles) = tiny();
    image.data.pop();
    let err = segment(&image, &scribbles, &ScribblesParams::default()).unwrap_err();
    assert!(matches!(err, ScribblesError::Image(_)), "{err}");
}
