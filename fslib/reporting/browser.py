"""Open a report in headless Chromium and say what a reader would see: figures, headline table, errors, requests.

    python -m fslib.reporting.browser reports/tiny/index.html --screenshot /tmp/report.png

Chromium is driven over the DevTools protocol, so every request the page makes is recorded (``Network``) and the
rendered DOM is inspected after load (images decoded, table rows present). Host resolution is disabled too, so a
stray fetch could not succeed even if the check missed it. Debian: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,900")
# Read in the page after load. Error outputs are Jupyter's error/stderr renderings and any Python traceback text.
_PROBE = """JSON.stringify({
  title: document.title,
  images: document.images.length,
  broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
  figures: document.querySelectorAll('.jp-OutputArea-output img[src^="data:image/png"]').length,
  headline_rows: document.querySelectorAll('table#headline tbody tr').length,
  headline_header: [...document.querySelectorAll('table#headline thead th')].map(t => t.textContent),
  toc_links: document.querySelectorAll('nav#contents a[href^="#"]').length,
  toc_broken: [...document.querySelectorAll('nav#contents a[href^="#"]')]
      .filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length,
  error_outputs: document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output.jp-mod-error, .ansi-red-intense-fg').length,
  traceback: /Traceback \\(most recent call last\\)/.test(document.body.innerText),
  has_environment: !!document.getElementById('provenance-environment'),
  has_params: !!document.getElementById('provenance-params'),
  height: document.documentElement.scrollHeight,
})"""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


class _CDP:
    """A minimal DevTools client: send a command, wait for its reply, keep every event seen meanwhile."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client, installed with jupyter_server

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))


def _start(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"{binary} did not start its DevTools endpoint")
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    return proc, page["webSocketDebuggerUrl"]


def inspect_page(html_file: str | Path, *, screenshot: str | Path | None = None) -> dict:
    """Load ``html_file`` from disk and return what rendered and every URL requested (file:// and data: included)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH; on Debian: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="fs-chromium-") as profile:
        proc, ws_url = _start(binary, Path(profile))
        try:
            cdp = _CDP(ws_url)
            for domain in ("Network", "Page", "Runtime", "Log"):
                cdp.call(f"{domain}.enable")
            cdp.call("Page.navigate", url=Path(html_file).resolve().as_uri())
            cdp.wait_for("Page.loadEventFired")
            probe = json.loads(cdp.call("Runtime.evaluate", expression=_PROBE, returnByValue=True)["result"]["value"])
            if screenshot:
                _screenshot(cdp, Path(screenshot), probe["height"])
            cdp.call("Browser.close")
        finally:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    requests = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
    console = [e["params"] for e in cdp.events if e.get("method") in ("Runtime.exceptionThrown", "Log.entryAdded")]
    return {**probe, "requests": requests,
            "remote_requests": [u for u in requests if not u.startswith(("file://", "data:"))],
            "console_errors": [json.dumps(c)[:300] for c in console
                               if c.get("entry", {}).get("level", "error") == "error"]}


def _screenshot(cdp: _CDP, path: Path, height: int, part: int = 16000) -> list[Path]:
    """The whole page as PNGs of at most ``part`` px each (Chromium's texture limit is about 16k): ``path``, then
    ``<stem>-2.png``, ``<stem>-3.png``..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for i, top in enumerate(range(0, height, part)):
        clip = {"x": 0, "y": top, "width": 1280, "height": min(part, height - top), "scale": 1}
        shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        files.append(path if i == 0 else path.with_name(f"{path.stem}-{i + 1}{path.suffix}"))
        files[-1].write_bytes(base64.b64decode(shot["data"]))
    return files


def problems(result: dict) -> list[str]:
    """What makes a report unfit to read; empty when it is fine."""
    checks = [(result["remote_requests"], f"network requests: {result['remote_requests']}"),
              (result["figures"] == 0, "no embedded figure"), (result["broken_images"], "images that did not decode"),
              (result["headline_rows"] == 0, "no headline table rows"), (result["error_outputs"], "error outputs"),
              (result["traceback"], "a Python traceback in the text"), (result["toc_broken"], "broken contents links"),
              (not result["has_environment"], "no environment section"), (result["console_errors"], "console errors")]
    return [msg for bad, msg in checks if bad]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", help="the page to open, e.g. reports/tiny/index.html")
    ap.add_argument("--screenshot", help="write a full-page PNG here")
    args = ap.parse_args(argv)
    result = inspect_page(args.html, screenshot=args.screenshot)
    print(json.dumps({k: v for k, v in result.items() if k != "requests"} | {"n_requests": len(result["requests"])},
                     indent=1))
    bad = problems(result)
    for msg in bad:
        print(f"problem: {msg}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
