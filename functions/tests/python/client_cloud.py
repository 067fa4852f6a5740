"""Moves CT-sized volumes through the cloud's volume service with the real MONAI Label
Python client (monailabel 0.8.5) and 3D Slicer's download code path (urllib).

Usage: client_cloud.py <server_url> <work_dir> <megabytes>. Writes an image and a label
of about <megabytes> MB each: the image a gzip'd int16 CT of noise (noise does not
compress, so the file is as large as a real CT of that size), the label an uncompressed
NIfTI of 0/1 (a trainable mask that large). Prints one JSON line on success.
"""

import email.message
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

import nibabel as nib
import numpy as np
from monailabel.client import MONAILabelClient


def sha256(path_or_bytes):
    if isinstance(path_or_bytes, bytes):
        return hashlib.sha256(path_or_bytes).hexdigest()
    with open(path_or_bytes, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def volumes(work, name, megabytes, side=256):
    """An image of about `megabytes` MB (.nii.gz) and a label as large (.nii)."""
    # CT's 12 bits of noise gzip to about 1.6 bytes a voxel; in-plane 256 x 256, as
    # many slices as the size needs (the uncompressed label then holds 2 bytes a voxel).
    slices = max(48, megabytes * 1_000_000 // int(1.5 * side * side))
    shape = (side, side, slices)
    lo, hi = 3 * side // 8, 5 * side // 8
    rng = np.random.default_rng(7)
    ct = rng.integers(-1024, 3072, size=shape, dtype=np.int16)
    # A brighter block the label marks, so the runner has an organ to learn.
    ct[lo:hi, lo:hi, slices // 4 : 3 * slices // 4] += 1200
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    image = os.path.join(work, f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(ct, affine), image)
    mask = np.zeros(shape, dtype=np.int16)
    mask[lo:hi, lo:hi, slices // 4 : 3 * slices // 4] = 1
    label = os.path.join(work, f"{name}_seg.nii")
    nib.save(nib.Nifti1Image(mask, affine), label)
    return image, label


def slicer_download(url, image_id):
    """Slicer's next-sample download: urllib.request, which follows the redirect."""
    query = urllib.parse.urlencode({"image": image_id})
    with urllib.request.urlopen(f"{url}/datastore/image?{query}") as reply:
        disposition = email.message.Message()
        disposition["content-disposition"] = reply.headers["content-disposition"]
        return reply.geturl(), disposition.get_filename(), reply.read()


def main():
    url, work, megabytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    image, label = volumes(work, "ct_large", megabytes)
    client = MONAILabelClient(url, tmpdir=work, client_id="cloud-test")

    uploaded = client.upload_image(image, image_id="ct_large", params={"source": "cloud"})
    assert uploaded == {"image": "ct_large"}, uploaded

    sample = client.next_sample("random", {})
    assert sample["id"] == "ct_large", sample

    # Slicer downloads the sample from the object store, under the file's own name.
    final_url, file_name, body = slicer_download(url, sample["id"])
    assert not final_url.startswith(url), f"not redirected: {final_url}"
    assert file_name == "ct_large.nii.gz", file_name
    assert sha256(body) == sha256(image), "the downloaded image differs"

    client.save_label("ct_large", label, tag="final")
    # The client's own download (http.client, which does not follow redirects) gets
    # the bytes from the service itself.
    downloaded = client.download_label("ct_large", "final")
    assert downloaded.endswith(".nii"), downloaded
    assert sha256(downloaded) == sha256(label), "the downloaded label differs"

    # Training takes at least two labelled images: a second, small one.
    small_image, small_label = volumes(work, "ct_small", 0, side=96)
    client.upload_image(small_image, image_id="ct_small")
    client.save_label("ct_small", small_label, tag="final")

    objects = client.datastore()["objects"]
    assert "final" in objects["ct_large"]["labels"], objects["ct_large"]

    started = client.train_start("segmentation_spleen", {"max_epochs": 1, "val_interval": 1})
    print(
        json.dumps(
            {
                "ok": True,
                "image_bytes": os.path.getsize(image),
                "label_bytes": os.path.getsize(label),
                "redirected_to": urllib.parse.urlsplit(final_url).netloc,
                "train": started,
            }
        )
    )


if __name__ == "__main__":
    main()
