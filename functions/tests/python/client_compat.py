"""Drives a running medlabel with the real MONAI Label Python client (monailabel 0.8.5).

Usage: client_compat.py <server_url> <work_dir>. Exits non-zero on the first failed
check; prints one JSON line of what it observed on success.
"""

import json
import os
import sys

from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


def main():
    url, work = sys.argv[1], sys.argv[2]
    client = MONAILabelClient(url, tmpdir=work, client_id="compat-test")

    image_path = os.path.join(work, "spleen_10.nii.gz")
    image_bytes = bytes(range(256)) * 40
    with open(image_path, "wb") as f:
        f.write(image_bytes)
    label_path = os.path.join(work, "spleen_10_seg.nii.gz")
    label_bytes = b"\x00\x01\x02label" * 100
    with open(label_path, "wb") as f:
        f.write(label_bytes)

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
