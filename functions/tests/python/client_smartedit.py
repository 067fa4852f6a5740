"""Slicer's and OHIF's SmartEdit calls through the real MONAI Label Python client
(monailabel 0.8.5): 3D and 2D DeepGrow clicks and DeepEdit multi-label clicks.

Usage: client_smartedit.py <server_url> <work_dir>. The work dir holds what the Rust test
wrote: `ct.nii.gz` (a synthetic CT the models never saw) and `truth.nii.gz` (its spleen 1
and liver 2). Exits non-zero on the first failed check; prints one JSON line of what it
observed on success.
"""

import json
import os
import sys

import nibabel as nib
import nrrd
import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

DEEPGROW = "deepgrow_3d"
DEEPGROW_2D = "deepgrow_2d"
DEEPEDIT = "deepedit_spleen_liver"
# What Slicer and OHIF add to every infer request.
RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8"}


def centre(truth, label):
    """A click in the middle of an organ, as [i, j, k] voxel indices."""
    return np.round(np.argwhere(truth == label).mean(axis=0)).astype(int).tolist()


def dice(mask, truth):
    return 2.0 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())


def refused(client, model, params, why, image="ct"):
    try:
        client.infer(model, image, dict(params, **RESULT))
    except MONAILabelClientException as e:
        assert e.msg.startswith("Status: 422;") and why in e.msg, e.msg
        return
    raise AssertionError(f"{params} was accepted")


def main():
    url, work = sys.argv[1], sys.argv[2]
    client = MONAILabelClient(url, tmpdir=work, client_id="smartedit-test")

    # The SmartEdit panels appear for these types; Slicer sends clicks for every
    # top-level label, background included.
    info = client.info()
    deepgrow, deepedit = info["models"][DEEPGROW], info["models"][DEEPEDIT]
    assert (deepgrow["type"], deepgrow["dimension"]) == ("deepgrow", 3), deepgrow
    deepgrow_2d = info["models"][DEEPGROW_2D]
    assert (deepgrow_2d["type"], deepgrow_2d["dimension"]) == ("deepgrow", 2), deepgrow_2d
    assert (deepedit["type"], deepedit["dimension"]) == ("deepedit", 3), deepedit
    assert deepedit["labels"] == {"background": 0, "spleen": 1, "liver": 2}, deepedit
    assert {"background", "spleen", "liver"} <= set(info["labels"]), info["labels"]

    client.upload_image(os.path.join(work, "ct.nii.gz"), image_id="ct")
    truth = np.asarray(nib.load(os.path.join(work, "truth.nii.gz")).dataobj)
    spleen, liver = centre(truth, 1), centre(truth, 2)

    # Slicer's DeepGrow click (onClickDeepgrow): label, foreground, background.
    params = {"label": "spleen", "foreground": [spleen], "background": []}
    result_file, result = client.infer(DEEPGROW, "ct", dict(params, **RESULT))
    mask, _ = nrrd.read(result_file)
    assert mask.shape == truth.shape, (mask.shape, truth.shape)
    assert set(np.unique(mask)) <= {0, 1}, np.unique(mask)
    grow_dice = dice(mask == 1, truth == 1)
    assert grow_dice >= 0.8, grow_dice
    assert "latencies" in result, result

    # Slicer's 2D DeepGrow click: the clicks of the current slice and `slice`, its k
    # (a click on another slice is not for this one). The mask covers that slice only.
    k = spleen[2]
    params = {"label": "spleen", "foreground": [spleen, liver[:2] + [k + 3]],
              "background": [], "slice": k}
    result_file, _ = client.infer(DEEPGROW_2D, "ct", dict(params, **RESULT))
    mask, _ = nrrd.read(result_file)
    assert mask.shape == truth.shape, (mask.shape, truth.shape)
    assert set(np.unique(np.delete(mask, k, axis=2))) == {0}, "a slice was labelled but k"
    slice_dice = dice(mask[:, :, k] == 1, truth[:, :, k] == 1)
    assert slice_dice >= 0.8, slice_dice

    # OHIF's DeepEdit call: {<label>: [[i, j, k]], background: [...]}.
    params = {"spleen": [spleen], "liver": [liver], "background": [], "result_compress": False,
              "restore_label_idx": False}
    result_file, result = client.infer(DEEPEDIT, "ct", dict(params, **RESULT))
    assert result["label_names"] == {"background": 0, "spleen": 1, "liver": 2}, result
    mask, _ = nrrd.read(result_file)
    assert set(np.unique(mask)) <= {0, 1, 2}, np.unique(mask)
    edit_dice = [dice(mask == v, truth == v) for v in (1, 2)]
    assert min(edit_dice) >= 0.8, edit_dice

    # Slicer's multi-label DeepEdit call: a list for every top-level label, and `label`.
    params = {name: [] for name in info["labels"]}
    params.update({"liver": [liver], "label": "liver"})
    result_file, _ = client.infer(DEEPEDIT, "ct", dict(params, **RESULT))
    mask, _ = nrrd.read(result_file)
    assert dice(mask == 2, truth == 2) >= 0.8

    # A click outside the image and label names the model does not know: 422, nothing saved.
    refused(client, DEEPEDIT, {"spleen": [[truth.shape[0], 0, 0]]}, "outside the image")
    refused(client, DEEPGROW, {"foreground": [[0, -1, 0]], "background": []}, "outside the image")
    refused(client, DEEPGROW_2D, {"foreground": [spleen], "slice": k + 1}, "no click on slice")
    # The same CT with its slices (k) along R: a 2D model has no axial slice to answer.
    ct = nib.load(os.path.join(work, "ct.nii.gz"))
    affine = ct.affine.copy()
    affine[:, [0, 2]] = affine[:, [2, 0]]
    sagittal = os.path.join(work, "sagittal.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj), affine), sagittal)
    client.upload_image(sagittal, image_id="sagittal")
    refused(client, DEEPGROW_2D, {"foreground": [spleen], "slice": k}, "not axial", image="sagittal")
    refused(client, DEEPEDIT, {"kidney": [[1, 1, 1]]}, "unknown label")
    refused(client, DEEPEDIT, {"label": "kidney", "spleen": [spleen]}, "unknown label")
    objects = client.datastore()["objects"]
    assert objects["ct"]["labels"] == objects["sagittal"]["labels"] == {}, objects

    print(json.dumps({"ok": True, "deepgrow_dice": round(float(grow_dice), 4),
                      "deepgrow_2d_slice_dice": round(float(slice_dice), 4),
                      "deepedit_dice": [round(float(d), 4) for d in edit_dice]}))


if __name__ == "__main__":
    main()
