"""The studies folder medlabel keeps, written through the API and read by MONAI Label.

Usage:
  studies_folder.py write <server_url> <work_dir>: uploads and labels through the real
      client (a second label version, a label info change, an image removed);
  studies_folder.py read <studies_dir>: opens the folder (medlabel stopped) with MONAI
      Label's own LocalDatastore and checks it finds the same images, labels and info.
Prints one JSON line on success.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
import requests
from monailabel.client import MONAILabelClient

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def volume(path, data):
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def mask(lo, hi):
    m = np.zeros((16, 16, 8), dtype=np.uint8)
    m[lo:hi, lo:hi, 2:6] = 1
    return m


def write(url, work):
    client = MONAILabelClient(url, tmpdir=work, client_id="folder-test")
    for n in range(3):
        ct = (np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8) * (n + 3)) % 500
        path = volume(os.path.join(work, f"case_{n}.nii.gz"), ct.astype(np.int16))
        assert client.upload_image(path, image_id=f"case_{n}") == {"image": f"case_{n}"}
    first = volume(os.path.join(work, "first.nii.gz"), mask(2, 8))
    second = volume(os.path.join(work, "second.nii.gz"), mask(4, 12))
    client.save_label("case_0", first, tag="final", params={"label_info": [{"name": "spleen", "idx": 1}]})
    client.save_label("case_0", second, tag="final", params={"label_info": [{"name": "spleen", "idx": 1}]})
    client.save_label("case_1", first, tag="final")
    r = requests.put(
        f"{url}/datastore/label/info",
        params={"label": "case_1", "tag": "final"},
        data={"info": json.dumps({"reviewed": "yes"})},
    )
    assert r.status_code == 200, r.text
    r = requests.delete(f"{url}/datastore/", params={"id": "case_2"})
    assert r.status_code == 200, r.text
    print(json.dumps({"ok": True}))


def local_datastore():
    """MONAI Label's LocalDatastore class. Its module imports two file helpers from
    `monailabel.utils.others.generic`, which imports torch and MONAI at load time; the
    test venv's torch is the CPU libtorch for tch (its CUDA libraries are not installed),
    so those two helpers are stood in for here. The datastore logic read is MONAI Label's."""
    import pathlib
    import types

    generic = types.ModuleType("monailabel.utils.others.generic")
    generic.file_ext = lambda name: "".join(pathlib.Path(name).suffixes)

    def remove_file(path):
        if os.path.exists(path):
            os.remove(path)

    generic.remove_file = remove_file
    sys.modules.setdefault("monailabel.utils.others.generic", generic)
    from monailabel.datastore.local import LocalDatastore

    return LocalDatastore


def read(studies):
    LocalDatastore = local_datastore()

    ds = LocalDatastore(studies, extensions=("*.nii.gz", "*.nii", "*.nrrd"))
    assert sorted(ds.list_images()) == ["case_0", "case_1"], ds.list_images()
    assert sorted(ds.get_labeled_images()) == ["case_0", "case_1"], ds.get_labeled_images()
    assert ds.get_unlabeled_images() == [], ds.get_unlabeled_images()
    # The latest version of case_0's label, under MONAI Label's name.
    label_uri = ds.get_label_uri("case_0", "final")
    assert label_uri == os.path.join(os.path.realpath(studies), "labels", "final", "case_0.nii.gz"), label_uri
    data = np.asanyarray(nib.load(label_uri).dataobj)
    assert (data == mask(4, 12)).all(), "case_0's label is not its latest version"
    info = ds.get_label_info("case_1", "final")
    assert info["reviewed"] == "yes" and info["user"] == "admin", info
    assert ds.get_label_info("case_0", "final")["label_info"] == [{"name": "spleen", "idx": 1}], ds.get_label_info("case_0", "final")
    image = ds.get_image_info("case_1")
    assert image["path"] == os.path.join(os.path.realpath(studies), "case_1.nii.gz"), image
    assert sorted(ds.datalist(), key=lambda d: d["image"]) == [
        {"image": os.path.join(os.path.realpath(studies), f"case_{n}.nii.gz"),
         "label": os.path.join(os.path.realpath(studies), "labels", "final", f"case_{n}.nii.gz")}
        for n in (0, 1)
    ], ds.datalist()
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3])
    else:
        read(sys.argv[2])
