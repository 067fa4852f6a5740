"""Logs in to a medlabel with authentication on through the real MONAI Label Python
client (monailabel 0.8.5), as 3D Slicer's login does, then works with the token.

Usage: client_auth.py <server_url> <work_dir> <annotator> <password> <user> <password>.
The first account must hold monailabel-annotator, the second only monailabel-user.
Exits non-zero on the first failed check; prints one JSON line on success.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException


def status_of(call):
    """The HTTP status a failing client call reports (some calls keep it only in the
    message, "Status: <code>; Response: ...")."""
    try:
        call()
    except MONAILabelClientException as e:
        return e.status_code or int(e.msg.split(";")[0].removeprefix("Status: "))
    raise AssertionError("the call succeeded")


def main():
    url, work, annotator, annotator_password, user, user_password = sys.argv[1:7]
    client = MONAILabelClient(url, tmpdir=work, client_id="auth-test")

    assert client.auth_enabled() is True
    assert status_of(client.info) == 401
    assert status_of(lambda: client.auth_token(annotator, annotator_password + "x")) == 401
    assert status_of(lambda: client.auth_token("no-such-user", annotator_password)) == 401

    token = client.auth_token(annotator, annotator_password)
    assert token["token_type"] == "Bearer", token
    client.update_auth(token)
    assert client.auth_valid_token() is True

    info = client.info()
    assert info["version"] == "0.8.5", info

    # Real volumes: medlabel reads every upload whole before it records it.
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image_path = os.path.join(work, "spleen_7.nii.gz")
    ct = np.arange(12 * 12 * 6, dtype=np.int16).reshape(12, 12, 6) % 300 - 100
    nib.save(nib.Nifti1Image(ct, affine), image_path)
    label_path = os.path.join(work, "spleen_7_seg.nii.gz")
    mask = np.zeros((12, 12, 6), dtype=np.uint8)
    mask[3:9, 3:9, 1:5] = 1
    nib.save(nib.Nifti1Image(mask, affine), label_path)
    with open(label_path, "rb") as f:
        label_bytes = f.read()

    # First, as the client's multipart calls leave their content-type in the headers it
    # shares with create_session once a token is set (so, against MONAI Label too, a
    # session made after an upload carries a stale boundary).
    session = client.create_session(image_path)
    assert client.get_session(session["session_id"])["name"] == session["session_id"]

    assert client.upload_image(image_path, image_id="spleen_7", params={}) == {"image": "spleen_7"}
    sample = client.next_sample("first", {})
    assert sample["id"] == "spleen_7", sample
    saved = client.save_label("spleen_7", label_path, tag="final", params={})
    assert saved == {"image": "spleen_7", "label": "spleen_7"}, saved
    with open(client.download_label("spleen_7", "final"), "rb") as f:
        assert f.read() == label_bytes

    # A user without the annotator role reads but may not write, and never sees the
    # annotator's session.
    reader = MONAILabelClient(url, tmpdir=work, client_id="auth-test-reader")
    reader.update_auth(reader.auth_token(user, user_password))
    assert "spleen_7" in reader.datastore()["objects"]
    assert status_of(lambda: reader.upload_image(image_path, image_id="other", params={})) == 403
    assert status_of(lambda: reader.save_label("spleen_7", label_path, params={})) == 403
    assert status_of(lambda: reader.get_session(session["session_id"])) == 404
    assert status_of(lambda: reader.train_start("segmentation", {})) == 403

    # A token that is not medlabel's: 401, as with no token.
    client.update_auth({"token_type": "Bearer", "access_token": token["access_token"] + "x"})
    assert client.auth_valid_token() is False
    assert status_of(client.info) == 401

    print(json.dumps({"ok": True, "user": annotator}))


if __name__ == "__main__":
    main()
