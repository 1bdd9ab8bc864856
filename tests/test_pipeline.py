"""One papermill run of all four notebooks on a tiny config: the same path `make report` takes."""

import json

import pytest
import yaml

from fslib import config, pipeline


@pytest.mark.slow
def test_four_notebooks_end_to_end(tmp_path):
    params = {"run_name": "e2e", "reports_dir": str(tmp_path), "n_train": 16, "n_val": 4, "n_test": 6, "n_ood": 2,
              "teacher_epochs": 1, "epochs": 1, "batch_size": 4, "bench_repeats": 2, "bench_warmup": 1}
    pfile = tmp_path / "e2e.yaml"
    pfile.write_text(yaml.safe_dump(params))
    html = pipeline.run(pfile)
    run = tmp_path / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("teacher", "student"):
        assert {"params", "exact_match", "f1", "latency_s"} <= set(metrics["models"][name])
    assert metrics["params"]["run_name"] == "e2e" and metrics["params"]["n_train"] == 16
    assert metrics["models"]["teacher"]["params"] > metrics["models"]["student"]["params"]
    for stage in config.NOTEBOOKS:
        nb = json.loads((run / "notebooks" / f"{stage}.ipynb").read_text())
        assert not nb["metadata"]["papermill"].get("exception")
    for f in ("data_stats.json", "training.json", "kd_student/training_history.json", "hub/README.md",
              "hub/model.safetensors"):
        assert (run / f).exists(), f
    text = html.read_text()
    assert "data:image/png;base64" in text and "Traceback" not in text
    assert "<script src=\"http" not in text


def test_bad_params_file_fails_before_any_work(tmp_path, capsys):
    pfile = tmp_path / "bad.yaml"
    pfile.write_text(f"run_name: bad\nreports_dir: {tmp_path}\nalhpa: 0.5\n")
    assert pipeline.main([str(pfile)]) == 2
    assert "'alhpa'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
