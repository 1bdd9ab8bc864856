"""The resume state of a training (``checkpoint``), written atomically with ``fslib.core.fsio``, as the model
folders ``best`` and ``final`` are: each is always the complete old or the complete new version.

The resume state is accelerate's ``save_state`` (model, optimizer, scheduler, and every process's python, numpy,
torch and CUDA RNG states; sharded as FSDP and DeepSpeed need) plus ``trainer_state.json``: where in which epoch the
run stopped, the history so far, and a hash of the settings, so a resume with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from fslib.core.fsio import fresh_tmp, recover, replace_dir

RESUME_DIR = "checkpoint"
STATE_FILE = "trainer_state.json"


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_resume(acc, out_dir: Path, state: dict) -> Path:
    """``out_dir/checkpoint``: accelerate's full training state and ``trainer_state.json``, written atomically.

    Every process calls this (FSDP and DeepSpeed write shards, every process its RNG file); the main process renames.
    """
    out = Path(out_dir) / RESUME_DIR
    tmp = out.with_name(out.name + ".tmp")
    if acc.is_main_process:
        fresh_tmp(out)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    acc.wait_for_everyone()  # every process's files (its shard, its RNG state) are in tmp before the rename
    if acc.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, default=str) + "\n")
        replace_dir(tmp, out)
    acc.wait_for_everyone()
    return out


def read_resume(out_dir: Path) -> dict | None:
    """The saved ``trainer_state.json``, or None when there is no complete checkpoint."""
    out = Path(out_dir) / RESUME_DIR
    recover(out)
    f = out / STATE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def load_resume(acc, out_dir: Path, settings: dict) -> dict | None:
    """Restore the training state saved by ``save_resume``; None when there is none. Refuses other settings."""
    state = read_resume(out_dir)
    if state is None:
        return None
    if state["settings_hash"] != settings_hash(settings):
        changed = sorted(k for k in set(settings) | set(state["settings"])
                         if str(settings.get(k)) != str(state["settings"].get(k)))
        raise ValueError(f"{Path(out_dir) / RESUME_DIR} was written with other settings ({', '.join(changed)}); "
                         "resume with the same settings, or set resume to False to start over")
    acc.load_state(str(Path(out_dir) / RESUME_DIR))
    return state


def clear(out_dir: Path) -> None:
    """Forget a previous run's resume state (a run with ``resume: false`` starts over)."""
    for suffix in ("", ".tmp", ".old"):
        shutil.rmtree(Path(out_dir) / (RESUME_DIR + suffix), ignore_errors=True)
