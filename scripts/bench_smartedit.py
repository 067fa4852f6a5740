"""Click → mask round trip over HTTP (issue #18), timed from a client on loopback.

Usage: bench_smartedit.py <server_url> <image.nii.gz> <truth.nii.gz> [rounds]
       [--deepgrow NAME] [--deepgrow-2d NAME] [--deepedit NAME] [--scribbles NAME]
       (a NAME of - skips it)

Uploads the image as `ct`, waits until the server answers, then times `POST
/infer/<model>?image=ct` until the whole reply (the `.nrrd` mask) is read:
Slicer's DeepGrow click (`foreground` at the spleen, `background` empty; for a 2D
model with `slice`, the click's k, as Slicer sends it), OHIF's
DeepEdit call (`{spleen: [...], liver: [], background: []}`, and with a liver click too,
which widens the region to both organs), each click a voxel away from the last so no two
requests are the same, and Slicer's scribbles call (foreground and background strokes
across the spleen on three slices, uploaded as `label`). The first DeepEdit call on an
image makes its automatic segmentation; it is timed apart. The same requests go to
medlabel and to MONAI Label's own server (scripts/peer_app). Prints one JSON line, with
the server's own stage timings (medians of the last calls) where its replies carry them.
"""

import argparse
import email
import json
import os
import statistics
import tempfile
import time

import nibabel as nib
import numpy as np
import requests

RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "bench"}
SCRIBBLES_LABEL_INFO = [
    {"name": "spleen", "id": 1},
    {"name": "background_scribbles", "id": 2},
    {"name": "foreground_scribbles", "id": 3},
]

RUNNER = {}


def infer(url, model, params, label=None):
    start = time.perf_counter()
    files = {"params": (None, json.dumps(dict(params, **RESULT)))}
    if label:
        with open(label, "rb") as f:
            files["label"] = (os.path.basename(label), f.read())
    r = requests.post(f"{url}/infer/{model}?image=ct", files=files)
    body = r.content
    elapsed = time.perf_counter() - start
    assert r.status_code == 200 and len(body) > 1000, (r.status_code, body[:300])
    latencies = runner_latencies(r.headers.get("content-type", ""), body)
    if latencies:
        RUNNER.setdefault(model, []).append(latencies)
    return elapsed


def runner_latencies(content_type, body):
    """The reply's `params` part: the server's stage timings (seconds), if any."""
    if not content_type.startswith("multipart/"):
        return {}
    reply = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in reply.walk():
        if part.get_filename() is None and not part.is_multipart():
            latencies = json.loads(part.get_payload(decode=True)).get("latencies", {})
            return {k: v for k, v in latencies.items() if isinstance(v, (int, float))}
    return {}


def median_latencies(model):
    runs = RUNNER[model][-20:]
    return {k: round(1000 * statistics.median(r[k] for r in runs), 1) for k in runs[0]}


def summary(times):
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": round(statistics.median(ms), 1), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
            "min_ms": round(ms[0], 1), "n": len(ms)}


def scribbles_file(truth_file, work):
    """Strokes across the spleen on three axial slices: foreground (3) inside it,
    background (2) beyond its edges on the same lines, as Slicer exports them."""
    truth_image = nib.load(truth_file)
    truth = np.asarray(truth_image.dataobj)
    ci, cj, ck = np.round(np.argwhere(truth == 1).mean(axis=0)).astype(int)
    strokes = np.zeros(truth.shape, np.uint8)
    organ_j = np.argwhere(truth[ci, :, ck] == 1)[:, 0]
    line = slice(max(organ_j.min() - 12, 0), organ_j.max() + 12)
    for k in (ck - 4, ck, ck + 4):
        for i in (ci - 1, ci, ci + 1):
            strokes[i, line, k] = np.where(truth[i, line, k] == 1, 3, 2)
    path = os.path.join(work, "scribbles.nii.gz")
    nib.save(nib.Nifti1Image(strokes, truth_image.affine), path)
    return path


def wait_until_answering(request):
    deadline = time.time() + 300
    while True:
        try:
            return request()
        except (AssertionError, requests.ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("image")
    ap.add_argument("truth")
    ap.add_argument("rounds", nargs="?", type=int, default=20)
    ap.add_argument("--deepgrow", default="deepgrow_3d")
    ap.add_argument("--deepgrow-2d", default="deepgrow_2d")
    ap.add_argument("--deepedit", default="deepedit_spleen_liver")
    ap.add_argument("--scribbles", default="Histogram+GraphCut")
    args = ap.parse_args()
    url, rounds = args.url, args.rounds
    wait_until_answering(lambda: requests.get(f"{url}/info/").raise_for_status())
    with open(args.image, "rb") as f:
        r = requests.put(f"{url}/datastore/?image=ct", files={"file": ("ct.nii.gz", f)},
                         data={"params": json.dumps({"client_id": "bench"})})
    assert r.status_code == 200, r.text
    truth = np.asarray(nib.load(args.truth).dataobj)
    centre = {v: np.round(np.argwhere(truth == v).mean(axis=0)).astype(int) for v in (1, 2)}

    def click(label, n):
        return (centre[label] + [n % 3 - 1, (n // 3) % 3 - 1, 0]).tolist()

    report = {"image": list(truth.shape)}
    if args.deepgrow != "-":
        first = {"foreground": [click(1, 0)], "background": []}
        wait_until_answering(lambda: infer(url, args.deepgrow, first))
        report["deepgrow_click"] = summary(
            [infer(url, args.deepgrow, {"label": "spleen", "foreground": [click(1, n)], "background": []})
             for n in range(rounds)])
    if args.deepgrow_2d != "-":
        def slice_click(n):
            point = click(1, n)
            return {"label": "spleen", "foreground": [point], "background": [], "slice": point[2]}
        wait_until_answering(lambda: infer(url, args.deepgrow_2d, slice_click(0)))
        report["deepgrow_2d_click"] = summary([infer(url, args.deepgrow_2d, slice_click(n))
                                               for n in range(rounds)])
    if args.deepedit != "-":
        auto = {"spleen": [], "liver": [], "background": []}
        report["deepedit_first_call_auto_ms"] = round(
            wait_until_answering(lambda: infer(url, args.deepedit, auto)) * 1000, 1)
        edit, edit_both = [], []
        for n in range(rounds):
            edit.append(infer(url, args.deepedit, {"spleen": [click(1, n)], "liver": [], "background": []}))
            edit_both.append(infer(url, args.deepedit,
                                   {"spleen": [click(1, n)], "liver": [click(2, n)], "background": []}))
        report["deepedit_click_one_organ"] = summary(edit)
        report["deepedit_clicks_both_organs"] = summary(edit_both)
    if args.scribbles != "-":
        with tempfile.TemporaryDirectory() as work:
            strokes = scribbles_file(args.truth, work)
            params = {"roi": [], "label_info": SCRIBBLES_LABEL_INFO, "selected_label_name": "spleen",
                      "lamda": 1.0, "sigma": 0.1, "num_bins": 64}
            report["scribbles"] = summary([infer(url, args.scribbles, params, strokes) for _ in range(rounds)])
    report["server_stages_ms"] = {m: median_latencies(m) for m in RUNNER}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
