"""Drive MONAI Label's own OHIF build, served by medlabel, in headless Chromium.

Usage: python ohif_panel.py SERVER_URL STUDY_UID OUT_DIR

SERVER_URL is a running `medlabel serve --ohif ... --studies <DICOMweb>` (the viewer at
/ohif/, DICOMweb relayed through /proxy/dicom/, a segmentation model served). The script
talks the Chrome DevTools Protocol to Debian's `/usr/bin/chromium` (override with
$CHROMIUM) and does what a user does with the MONAI Label panel (the OHIF extension from
the monailabel 0.8.5 wheel):

1. opens `/ohif/monai-label?StudyInstanceUIDs=STUDY_UID` (the mode route of the wheel's
   build; its layout has the panel open on the right) and waits until the viewports'
   canvases show non-black pixels: the frames came through /proxy/dicom/ and
   cornerstone3D drew them (WebGL on SwiftShader);
2. types SERVER_URL into the panel's server box and presses its connect button (the panel
   defaults to port 8000 of the page's host, takes the URL on blur and connects only on
   that click), then waits for its action tabs, which need `/info/`;
3. runs Auto-Segmentation and waits for the server's `/infer/` reply, then for the
   segment's colour in the viewports: screenshots before and after are compared,
   counting viewport pixels whose chroma changed towards the segment colour's;
4. presses Active Learning's "Next Sample", reads the server's `POST /activelearning/`
   reply from the network events (CDP Network.*), accepts the panel's form (it reloads
   the viewer on the chosen study) and waits for that study to come through
   /proxy/dicom/ and be drawn;
5. saves before.png, overlay.png and next.png in OUT_DIR (failure.png on a failure) and
   prints one JSON line: ok, overlay_pixels, next_sample (its StudyInstanceUID),
   next_sample_is_other_study, the /infer/ and /activelearning/ URLs, the screenshots.

Exit 0 only when the overlay and the next sample were both observed; otherwise a message
on stderr and exit 1. The whole run is bounded (RUN_SECONDS) and Chromium is always
killed. Needs `websocket-client` (pinned in scripts/setup.sh); PNGs are decoded here
with zlib and numpy so no imaging library is needed.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

import numpy as np
import websocket

RUN_SECONDS = 180
WINDOW = (1280, 900)
# The panel colours a label from its anatomy table; the starter model's label is spleen.
SEGMENT_COLOUR = (157, 108, 162)
# A pixel counts as overlay when its chroma (colour minus grey, 0..255 per channel, L2)
# changed at least this much...
OVERLAY_MIN_CHROMA = 8.0
# ... in a direction this close (cosine) to the segment colour's chroma: green or blue
# toasts over a viewport do not count.
OVERLAY_MIN_COSINE = 0.95
# Fewer overlay pixels than this is noise (anti-aliasing, a cursor), not a segmentation.
OVERLAY_MIN_PIXELS = 50


class Failure(Exception):
    pass


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise Failure(f"run took longer than {RUN_SECONDS} s while {what}")


# --- Chromium and the DevTools protocol ----------------------------------------------


def launch_chromium(profile):
    """Headless Chromium with a DevTools port; WebGL through SwiftShader, because
    cornerstone3D renders every viewport with WebGL and there is no GPU here."""
    binary = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    args = [
        binary,
        "--headless=new",
        "--no-sandbox",
        "--no-first-run",
        "--no-default-browser-check",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    log = open(os.path.join(profile, "chromium.log"), "wb")
    # Its own process group, so that the renderer and GPU processes go with it.
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_chromium(chromium):
    try:
        os.killpg(chromium.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    chromium.wait()


def devtools_page(profile, chromium, deadline):
    """The websocket URL of the blank page: Chromium writes its port to DevToolsActivePort
    once it listens (port 0 picks a free one, so parallel tests do not collide)."""
    port_file = os.path.join(profile, "DevToolsActivePort")
    while True:
        if chromium.poll() is not None:
            raise Failure(f"chromium exited with {chromium.returncode} (see {profile}/chromium.log)")
        if os.path.exists(port_file):
            lines = open(port_file).read().split()
            if lines:
                port = int(lines[0])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                        targets = json.load(r)
                    pages = [t for t in targets if t.get("type") == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
                except OSError:
                    pass
        deadline.check("waiting for chromium's DevTools port")
        time.sleep(0.2)


class Cdp:
    """A minimal synchronous CDP client: commands wait for their reply; events are kept
    in order so that waits can look back at what already happened."""

    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, timeout=30, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = self._receive(end - time.monotonic())
            if msg is None:
                raise Failure(f"no reply to {method} within {timeout} s")
            if msg.get("id") == mid:
                if "error" in msg:
                    raise Failure(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def pump(self, seconds):
        """Collects events for up to `seconds`."""
        end = time.monotonic() + seconds
        while self._receive(end - time.monotonic()) is not None:
            pass

    def _receive(self, seconds):
        if seconds <= 0:
            return None
        self.ws.settimeout(seconds)
        try:
            msg = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        if "method" in msg:
            self.events.append(msg)
        return msg

    def evaluate(self, expression, timeout=30):
        result = self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise Failure(f"page script failed: {result['exceptionDetails'].get('text')}: {expression[:80]}")
        return result["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


# --- Screenshots ----------------------------------------------------------------------


def decode_png(data):
    """RGB(A) 8-bit non-interlaced PNG (what Chromium writes) to an H×W×3 uint8 array."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure("screenshot is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    channels = {2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise Failure(f"unsupported PNG (depth {depth}, colour type {colour_type}, interlace {interlace})")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(height * stride)
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        unfilter(kind, row, previous, channels)
        out[y * stride : (y + 1) * stride] = row
        previous = row
    image = np.frombuffer(bytes(out), dtype=np.uint8).reshape(height, width, channels)
    return image[:, :, :3]


def unfilter(kind, row, previous, bpp):
    """PNG row filters (RFC 2083 §6); numpy where a row does not depend on itself."""
    if kind == 0:
        return
    if kind == 2:
        row[:] = ((np.frombuffer(row, np.uint8).astype(np.uint16) + np.frombuffer(previous, np.uint8)) & 0xFF).astype(np.uint8).tobytes()
        return
    n = len(row)
    if kind == 1:
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 3:
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            row[i] = (row[i] + pred) & 0xFF
    else:
        raise Failure(f"bad PNG filter {kind}")


def screenshot(cdp, path=None):
    png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    if path:
        with open(path, "wb") as f:
            f.write(png)
    return decode_png(png)


def viewport_mask(cdp, shape):
    """Where the viewports' canvases are on screen: only there can the overlay be, and
    toasts or the panel changing elsewhere must not count."""
    rects = cdp.evaluate(
        """[...document.querySelectorAll('canvas')]
             .map(c => c.getBoundingClientRect())
             .filter(r => r.width > 50 && r.height > 50)
             .map(r => [r.left, r.top, r.right, r.bottom])"""
    )
    mask = np.zeros(shape[:2], dtype=bool)
    scale = shape[1] / WINDOW[0]
    for left, top, right, bottom in rects or []:
        mask[int(top * scale) : int(bottom * scale), int(left * scale) : int(right * scale)] = True
    return mask


def image_pixels(image, mask):
    """Viewport pixels that are not near-black: the volume is drawn."""
    return int(((image.max(axis=2) > 40) & mask).sum())


def chroma(image):
    """Each pixel's colour minus its grey level: zero on the CT, the segment's hue where the
    labelmap is drawn (cornerstone darkens and blends it, which keeps that direction)."""
    image = np.asarray(image, np.float32)
    return image - image.mean(axis=-1, keepdims=True)


def overlay_pixels(before, after, mask, colour=SEGMENT_COLOUR):
    """Viewport pixels whose chroma changed towards the segment colour's chroma."""
    change = chroma(after) - chroma(before)
    hue = chroma(colour)
    size = np.linalg.norm(change, axis=2)
    cosine = (change * hue).sum(axis=2) / (size * np.linalg.norm(hue) + 1e-6)
    return int(((size >= OVERLAY_MIN_CHROMA) & (cosine >= OVERLAY_MIN_COSINE) & mask).sum())


# --- The page -------------------------------------------------------------------------


def js_string(text):
    return json.dumps(text)


def click_button(cdp, text=None, title=None, selector="button"):
    """Clicks the first visible element matching `selector` whose text (or title) is the
    given one; returns whether there was one. A DOM click is what React listens to."""
    return cdp.evaluate(
        f"""(() => {{
          const want = {js_string(text)}, title = {js_string(title)};
          for (const el of document.querySelectorAll({js_string(selector)})) {{
            if (el.offsetParent === null || el.disabled) continue;
            if (want !== null && el.innerText.trim() !== want) continue;
            if (title !== null && el.title !== title) continue;
            el.click();
            return true;
          }}
          return false;
        }})()"""
    )


def wait_for(what, deadline, probe, seconds, cdp, interval=1.0):
    """Polls `probe` (events keep flowing meanwhile) until it returns something truthy."""
    end = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        deadline.check(what)
        if time.monotonic() > end:
            raise Failure(f"timed out after {seconds} s {what}")
        cdp.pump(interval)


def response_for(cdp, method, path_part, since):
    """The first finished request (by CDP's Network events) after event index `since`
    whose method and URL match: (status, request id)."""
    requests = {}
    for ev in cdp.events[since:]:
        p = ev.get("params", {})
        if ev["method"] == "Network.requestWillBeSent":
            requests[p["requestId"]] = p["request"]
        elif ev["method"] == "Network.responseReceived":
            req = requests.get(p["requestId"])
            if req and req["method"] == method and path_part in p["response"]["url"]:
                return p["response"]["status"], p["requestId"], p["response"]["url"]
    return None


def loading_finished(cdp, request_id):
    return any(
        ev["method"] in ("Network.loadingFinished", "Network.loadingFailed")
        and ev["params"].get("requestId") == request_id
        for ev in cdp.events
    )


def wait_for_load(cdp, deadline, since):
    """The document's load event: before it, the page cannot be captured or scripted."""
    wait_for(
        "waiting for the viewer page to load",
        deadline,
        lambda: any(ev["method"] == "Page.loadEventFired" for ev in cdp.events[since:]),
        30,
        cdp,
        interval=0.5,
    )


def wait_for_image(cdp, deadline, seconds, since=0):
    """The viewports show the volume: some viewport pixels are not black. OHIF first draws
    empty (black) canvases, then the frames arrive through /proxy/dicom/."""
    def probe():
        for ev in cdp.events[since:]:
            r = ev["params"].get("response") if ev["method"] == "Network.responseReceived" else None
            if r and "/proxy/dicom/" in r["url"] and r["status"] >= 400:
                raise Failure(f"the DICOMweb relay answered {r['status']} to {r['url']}")
        try:
            image = screenshot(cdp)
            mask = viewport_mask(cdp, image.shape)
        except Failure:
            return None  # between documents: nothing to capture yet
        count = image_pixels(image, mask)
        return count if count > 1000 else None

    return wait_for("waiting for the image to render", deadline, probe, seconds, cdp, interval=2.0)


def connect_panel(cdp, server, deadline):
    """Points the panel at SERVER_URL and connects; waits for its action tabs, which
    appear once `/info/` answered."""
    # OHIF's "investigational use" banner covers the bottom of the viewports.
    click_button(cdp, text="Confirm and Hide")
    wait_for(
        "waiting for the MONAI Label panel (#monailabelServerURL)",
        deadline,
        lambda: cdp.evaluate("!!document.getElementById('monailabelServerURL')"),
        60,
        cdp,
    )
    # As typed by a user: the panel takes the URL on blur (onBlur sets its state); its
    # connect handler alone would still use the state's old URL. React applies that
    # state after the event, so the click comes in a later task.
    cdp.evaluate(
        f"""(() => {{
          const input = document.getElementById('monailabelServerURL');
          input.focus();
          input.value = {js_string(server + '/')};
          input.blur();
        }})()"""
    )
    cdp.pump(0.5)
    ok = cdp.evaluate(
        """(() => {
          const input = document.getElementById('monailabelServerURL');
          const button = input.closest('table').querySelector('button');
          if (!button) return false;
          button.click();
          return true;
        })()"""
    )
    if not ok:
        raise Failure("the panel's connect button is missing")
    wait_for(
        "waiting for the panel to connect (its Auto-Segmentation tab)",
        deadline,
        lambda: "Auto-Segmentation" in (cdp.evaluate("document.body.innerText") or ""),
        30,
        cdp,
    )


def page_text(cdp):
    return cdp.evaluate("document.body.innerText") or ""


def run_segmentation(cdp, deadline):
    """Auto-Segmentation's Run (title "Run Segmentation"), then the server's reply."""
    since = len(cdp.events)
    # The tab is a radio that starts checked; clicking its label keeps it open.
    click_button(cdp, text="Auto-Segmentation", selector="label")
    cdp.pump(0.5)
    if not click_button(cdp, title="Run Segmentation"):
        raise Failure("no enabled 'Run Segmentation' button in the panel:\n" + page_text(cdp)[-800:])
    status, request_id, url = wait_for(
        "waiting for the server's /infer/ reply",
        deadline,
        lambda: response_for(cdp, "POST", "/infer/", since),
        120,
        cdp,
    )
    if status != 200:
        raise Failure(f"POST {url} answered {status}")
    wait_for("waiting for the /infer/ body", deadline, lambda: loading_finished(cdp, request_id), 60, cdp)
    return url


def next_sample(cdp, deadline):
    """Active Learning's Next Sample: the server's choice, then the panel's form whose OK
    reloads the viewer on that study (its window.confirm is answered yes beforehand)."""
    since = len(cdp.events)
    click_button(cdp, text="Active Learning", selector="label")
    cdp.pump(0.5)
    if not click_button(cdp, text="Next Sample"):
        raise Failure("no 'Next Sample' button in the panel:\n" + page_text(cdp)[-800:])
    status, request_id, url = wait_for(
        "waiting for the server's /activelearning/ reply",
        deadline,
        lambda: response_for(cdp, "POST", "/activelearning/", since),
        60,
        cdp,
    )
    if status != 200:
        raise Failure(f"POST {url} answered {status}")
    wait_for("waiting for the /activelearning/ body", deadline, lambda: loading_finished(cdp, request_id), 30, cdp)
    body = cdp.call("Network.getResponseBody", requestId=request_id)
    text = base64.b64decode(body["body"]).decode() if body.get("base64Encoded") else body["body"]
    sample = json.loads(text)
    study = sample.get("StudyInstanceUID")
    if not study:
        raise Failure(f"the /activelearning/ reply names no StudyInstanceUID: {text[:300]}")
    wait_for(
        "waiting for the Next Sample form",
        deadline,
        lambda: study in page_text(cdp),
        15,
        cdp,
    )
    cdp.evaluate("window.confirm = () => true")
    reload_from = len(cdp.events)
    if not click_button(cdp, text="OK"):
        raise Failure("the Next Sample form has no OK button")
    wait_for(
        "waiting for the viewer to load the next sample",
        deadline,
        lambda: study in (cdp.evaluate("location.href") or "") and "StudyInstanceUIDs" in cdp.evaluate("location.href"),
        30,
        cdp,
    )
    wait_for_load(cdp, deadline, reload_from)
    # The reloaded viewer fetches that study through medlabel's DICOMweb relay.
    wait_for(
        "waiting for the next sample's study to come through /proxy/dicom/",
        deadline,
        lambda: proxied(cdp, study, reload_from),
        30,
        cdp,
    )
    return url, sample, reload_from


def proxied(cdp, study, since):
    """A successful /proxy/dicom/ response about `study` after event index `since`."""
    return any(
        ev["method"] == "Network.responseReceived"
        and "/proxy/dicom/" in ev["params"]["response"]["url"]
        and study in ev["params"]["response"]["url"]
        and ev["params"]["response"]["status"] == 200
        for ev in cdp.events[since:]
    )


def diagnose(cdp, out_dir):
    """What the page looked like and complained about, for a failure's message."""
    if cdp is None:
        return ""
    lines = []
    try:
        screenshot(cdp, os.path.join(out_dir, "failure.png"))
        lines.append(f"screenshot: {os.path.join(out_dir, 'failure.png')}")
        lines.append("page text (end): " + page_text(cdp)[-600:].replace("\n", " | "))
    except Exception as e:  # the page may be gone; the events below still help
        lines.append(f"no screenshot: {e}")
    for ev in cdp.events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.exceptionThrown":
            lines.append("page exception: " + json.dumps(p["exceptionDetails"])[:300])
        elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
            lines.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])[:300])
        elif ev["method"] == "Network.responseReceived" and p["response"]["status"] >= 400:
            lines.append(f"HTTP {p['response']['status']}: {p['response']['url'][:200]}")
    return "\n  " + "\n  ".join(lines[-25:]) if lines else ""


