"""Drives a medlabel that runs the GPU runner with the real MONAI Label Python client:
inference on an uploaded CT (with a `label` upload the runner checks), training on the
final labels, and the train stats /info/ reports afterwards.

Usage: client_models.py <server_url> <work_dir>. Exits non-zero on the first failed
check; prints one JSON line of what it observed on success.
"""

import json
import os
import sys
import time

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

MODEL = "segmentation_spleen"


def synthetic_ct(path, seed):
    """A noisy CT-like volume with a bright ellipsoid (the starter model's "spleen")."""
    rng = np.random.default_rng(seed)
    shape = (96, 96, 64)
    z, y, x = np.meshgrid(*[np.arange(n) for n in reversed(shape)], indexing="ij")
    body = ((x - 48) / 40) ** 2 + ((y - 48) / 36) ** 2 + ((z - 32) / 30) ** 2 < 1
    organ = ((x - 60 - seed) / 12) ** 2 + ((y - 40) / 10) ** 2 + ((z - 30) / 9) ** 2 < 1
    volume = np.where(body, 0.0, -1000.0) + np.where(organ, 60.0, 0.0)
    volume = volume + rng.normal(0, 10, volume.shape)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0).astype(np.int16), affine), path)
    mask = organ.transpose(2, 1, 0).astype(np.uint8)
    return mask


def wait_for(what, check, timeout=240):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            result = check()
            if result:
                return result
        except MONAILabelClientException as e:
            last = e.msg
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last error: {last}")


def main():
    url, work = sys.argv[1], sys.argv[2]
    client = MONAILabelClient(url, tmpdir=work, client_id="models-test")

    info = client.info()
    assert MODEL in info["models"], info["models"]
    assert info["models"][MODEL]["labels"] == {"spleen": 1}, info["models"][MODEL]
    assert MODEL in info["trainers"], info["trainers"]

    for n in range(3):
        path = os.path.join(work, f"ct_{n}.nii.gz")
        mask = synthetic_ct(path, n)
        assert client.upload_image(path, image_id=f"ct_{n}") == {"image": f"ct_{n}"}
        if n < 2:
            label_path = os.path.join(work, f"ct_{n}_label.nii.gz")
            nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 2.0, 1.0])), label_path)
            client.save_label(f"ct_{n}", label_path, tag="final")

    # The runner may still be loading its model right after start-up.
    result_path, params = wait_for("inference", lambda: client.infer(MODEL, "ct_2", {"save_label": True}))
    assert result_path and os.path.getsize(result_path) > 0, result_path
    # MONAI Label's result JSON: the model's own labels, as /info/ lists them, and centroids.
    assert params["label_names"] == info["models"][MODEL]["labels"] == {"spleen": 1}, params
    assert params["centroids"] == {}, params
    assert set(params["latencies"]) >= {"pre", "infer", "invert", "post", "write", "total"}, params
    result = np.asanyarray(nib.load(result_path).dataobj)
    assert result.shape == (96, 96, 64), result.shape
    assert 0 < int((result > 0).sum()) < result.size // 4, int((result > 0).sum())
    ds = client.datastore()
    assert "original" in ds["objects"]["ct_2"]["labels"], ds["objects"]["ct_2"]

    # The `label` upload reaches the runner, which reads it and checks it fits the image.
    fitting = os.path.join(work, "ct_0_label.nii.gz")
    result_path, params = client.infer(MODEL, "ct_2", {}, label_in=fitting)
    assert params["label_names"] == {"spleen": 1}, params
    wrong = os.path.join(work, "wrong_label.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((96, 96, 63), np.uint8), np.diag([1.5, 1.5, 2.0, 1.0])), wrong)
    try:
        client.infer(MODEL, "ct_2", {}, label_in=wrong)
        raise AssertionError("a label of another shape reached no check")
    except MONAILabelClientException as e:
        assert e.msg.startswith("Status: 422;") and "does not fit the image" in e.msg, e.msg

    task = client.train_start(MODEL, {"max_epochs": 1, "val_split": 0.5})
    assert task["status"] in ("SUBMITTED", "RUNNING", "DONE"), task
    try:
        client.train_start(MODEL, {"max_epochs": 1})
        second = None
    except MONAILabelClientException as e:
        second = e.msg
    done = wait_for(
        "training",
        lambda: (lambda t: t if t["status"] in ("DONE", "ERROR") else None)(client.train_status()),
    )
    assert done["status"] == "DONE", done
    stats = client.info()["train_stats"][MODEL]
    assert stats["epoch"] == 1 and stats["total_epochs"] == 1, stats
    assert 0.0 <= stats["best_metric"] <= 1.0, stats

    print(json.dumps({"ok": True, "second_train": second, "best_metric": stats["best_metric"]}))


if __name__ == "__main__":
    main()
