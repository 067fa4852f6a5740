//! Scoring that needs no model: dice, sum and annotator agreement over real NIfTI
//! labels, each checked against values counted independently here.

mod common;

use common::{Harness, Req};
use medlabel_imaging::nifti::write_nifti_bytes;
use medlabel_imaging::{DataType, IDENTITY, Volume};
use serde_json::json;

const DIMS: [usize; 3] = [12, 10, 8];

/// A 0/1 mask with a box of ones over `[lo, hi)` on every axis.
fn boxed(lo: [usize; 3], hi: [usize; 3]) -> Vec<f32> {
    let mut data = vec![0.0; DIMS.iter().product()];
    for k in lo[2]..hi[2] {
        for j in lo[1]..hi[1] {
            for i in lo[0]..hi[0] {
                data[i + DIMS[0] * (j + DIMS[1] * k)] = 1.0;
            }
        }
    }
    data
}

fn nifti(data: &[f32]) -> Vec<u8> {
    let volume = Volume {
        data: data.to_vec(),
        dims: DIMS,
        affine: IDENTITY,
    };
    write_nifti_bytes(&volume, DataType::U8, true).unwrap()
}

/// 2|A∩B| / (|A|+|B|), counted voxel by voxel.
fn expected_dice(a: &[f32], b: &[f32]) -> f64 {
    let both = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x > 0.0 && **y > 0.0)
        .count() as f64;
    let (na, nb) = (
        a.iter().filter(|x| **x > 0.0).count() as f64,
        b.iter().filter(|x| **x > 0.0).count() as f64,
    );
    2.0 * both / (na + nb)
}

async fn put_label(h: &Harness, tag: &str, bytes: &[u8]) {
    let reply = h
        .send(
            Req::new("PUT", &format!("/datastore/label?image=ct&tag={tag}"))
                .multipart(&[], &[("label", "label.nii.gz", bytes)])
                .request(),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
}

async fn image_info(h: &Harness) -> serde_json::Value {
    h.send(Req::new("GET", "/datastore/image/info?image=ct").request())
        .await
        .json()
}

#[tokio::test]
async fn dice_sum_and_agreement_are_recorded() {
    let h = Harness::new().await;
    let h = Harness {
        state: h.state.clone().with_model_runner(None),
        ..h
    };
    let image = nifti(&boxed([0, 0, 0], [12, 10, 8]));
    let upload = h
        .send(
            Req::new("PUT", "/datastore/?image=ct")
                .multipart(&[], &[("file", "ct.nii.gz", &image)])
                .request(),
        )
        .await;
    assert_eq!(upload.status, 200);

    let final_mask = boxed([2, 2, 1], [8, 7, 5]);
    let original_mask = boxed([4, 3, 2], [10, 9, 7]);
    put_label(&h, "final", &nifti(&final_mask)).await;
    put_label(&h, "original", &nifti(&original_mask)).await;

    let task = h
        .send(Req::new("POST", "/scoring/dice").json(json!({})).request())
        .await;
    assert_eq!(task.status, 200);
    assert_eq!(task.json()["status"], "DONE");
    let dice = image_info(&h).await["dice"].as_f64().unwrap();
    assert!(
        (dice - expected_dice(&final_mask, &original_mask)).abs() < 1e-9,
        "{dice}"
    );

    h.send(Req::new("POST", "/scoring/sum").json(json!({})).request())
        .await;
    let label_info = h
        .send(Req::new("GET", "/datastore/label/info?label=ct&tag=final").request())
        .await
        .json();
    assert_eq!(label_info["sum"], 6 * 5 * 4);
    // MONAI Label counts slices along the first array axis: the box spans i in [2, 8).
    assert_eq!(label_info["slices"], 6);

    // `run_sync` answers with the method's result, as MONAI Label's synchronous run does:
    // `{image: dice}`, and for `sum` `{image: {sum, slices}}` keyed by image, so the
    // `original` label's values (scored after `final`) are the ones left.
    let dice_now = h
        .send(
            Req::new("POST", "/scoring/dice?run_sync=true")
                .json(json!({}))
                .request(),
        )
        .await;
    assert_eq!(dice_now.status, 200);
    assert_eq!(dice_now.json(), json!({"ct": dice}));
    let sum_now = h
        .send(
            Req::new("POST", "/scoring/sum?run_sync=true")
                .json(json!({}))
                .request(),
        )
        .await;
    assert_eq!(
        sum_now.json(),
        json!({"ct": {"sum": 6 * 6 * 5, "slices": 6}})
    );

    // Two annotators' own tags: agreement is their Dice.
    let alice = boxed([1, 1, 1], [7, 7, 7]);
    let bob = boxed([2, 1, 1], [9, 7, 6]);
    put_label(&h, "alice", &nifti(&alice)).await;
    put_label(&h, "bob", &nifti(&bob)).await;
    h.send(
        Req::new("POST", "/scoring/agreement")
            .json(json!({}))
            .request(),
    )
    .await;
    let agreement = image_info(&h).await["agreement"].as_f64().unwrap();
    assert!(
        (agreement - expected_dice(&alice, &bob)).abs() < 1e-9,
        "{agreement}"
    );

    // An annotator can ask for a tag of its own instead of `final`.
    let own = h
        .send(
            Req::new("PUT", "/datastore/label?image=ct&tag=final")
                .multipart(
                    &[("params", r#"{"annotator_tag": true, "client_id": "carol"}"#)],
                    &[("label", "label.nii.gz", &nifti(&alice))],
                )
                .request(),
        )
        .await;
    assert_eq!(own.status, 200);
    let carol = h
        .send(Req::new("GET", "/datastore/label/info?label=ct&tag=carol").request())
        .await
        .json();
    assert_eq!(carol["annotator_tag"], true);
    let finals = h
        .send(Req::new("GET", "/datastore/label?label=ct&tag=final").request())
        .await;
    assert_eq!(
        finals.body,
        nifti(&final_mask),
        "final stays the reviewer's"
    );

    let status = h.send(Req::new("GET", "/scoring/").request()).await.json();
    assert_eq!(status["request"]["method"], "agreement");
    assert_eq!(status["status"], "DONE");
    let unknown = h
        .send(Req::new("POST", "/scoring/nope").json(json!({})).request())
        .await;
    assert_eq!(unknown.status, 404);
}