# --- The run --------------------------------------------------------------------------


def preflight(server):
    """Fails fast (rather than after the render timeout) when the server is not up, serves
    no viewer or has no model the panel's Auto-Segmentation lists."""
    try:
        with urllib.request.urlopen(f"{server}/info/", timeout=10) as r:
            info = json.load(r)
        with urllib.request.urlopen(f"{server}/ohif/app-config.js", timeout=10) as r:
            r.read()
    except (OSError, ValueError) as e:
        raise Failure(f"{server} does not answer /info/ and /ohif/app-config.js: {e}") from None
    models = [m for m, v in info.get("models", {}).items() if v.get("type") in ("segmentation", "vista3d")]
    if not models:
        raise Failure(f"{server}/info/ lists no segmentation model (serve with a runner and --starter-model)")
    return models


def run(server, study, out_dir):
    deadline = Deadline(RUN_SECONDS)
    os.makedirs(out_dir, exist_ok=True)
    server = server.rstrip("/")
    preflight(server)
    profile = tempfile.mkdtemp(prefix="ohif-panel-")
    chromium = launch_chromium(profile)
    cdp = None
    try:
        cdp = Cdp(devtools_page(profile, chromium, deadline))
        cdp.call("Page.enable")
        cdp.call("Network.enable")
        cdp.call("Runtime.enable")
        # A headless page has no focus unless emulated, and the panel's server box
        # reacts to blur only.
        cdp.call("Emulation.setFocusEmulationEnabled", enabled=True)
        cdp.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1, mobile=False)
        viewer = f"{server}/ohif/monai-label?StudyInstanceUIDs={study}"
        cdp.call("Page.navigate", url=viewer)
        wait_for_load(cdp, deadline, 0)

        wait_for_image(cdp, deadline, 90)
        connect_panel(cdp, server, deadline)
        # The panel adds an empty labelmap on connect and shows a toast; let both settle
        # so that "before" differs from "after" by the segmentation only.
        cdp.pump(3)
        before = screenshot(cdp, os.path.join(out_dir, "before.png"))
        mask = viewport_mask(cdp, before.shape)

        infer_url = run_segmentation(cdp, deadline)
        overlay_path = os.path.join(out_dir, "overlay.png")
        found = wait_for(
            "waiting for the segmentation overlay in the viewports",
            deadline,
            lambda: (lambda n: n if n >= OVERLAY_MIN_PIXELS else None)(
                overlay_pixels(before, screenshot(cdp, overlay_path), mask)
            ),
            30,
            cdp,
            interval=2.0,
        )

        al_url, sample, reload_from = next_sample(cdp, deadline)
        next_image = wait_for_image(cdp, deadline, 60, since=reload_from)
        next_path = os.path.join(out_dir, "next.png")
        screenshot(cdp, next_path)
        return {
            "ok": True,
            "viewer": viewer,
            "infer": infer_url,
            "overlay_pixels": found,
            "next_sample": sample.get("StudyInstanceUID"),
            "next_sample_series": sample.get("SeriesInstanceUID") or sample.get("id"),
            "next_sample_is_other_study": sample.get("StudyInstanceUID") != study,
            "activelearning": al_url,
            "next_image_pixels": next_image,
            "screenshot": overlay_path,
            "screenshots": [os.path.join(out_dir, "before.png"), overlay_path, next_path],
        }
    except Failure as e:
        raise Failure(f"{e}{diagnose(cdp, out_dir)}") from None
    finally:
        if cdp:
            cdp.close()
        stop_chromium(chromium)
        log = os.path.join(profile, "chromium.log")
        if os.path.exists(log):
            shutil.copy(log, os.path.join(out_dir, "chromium.log"))
        shutil.rmtree(profile, ignore_errors=True)


def main(argv):
    if len(argv) != 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        report = run(argv[1], argv[2], argv[3])
    except Failure as e:
        print(f"ohif_panel: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
