"""No Hub token string reaches any file under reports/: not in a run with push false, not in a (mocked) push."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import papermill as pm
import pytest
from conftest import FAKE_HF_TOKEN

from fslib.core import config, fsio


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under root whose bytes contain needle (binary files included: safetensors, arrow, PNG)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


@pytest.mark.slow
def test_no_token_in_any_file_of_a_run_with_push_false(tiny_run):
    # tiny_run ran with HF_TOKEN=FAKE_HF_TOKEN in the environment of every kernel and subprocess.
    assert files_containing(tiny_run.parent, FAKE_HF_TOKEN) == []
    nb = json.loads((tiny_run / "notebooks" / "04_publish.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"].get("push") in (None, False)


# Loaded by every Python process of the mocked push (kernel and fresh-process check) through PYTHONPATH.
MOCK_HUB = textwrap.dedent("""
    import json, os
    from pathlib import Path

    import huggingface_hub
    from huggingface_hub.utils import get_token

    def _log(**entry):
        with open(os.environ["FS_MOCK_HUB_LOG"], "a") as f:
            f.write(json.dumps(entry) + "\\n")

    def create_repo(self, repo_id, **kw):
        _log(call="create_repo", repo_id=repo_id, private=kw.get("private"))

    def upload_folder(self, *, folder_path, repo_id, commit_message=None, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        # Record only whether the token came from the environment, never the token itself.
        _log(call="upload_folder", repo_id=repo_id, files=files, commit_message=commit_message, extra=sorted(kw),
             token_from_env=get_token() == os.environ.get("HF_TOKEN"))
        return "https://huggingface.co/" + repo_id + "/commit/mock"

    huggingface_hub.HfApi.create_repo = create_repo
    huggingface_hub.HfApi.upload_folder = upload_folder
""")


@pytest.mark.slow
def test_mocked_push_uploads_every_file_and_leaks_no_token(tiny_run, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    run = shutil.copytree(tiny_run, reports / "pushrun")
    mock = tmp_path / "mock"
    mock.mkdir()
    (mock / "sitecustomize.py").write_text(MOCK_HUB)
    log = tmp_path / "hub_calls.jsonl"
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("PYTHONPATH", str(mock))
    monkeypatch.setenv("FS_MOCK_HUB_LOG", str(log))
    out_nb = run / "notebooks" / "04_publish.ipynb"
    pm.execute_notebook(str(config.notebook_path("04_publish")), str(out_nb), kernel_name="python3",
                        progress_bar=False, cwd=str(fsio.REPO_ROOT),
                        parameters={"run_name": "pushrun", "reports_dir": str(reports), "push": True,
                                    "repo_id": "someone/firstsight-test", "commit_message": "test upload",
                                    # forced: 03's choice on validation may be another student, whose INT8/NF4
                                    # variants 03 does not measure, and this test checks their uploads too
                                    "publish_model": "student"})
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    uploads = {c["repo_id"]: c for c in calls if c["call"] == "upload_folder"}
    assert "someone/firstsight-test" in uploads
    main = uploads["someone/firstsight-test"]
    hub = run / "hub"
    assert main["files"] == sorted(str(p.relative_to(hub)) for p in hub.rglob("*") if p.is_file())
    assert "model.safetensors" in main["files"] or "model.safetensors.index.json" in main["files"]
    assert main["token_from_env"] and main["commit_message"] == "test upload"
    assert not {"allow_patterns", "ignore_patterns", "token"} & set(main["extra"])
    metrics = json.loads((run / "metrics.json").read_text())
    variants = [k for k, m in metrics["models"].items() if m.get("variant_of") == "student"]
    assert {f"someone/firstsight-test-{v}" for v in variants} <= set(uploads)
    assert all(c["private"] for c in calls if c["call"] == "create_repo")
    assert files_containing(reports, FAKE_HF_TOKEN) == []
    assert FAKE_HF_TOKEN not in out_nb.read_text()
    assert os.environ["HF_TOKEN"] == FAKE_HF_TOKEN  # the test really ran with a token set
