"""Slicer's scribbles call through the real MONAI Label Python client (monailabel 0.8.5).

Usage: client_scribbles.py <server_url> <work_dir>. The work dir holds what the Rust test
wrote: `ct.nii.gz` (a CT-like phantom), `scribbles.nrrd` (strokes on three slices, as
Slicer exports its segments: organ 1, background_scribbles 2, foreground_scribbles 3),
`truth.nii.gz` (the organ) and `wrong.nrrd` (scribbles one slice short). Exits non-zero
on the first failed check; prints one JSON line of what it observed on success.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

METHOD = "Histogram+GraphCut"


def main():
    url, work = sys.argv[1], sys.argv[2]
    client = MONAILabelClient(url, tmpdir=work, client_id="scribbles-test")

    # Slicer shows its Scribbles panel for models of this type and sends their config.
    info = client.info()
    method = info["models"][METHOD]
    assert method["type"] == "scribbles", method
    assert method["dimension"] == 3, method
    assert method["config"] == {"lamda": 1.0, "sigma": 0.1, "num_bins": 64}, method

    client.upload_image(os.path.join(work, "ct.nii.gz"), image_id="ct")

    # Slicer's onUpdateScribbles: the method's config, roi, label_info, selected label.
    params = dict(method["config"])
    params.update(
        {
            "roi": [],
            "label_info": [
                {"name": "organ", "id": 1},
                {"name": "background_scribbles", "id": 2},
                {"name": "foreground_scribbles", "id": 3},
            ],
            "selected_label_name": "organ",
            "result_extension": ".nii.gz",
            "result_dtype": "uint8",
        }
    )
    result_file, result = client.infer(METHOD, "ct", params, label_in=os.path.join(work, "scribbles.nrrd"))
    for key in ("label_names", "latencies", "centroids", "bbox"):
        assert key in result, result
    mask = np.asarray(nib.load(result_file).dataobj)
    truth = np.asarray(nib.load(os.path.join(work, "truth.nii.gz")).dataobj) > 0
    assert mask.shape == truth.shape, (mask.shape, truth.shape)
    assert set(np.unique(mask)) <= {0, 1}, np.unique(mask)
    dice = 2.0 * np.logical_and(mask == 1, truth).sum() / ((mask == 1).sum() + truth.sum())
    assert dice >= 0.85, dice

    # Scribbles of another shape than the image: refused, nothing saved.
    try:
        client.infer(METHOD, "ct", dict(params, save_label=True), label_in=os.path.join(work, "wrong.nrrd"))
        raise AssertionError("scribbles of the wrong shape were accepted")
    except MONAILabelClientException as e:
        assert e.msg.startswith("Status: 422;") and "grid" in e.msg, e.msg
    labels = client.datastore()["objects"]["ct"]["labels"]
    assert labels == {}, labels

    print(json.dumps({"ok": True, "dice": round(float(dice), 4), "latencies": result["latencies"]}))


if __name__ == "__main__":
    main()
