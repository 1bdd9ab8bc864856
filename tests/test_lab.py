"""`make lab` as a new user runs it: JupyterLab on localhost, the project's kernel, notebooks run from the repo root."""

import json
import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from fslib.core import fsio

TOKEN = "fs-lab-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


def _run_code(port: int, kernel_id: str, code: str) -> str:
    """Execute code in a kernel over the server's websocket and return its stdout."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?token={TOKEN}",
                                     timeout=60, suppress_origin=True)
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "t",
                                   "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                                    "allow_stdin": False}}))
    out = ""
    deadline = time.time() + 60
    while time.time() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    ws.close()
    return out


@pytest.mark.slow
def test_make_lab_serves_jupyterlab_with_project_kernel():
    port = _free_port()
    # -o: take the installed venv as current (the test must not reinstall it).
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "lab", f"LAB_PORT={port}", f"LAB_TOKEN={TOKEN}"],
                            cwd=fsio.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for _ in range(120):
            try:
                status, page = _get(f"http://127.0.0.1:{port}/lab")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer on localhost within 60 s")
        assert status == 200 and "JupyterLab" in page
        specs = json.loads(_get(f"http://127.0.0.1:{port}/api/kernelspecs")[1])
        spec = specs["kernelspecs"]["python3"]["spec"]
        assert spec["display_name"] == "Python 3 (FirstSight)"
        assert spec["argv"][0].startswith(str(fsio.REPO_ROOT / ".venv"))
        # Open notebooks/01_data.ipynb as the UI does: its kernel must run this venv, in the repo root.
        session = json.loads(_get(f"http://127.0.0.1:{port}/api/sessions", "POST",
                                  {"path": "notebooks/01_data.ipynb", "type": "notebook",
                                   "kernel": {"name": "python3"}})[1])
        out = _run_code(port, session["kernel"]["id"], "import os, sys, fslib; print(os.getcwd()); print(sys.prefix)")
        cwd, prefix = out.split()
        assert os.path.realpath(cwd) == str(fsio.REPO_ROOT)
        assert os.path.realpath(prefix) == os.path.realpath(fsio.REPO_ROOT / ".venv")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
