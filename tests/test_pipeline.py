"""One papermill run of all four notebooks on a tiny config: the same path `make report` takes."""

import json
import os

import pytest
from test_publish import assert_card_matches

from fslib.core import config
from fslib.stages import pipeline
from fslib.world import embedded


@pytest.mark.slow
def test_four_notebooks_end_to_end(tiny_run):
    run = tiny_run
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("teacher", "student"):
        assert {"params", "exact_match", "f1", "latency_s"} <= set(metrics["models"][name])
    assert metrics["params"]["run_name"] == "e2e" and metrics["params"]["n_train"] == 16
    assert metrics["models"]["teacher"]["params"] > metrics["models"]["student"]["params"]
    # The default reads the committed pair (embedded/): nothing is built or pre-trained into the run.
    trainings = json.loads((run / "training.json").read_text())["trainings"]
    assert trainings["teacher"]["model"]["path"] == str(embedded.PAIR_DIR / "tiny-teacher")
    assert trainings["sft_student"]["model"]["path"] == str(embedded.PAIR_DIR / "tiny-student")
    assert not (run / "embedded").exists()
    # With teacher-answered questions: KD on the labelled questions alone is measured too, and the KD student took
    # exactly the SFT baseline's optimizer steps (its epochs are windows over the larger train set).
    assert "exact_match" in metrics["models"]["kd_labelled_student"]
    steps = {k: len(json.loads((run / k / "training_history.json").read_text())["steps"])
             for k in ("kd_student", "kd_labelled_student", "sft_student")}
    assert len(set(steps.values())) == 1, steps
    answered = json.loads((run / "seqkd" / "answers.json").read_text())["answers"]
    assert len(answered) == 6 and all(0 < a["confidence"] <= 1 for a in answered.values())
    for stage in config.NOTEBOOKS:
        nb = json.loads((run / "notebooks" / f"{stage}.ipynb").read_text())
        assert not nb["metadata"]["papermill"].get("exception")
    for f in ("data_stats.json", "training.json", "kd_student/training_history.json", "hub/README.md",
              "hub/model.safetensors", "hub/config.json", "hub/generation_config.json", "hub/chat_template.jinja",
              "index.html", "../index.html"):
        assert (run / f).exists(), f
    # The published folders: their cards carry metrics.json's numbers (04 already loaded each in a fresh process).
    assert_card_matches((run / "hub" / "README.md").read_text(), metrics, "student")
    for name, m in metrics["models"].items():
        if m.get("variant_of") == "student":
            assert_card_matches((run / f"hub-{name}" / "README.md").read_text(), metrics, name)
    nb04 = (run / "notebooks" / "04_publish.ipynb").read_text()
    assert "ANSWER:" in nb04 and "push is false: nothing uploaded" in nb04
    text = (run / "index.html").read_text()
    assert "data:image/png;base64" in text and "Traceback" not in text
    assert "<script" not in text


def test_bad_params_file_fails_before_any_work(tmp_path, capsys):
    pfile = tmp_path / "bad.yaml"
    pfile.write_text(f"run_name: bad\nreports_dir: {tmp_path}\nalhpa: 0.5\n")
    assert pipeline.main([str(pfile)]) == 2
    assert "'alhpa'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets")
def test_kernels_talk_over_unix_sockets_not_tcp():
    """make report's kernels use IPC: no local TCP ports, and no 'running over TCP without encryption' warning."""
    km = pipeline.kernel_manager_class()(kernel_name="python3")
    assert km.transport == "ipc"
    assert pipeline.kernel_manager_class()(kernel_name="python3", transport="tcp").transport == "tcp"


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets")
def test_each_kernel_has_sockets_of_its_own():
    """Two pipelines side by side (kd_vs_sft.py --jobs) must not share socket files: they talked to each other's
    kernels when every kernel used jupyter_client's default ``kernel-ipc-<n>`` in the working directory."""
    a, b = (pipeline.kernel_manager_class()(kernel_name="python3") for _ in range(2))
    assert a.ip != b.ip and os.path.isabs(a.ip) and "kernel-ipc" not in a.ip
