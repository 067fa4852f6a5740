"""Drives a running medlabel with the real MONAI Label Python client (monailabel 0.8.5).

Usage: client_compat.py <server_url> <work_dir> <studies_dir>. The server publishes the
starter model (no runner process: its jobs stay queued). Exits non-zero on the first failed
check; prints one JSON line of what it observed on success.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


def main():
    url, work, studies = sys.argv[1], sys.argv[2], os.path.realpath(sys.argv[3])
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
    # `path` is the image's file in the studies folder, as MONAI Label gives it.
    assert sample["path"] == os.path.join(studies, "spleen_10.nii.gz"), sample

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

    check_wire(client, url, studies, label_bytes)

    session = client.create_session(image_path)
    session_id = session["session_id"]
    assert session["session_info"]["expiry"] == 3600, session
    got = client.get_session(session_id)
    assert got["name"] == session_id, got
    # MONAI Label keeps a session in a folder of its own, under the upload's file name.
    assert os.path.isdir(got["path"]), got
    assert got["image"] == os.path.join(got["path"], "spleen_10.nii.gz"), got
    with open(got["image"], "rb") as f, open(image_path, "rb") as g:
        assert f.read() == g.read(), "session file differs"
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


def check_wire(client, url, studies, label_bytes):
    """The points where medlabel once differed from MONAI Label 0.8.5 on the wire."""
    image_file = os.path.join(studies, "spleen_10.nii.gz")
    label_file = os.path.join(studies, "labels", "final", "spleen_10.nii.gz")

    # Paths are files in the studies folder under MONAI Label's names.
    info = requests.get(f"{url}/datastore/image/info", params={"image": "spleen_10"}).json()
    assert info["path"] == image_file and info["source"] == "compat", info
    assert os.path.isfile(image_file), image_file
    with open(label_file, "rb") as f:
        assert f.read() == label_bytes, "the studies folder's label differs"
    train = requests.get(f"{url}/datastore/", params={"output": "train"}).json()
    assert {"image": image_file, "label": label_file} in train, train

    # The label info records who changed it (auth off: MONAI Label's "admin").
    r = requests.put(
        f"{url}/datastore/label/info",
        params={"label": "spleen_10", "tag": "final"},
        data={"info": json.dumps({"reviewed": True, "user": "someone-else"})},
    )
    assert r.status_code == 200, r.text
    got = requests.get(f"{url}/datastore/label/info", params={"label": "spleen_10", "tag": "final"}).json()
    assert got["reviewed"] is True and got["user"] == "admin", got

    # A label route without its tag: 422 at MONAI Label's `loc`, for every such route.
    for method, path, key in [
        ("GET", "/datastore/label", "label"),
        ("GET", "/datastore/label/info", "label"),
        ("DELETE", "/datastore/label", "id"),
    ]:
        r = requests.request(method, f"{url}{path}", params={key: "spleen_10"})
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "tag"], r.text
    assert client.download_label("spleen_10", "final")

    # /info/ lists the top-level labels by index; the model's labels are its own.
    info = client.info()
    assert info["labels"] == ["spleen"], info["labels"]
    assert info["models"]["segmentation_spleen"]["labels"] == {"spleen": 1}, info["models"]

    # `run_sync` answers with the method's result; `sum` counts slices along the first
    # array axis (the mask spans [4, 12) there: 8 slices of 8 x 4 voxels).
    r = requests.post(f"{url}/scoring/sum", params={"run_sync": "true"}, json={})
    assert r.status_code == 200, r.text
    assert r.json()["spleen_10"] == {"sum": 256, "slices": 8}, r.json()

    # Stopping training answers the job STOPPED with a last line, which Slicer shows as
    # status.get("result", status.get("details", [])[-1]).
    task = client.train_start("segmentation_spleen", {"max_epochs": 1})
    assert task["status"] == "SUBMITTED", task
    stopped = client.train_stop()
    assert stopped["status"] == "STOPPED", stopped
    shown = stopped.get("result", stopped.get("details", [])[-1])
    assert shown == "stopped before a runner took it", stopped
    assert client.train_status()["status"] == "STOPPED"


if __name__ == "__main__":
    main()
