"""Click → mask round trip over HTTP (issue #18), timed from a client on loopback.

Usage: bench_smartedit.py <server_url> <image.nii.gz> <truth.nii.gz> [rounds]

Uploads the image as `ct`, waits until the runner answers, then times `POST
/infer/<model>?image=ct` until the whole multipart reply (the `.nrrd` mask) is read:
Slicer's DeepGrow click (`foreground` at the spleen, `background` empty) and OHIF's
DeepEdit call (`{spleen: [...], liver: [], background: []}`, and with a liver click too,
which widens the region to both organs), each click a voxel away from the last so no two
requests are the same. The first DeepEdit call on an image
makes its automatic segmentation; it is timed apart. Prints one JSON line, with the
runner's own stage timings (medians of the last calls) from the replies.
"""

import email
import json
import statistics
import sys
import time

import nibabel as nib
import numpy as np
import requests

RESULT = {"result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "bench"}


RUNNER = {}


def infer(url, model, params):
    start = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}?image=ct", files={"params": (None, json.dumps(dict(params, **RESULT)))})
    body = r.content
    elapsed = time.perf_counter() - start
    assert r.status_code == 200 and len(body) > 1000, (r.status_code, body[:300])
    RUNNER.setdefault(model, []).append(runner_latencies(r.headers["content-type"], body))
    return elapsed


def runner_latencies(content_type, body):
    """The reply's `params` part: the runner's stage timings (seconds)."""
    reply = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in reply.walk():
        if part.get_filename() is None and not part.is_multipart():
            return json.loads(part.get_payload(decode=True))["latencies"]
    return {}


def median_latencies(model):
    runs = RUNNER[model][-20:]
    return {k: round(1000 * statistics.median(r[k] for r in runs), 1) for k in runs[0]}


def summary(times):
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": round(statistics.median(ms), 1), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
            "min_ms": round(ms[0], 1), "n": len(ms)}


def main():
    url, image, truth_file = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    with open(image, "rb") as f:
        r = requests.put(f"{url}/datastore/?image=ct", files={"file": ("ct.nii.gz", f)},
                         data={"params": json.dumps({"client_id": "bench"})})
    assert r.status_code == 200, r.text
    truth = np.asarray(nib.load(truth_file).dataobj)
    centre = {v: np.round(np.argwhere(truth == v).mean(axis=0)).astype(int) for v in (1, 2)}

    def click(label, n):
        return (centre[label] + [n % 3 - 1, (n // 3) % 3 - 1, 0]).tolist()

    deadline = time.time() + 300
    while True:
        try:
            infer(url, "deepgrow_3d", {"foreground": [click(1, 0)], "background": []})
            break
        except (AssertionError, requests.ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(2)
    auto = infer(url, "deepedit_spleen_liver", {"spleen": [], "liver": [], "background": []})
    grow, edit, edit_both = [], [], []
    for n in range(rounds):
        grow.append(infer(url, "deepgrow_3d", {"label": "spleen", "foreground": [click(1, n)], "background": []}))
        edit.append(infer(url, "deepedit_spleen_liver", {"spleen": [click(1, n)], "liver": [], "background": []}))
        edit_both.append(infer(url, "deepedit_spleen_liver",
                               {"spleen": [click(1, n)], "liver": [click(2, n)], "background": []}))
    print(json.dumps({"image": list(truth.shape), "deepgrow_click": summary(grow),
                      "deepedit_click_one_organ": summary(edit), "deepedit_clicks_both_organs": summary(edit_both),
                      "deepedit_first_call_auto_ms": round(auto * 1000, 1),
                      "runner_stages_ms": {m: median_latencies(m) for m in RUNNER}}))


if __name__ == "__main__":
    main()
