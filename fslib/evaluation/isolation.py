"""Each measured model in its own fresh process, forked from a server that has only imported libraries: the process
exits afterwards, so its weights, caches and peak counters go with it (``fslib.evaluation.bench`` measures)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fslib.evaluation.bench import worker

# What the fork server imports once: each model's process is forked from it, so it starts with these modules loaded
# (seconds saved per model) but with no model, no tensor and no thread pool of the notebook's process.
PRELOAD = ("torch", "transformers", "transformers.models.qwen2_vl.modeling_qwen2_vl", "datasets", "qwen_vl_utils",
           "fslib.data.store", "fslib.engine.collate", "fslib.engine.models", "fslib.engine.generate",
           "fslib.engine.randominit", "fslib.evaluation.bench")


def _context():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # not bitsandbytes: it may initialise CUDA, which a fork cannot inherit
    return ctx


def _child(spec_file: str, out_file: str, log_file: str) -> None:
    """Entry point of a model's process: output goes to its log, the result to ``out_file``."""
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)  # bitsandbytes and tqdm write here, not into the notebook
    sys.stdout = sys.stderr = open(log, "w", buffering=1, closefd=False)
    result = worker(json.loads(Path(spec_file).read_text()))
    Path(out_file).write_text(json.dumps(result, indent=2, default=str))


def run_isolated(spec: dict, workdir: str | Path, *, timeout: int = 3600) -> dict:
    """Run ``worker(spec)`` in a new process (forked from a server that has only imported libraries) and return its
    JSON. The process exits afterwards, so its weights, caches and peak counters go with it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {k: workdir / f"{spec['name']}{ext}" for k, ext in (("spec", ".spec.json"), ("out", ".json"),
                                                                 ("log", ".log"))}
    files["spec"].write_text(json.dumps(spec, indent=2))
    files["out"].unlink(missing_ok=True)
    proc = _context().Process(target=_child, args=(str(files["spec"]), str(files["out"]), str(files["log"])))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if proc.exitcode != 0 or not files["out"].exists():
        tail = files["log"].read_text()[-3000:] if files["log"].exists() else ""
        raise RuntimeError(f"benchmark process for {spec['name']!r} failed (exit {proc.exitcode}):\n{tail}")
    return json.loads(files["out"].read_text())
