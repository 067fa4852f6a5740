"""MONAI Label's DICOMweb datastore beside medlabel's, on one Orthanc (issue #17 peer bench).

    python scripts/bench_dicomweb_peer.py MEDLABEL_BINARY [SERIES]

Starts Debian's Orthanc (DICOMweb plugin, basic auth) on a free loopback port, stores
SERIES (default 10,000) one-instance CT series in it, then, in one run:
- MONAI Label 0.8.5's `DICOMWebDatastore` (in process, no HTTP server in front of it):
  `list_images()` and `get_unlabeled_images()` (what its random and first strategies
  pick from), each with its TTL cache cleared so every call asks Orthanc, as a call after
  the cache expiry does;
- `medlabel serve --studies <Orthanc>/dicom-web` (release binary, no runner): the first
  sync, then `GET /datastore/?output=stats` and `POST /activelearning/random` with a new
  client each time, over HTTP.
Prints one JSON line per measurement (median and p99 in ms over the repeats).

Needs, beyond scripts/setup.sh's venv, what MONAI Label's DICOMweb datastore imports:
`pip install cachetools pydicom==2.4.4 dicomweb-client==0.59.1 pydicom-seg itk pynrrd
SimpleITK` (not in setup.sh: they pin jsonschema 3, which other test tooling refuses),
and torch's libraries on LD_LIBRARY_PATH as scripts/bench_bundles.sh sets them.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

REPEAT = 20
USER, PASSWORD = "bench", "bench-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(name, seconds, **extra):
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print(json.dumps({"what": name, "median_ms": round(statistics.median(ms), 2),
                      "p99_ms": round(p99, 2), "n": len(ms), **extra}), flush=True)


def start_orthanc(work):
    port = free_port()
    storage = os.path.join(work, "storage")
    config = {
        "Name": "bench", "StorageDirectory": storage, "IndexDirectory": storage,
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD}, "DicomServerEnabled": False,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = os.path.join(work, "orthanc.json")
    with open(path, "w") as f:
        json.dump(config, f)
    log = open(os.path.join(work, "orthanc.log"), "w")
    child = subprocess.Popen(["/usr/sbin/Orthanc", path], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return child, url
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise SystemExit("Orthanc did not start")


def tiny_ct(n):
    """One 4 x 4 CT instance, its own study and series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = f"P{n:05d}", f"Bench^{n}", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = bytes(32)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    out = tempfile.SpooledTemporaryFile()
    ds.save_as(out, write_like_original=False)
    out.seek(0)
    return out.read()


def monai_label(dicomweb):
    from dicomweb_client.api import DICOMwebClient
    from monailabel.datastore.dicom import DICOMWebDatastore

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(url=dicomweb, session=session)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        store = DICOMWebDatastore(client, {"Modality": "CT"}, cache_path=cache)
        print(json.dumps({"what": "monailabel: DICOMWebDatastore()", "seconds": round(time.perf_counter() - started, 3)}), flush=True)
        for name, call in [("list_images", store.list_images), ("get_unlabeled_images", store.get_unlabeled_images)]:
            times, found = [], 0
            for _ in range(REPEAT):
                type(store).list_images.cache_clear()
                type(store).get_labeled_images.cache_clear()
                started = time.perf_counter()
                found = len(call())
                times.append(time.perf_counter() - started)
            summary(f"monailabel: {name}()", times, images=found)


def medlabel(binary, dicomweb, work, count):
    env = dict(os.environ, MEDLABEL_DICOMWEB_USERNAME=USER, MEDLABEL_DICOMWEB_PASSWORD=PASSWORD)
    started = time.perf_counter()
    child = subprocess.Popen(
        [binary, "serve", "--studies", dicomweb, "--home", os.path.join(work, "home"),
         "--host", "127.0.0.1", "--port", "0", "--poll-interval", "0.5", "--runner", "/nonexistent"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = child.stdout.readline()
        base = line.strip().rsplit(" at ", 1)[1].rstrip("/")
        http = requests.Session()
        total = 0
        while total < count:
            total = http.get(f"{base}/datastore/?output=stats").json()["total"]
            time.sleep(0.2)
        print(json.dumps({"what": "medlabel: start to every series listed", "seconds": round(time.perf_counter() - started, 3), "images": total}), flush=True)
        times = []
        for _ in range(REPEAT * 10):
            t = time.perf_counter()
            http.get(f"{base}/datastore/?output=stats").raise_for_status()
            times.append(time.perf_counter() - t)
        summary("medlabel: GET /datastore/?output=stats", times, images=total)
        times = []
        for n in range(REPEAT * 10):
            t = time.perf_counter()
            http.post(f"{base}/activelearning/random", json={"client_id": f"bench-{n}"}).raise_for_status()
            times.append(time.perf_counter() - t)
        summary("medlabel: POST /activelearning/random (new client)", times)
    finally:
        child.kill()


if __name__ == "__main__":
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with tempfile.TemporaryDirectory() as work:
        orthanc, url = start_orthanc(work)
        try:
            http = requests.Session()
            http.auth = (USER, PASSWORD)
            started = time.perf_counter()
            for n in range(count):
                http.post(f"{url}/instances", data=tiny_ct(n)).raise_for_status()
            print(json.dumps({"what": "orthanc: series stored", "series": count, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
            dicomweb = f"{url}/dicom-web"
            monai_label(dicomweb)
            medlabel(binary, dicomweb, work, count)
        finally:
            orthanc.kill()
