"""Exact resume: a training process killed with SIGKILL mid-epoch, after a checkpoint, then resumed, ends with the
same weights as an uninterrupted run (bit for bit on CPU)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fslib.core import fsio
from fslib.training import checkpoint
from fslib.training.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TeacherConfig,
)

# Runs one job; with a step number, the process SIGKILLs itself just before that optimizer step (so it dies in the
# middle of an epoch, after the last checkpoint, with work done since that is lost).
WORKER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from fslib.training import loop
from fslib.training import jobs
kill_at = int(sys.argv[2])
if kill_at:
    real = loop._optimizer_step
    def step(run, group):
        if run.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(run, group)
    loop._optimizer_step = step
jobs.run(json.loads(open(sys.argv[1]).read()))
"""


@pytest.fixture()
def job(tmp_path, small_data_dir, student_path, teacher_path, pixels):
    # 12 train records, micro-batch 2, accumulation 2: 3 optimizer steps per epoch, 6 in all; a checkpoint every 2
    return DistillConfig(label="kd", out_dir="", model=ModelConfig(path=student_path, freeze_vision=True),  # both
                         data=DataConfig(data_dir=str(small_data_dir), pixels=pixels, max_length=256),  # towers memoised
                         teacher=TeacherConfig(path=teacher_path),
                         optim=OptimConfig(batch_size=2, grad_accum=2, epochs=2, learning_rate=2e-3, seed=0),
                         runtime=RuntimeConfig(save_every=2))


def _start(tmp_path, job, name, kill_at=0, resume=False):
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(job.but(out_dir=str(tmp_path / name), runtime={"resume": resume}).to_dict()))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(worker), str(spec), str(kill_at)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, job):
    whole = _start(tmp_path, job, "whole")
    killed = _start(tmp_path, job, "killed", kill_at=5)  # steps 1-4 done; checkpoint at step 4 (epoch 2, 1 step in)
    rc, out = _finish(killed)
    assert rc == -9, out[-3000:]
    state = checkpoint.read_resume(tmp_path / "killed")
    assert (state["epoch"], state["position"], state["step"], state["done"]) == (2, 1, 4, False)
    assert not (tmp_path / "killed" / "final").exists()
    rc, out = _finish(_start(tmp_path, job, "killed", resume=True))
    assert rc == 0, out[-3000:]
    rc, out = _finish(whole)
    assert rc == 0, out[-3000:]
    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    h_a = json.loads((tmp_path / "whole" / "training_history.json").read_text())
    h_b = json.loads((tmp_path / "killed" / "training_history.json").read_text())
    assert [s["loss"] for s in h_a["steps"]] == [s["loss"] for s in h_b["steps"]]
    assert len(h_b["steps"]) == 6


def test_resume_refuses_other_settings(tmp_path, job):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    state = {"settings": {"lr": 1e-3}, "settings_hash": checkpoint.settings_hash({"lr": 1e-3})}
    (tmp_path / checkpoint.RESUME_DIR).mkdir()
    (tmp_path / checkpoint.RESUME_DIR / checkpoint.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="other settings.*lr"):
        checkpoint.load_resume(acc, tmp_path, {"lr": 2e-3})


def test_swap_in_is_atomic_and_recovers(tmp_path):
    out = tmp_path / "best"
    for version in ("v1", "v2"):
        tmp = fsio.fresh_tmp(out)
        tmp.mkdir()
        (tmp / "w").write_text(version)
        fsio.replace_dir(tmp, out)
    assert (out / "w").read_text() == "v2" and not (tmp_path / "best.old").exists()
    out.rename(tmp_path / "best.old")  # a crash between the two renames of swap_in
    (tmp_path / "best.tmp").mkdir()  # and a half-written next version
    fsio.recover(out)
    assert (out / "w").read_text() == "v2" and not (tmp_path / "best.tmp").exists()


@pytest.mark.slow
def test_notebook_02_with_resume_true_reuses_finished_trainings(tiny_run, tmp_path):
    """`papermill 02_distill.ipynb -p resume True` after a finished run (moved elsewhere): nothing is retrained."""
    import shutil

    import papermill as pm
    from conftest import TINY_RUN

    from fslib.core import config

    run = tmp_path / "e2e"
    shutil.copytree(tiny_run, run)
    final = run / "kd_student" / "final" / "model.safetensors"
    before = (final.stat().st_mtime_ns, json.loads((run / "kd_student" / "training_history.json").read_text()))
    declared = config.declared_params()
    params = {k: v for k, v in TINY_RUN.items() if "02_distill" in declared[k]["notebooks"]}
    pm.execute_notebook(str(config.notebook_path("02_distill")), str(tmp_path / "02.ipynb"), kernel_name="python3",
                        parameters={**params, "run_name": "e2e", "reports_dir": str(tmp_path), "resume": True},
                        progress_bar=False)
    after = json.loads((run / "kd_student" / "training_history.json").read_text())
    assert final.stat().st_mtime_ns == before[0]  # not retrained, not rewritten
    assert [s["loss"] for s in after["steps"]] == [s["loss"] for s in before[1]["steps"]]
    assert json.loads((run / "training.json").read_text())["models"]["student"]["path"].startswith(str(run))
