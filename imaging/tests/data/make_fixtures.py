"""Writes the nibabel-made NIfTI fixtures that tests/nibabel_fixtures.rs reads.

Run with the team venv: /root/.cache/medlabel/py/bin/python make_fixtures.py
Each fixture has a JSON sidecar with nibabel's own reading of it (affine and
scaled voxel values, flattened i-fastest), so the Rust reader is checked against an
independent implementation rather than against itself.
"""

import json
import pathlib

import nibabel as nib
import numpy as np

HERE = pathlib.Path(__file__).parent
rng = np.random.default_rng(7)


def save(img, name):
    path = HERE / name
    nib.save(img, str(path))
    back = nib.load(str(path))
    data = np.asarray(back.get_fdata(dtype=np.float64))
    (HERE / (name + ".json")).write_text(json.dumps({
        "dims": list(data.shape),
        "affine": back.affine.tolist(),
        "data": data.flatten(order="F").tolist(),
    }))


# NIfTI-1, big-endian int16, qform only (oblique, left-handed), scl_slope/inter.
theta = np.deg2rad(25)
rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
aff = np.eye(4)
aff[:3, :3] = rot @ np.diag([0.9, 1.1, -3.0])
aff[:3, 3] = [-90.5, 40.0, 12.25]
arr = rng.integers(-300, 300, size=(6, 5, 4)).astype(">i2")
hdr = nib.Nifti1Header(endianness=">")
img = nib.Nifti1Image(arr, None, hdr)
img.set_qform(aff, code=1)
img.set_sform(None, code=0)
img.header.set_slope_inter(0.5, -7.0)
save(img, "be_int16_qform.nii.gz")

# NIfTI-2, little-endian float64, sform with shear-free LPS orientation.
aff2 = np.array([[-0.7, 0, 0, 100.0], [0, -0.7, 0, 120.0], [0, 0, 1.25, -50.0], [0, 0, 0, 1]])
arr2 = rng.normal(size=(4, 3, 5)) * 100.0
img2 = nib.Nifti2Image(arr2, aff2)
img2.set_qform(None, code=0)
save(img2, "nifti2_f64.nii")
