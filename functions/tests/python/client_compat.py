"""Drives a running medlabel with the real MONAI Label Python client (monailabel 0.8.5).

Usage: client_compat.py <server_url> <work_dir>. Exits non-zero on the first failed
check; prints one JSON line of what it observed on success.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


def main():
    url, work = sys.argv[1], sys.argv[2]
    client = MONAILabelClient(url, tmpdir=work, client_id="compat-test")

    # Real volumes: medlabel reads every upload whole before it records it.
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image_path = os.path.join(work, "spleen_10.nii.gz")
    ct = np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8) % 300 - 100
    nib.save(nib.Nifti1Image(ct, affine), image_path)
    label_path = os.path.join(work, "spleen_10_seg.nii.gz")
    mask = np.zeros((16, 16, 8), dtype=np.uint8)
    mask[4:12, 4:12, 2:6] = 1
    nib.save(nib.Nifti1Image(mask, affine), label_path)
    with open(label_path, "rb") as f:
        label_bytes = f.read()

    # A label that does not fit its image is refused with MONAI Label's error shape.
    wrong_path = os.path.join(work, "spleen_10_wrong.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 7), dtype=np.uint8), affine), wrong_path)

    assert client.auth_enabled() is False

    info = client.info()
    assert info["version"] == "0.8.5", info
    assert "random" in info["strategies"], info
    before = info["datastore"]["total"]

    # The studies folder the server was started on was imported as is.
    imported = client.datastore()["objects"]["imported_1"]
    assert "final" in imported["labels"], imported
    assert info["datastore"]["completed"] >= 1, info

    uploaded = client.upload_image(image_path, image_id="spleen_10", params={"source": "compat"})
    assert uploaded == {"image": "spleen_10"}, uploaded

    ds = client.datastore()
    image_info = ds["objects"]["spleen_10"]["image"]["info"]
    assert image_info["source"] == "compat", image_info
    assert image_info["client_id"] == "compat-test", image_info
    assert client.info()["datastore"]["total"] == before + 1

    sample = client.next_sample("first", {})
    assert sample["id"], sample
    assert sample["strategy"]["first"]["client_id"] == "compat-test", sample

    try:
        client.save_label("spleen_10", wrong_path, tag="final")
        raise AssertionError("a label of another shape was saved")
    except MONAILabelClientException as e:
        # The client drops the status code for save_label; it is only in the message.
        assert e.msg.startswith("Status: 422;") and "shape mismatch" in e.msg, e.msg
    assert "final" not in client.datastore()["objects"]["spleen_10"]["labels"]

    saved = client.save_label("spleen_10", label_path, tag="final", params={"label_info": [{"name": "spleen", "idx": 1}]})
    assert saved == {"image": "spleen_10", "label": "spleen_10"}, saved
    downloaded = client.download_label("spleen_10", "final")
    assert downloaded.endswith(".nii.gz"), downloaded
    with open(downloaded, "rb") as f:
        assert f.read() == label_bytes, "label bytes differ"
    ds = client.datastore()
    assert "final" in ds["objects"]["spleen_10"]["labels"], ds

    session = client.create_session(image_path)
    session_id = session["session_id"]
    assert session["session_info"]["expiry"] == 3600, session
    got = client.get_session(session_id)
    assert got["name"] == session_id, got
    removed = client.remove_session(session_id)
    assert removed["name"] == session_id, removed
    try:
        client.get_session(session_id)
        raise AssertionError("removed session still readable")
    except MONAILabelClientException as e:
        assert e.status_code == 404, e.msg

    try:
        client.infer("segmentation", "spleen_10", {})
        raise AssertionError("infer without a model succeeded")
    except MONAILabelClientException as e:
        # The client drops the status code for infer; it is only in the message.
        assert e.msg.startswith("Status: 404;") and "NOT Found" in e.msg, e.msg

    print(json.dumps({"ok": True, "session": session_id, "sample": sample["id"]}))


if __name__ == "__main__":
    main()
