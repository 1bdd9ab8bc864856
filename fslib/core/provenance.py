"""Where a result came from: the git SHA, library versions and hardware, stored in every stage's JSON."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from fslib.core.fsio import REPO_ROOT

LIBS = ("torch", "torchvision", "transformers", "accelerate", "bitsandbytes", "datasets", "peft", "huggingface-hub",
        "papermill", "qwen-vl-utils")


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Library versions, git SHA and hardware. Torch is asked for the GPU only if something already imported it."""
    import importlib.metadata as md

    versions = {}
    for lib in LIBS:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    torch = sys.modules.get("torch")
    cuda = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    hw = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "cuda": cuda}
    return {"python": sys.version.split()[0], "platform": platform.platform(), "git_sha": git_sha(),
            "versions": versions, "hardware": hw}
