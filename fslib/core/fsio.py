"""Files every stage writes: JSON written atomically, and folders replaced atomically.

A folder (a model checkpoint, a cache, a dataset, a Hub folder) is written under ``<name>.tmp`` and then put in place
by ``replace_dir``. On Linux that is one ``renameat2(RENAME_EXCHANGE)``: the old and the new folder swap in a single
step, so a reader sees the complete old or the complete new version, never neither. Elsewhere POSIX cannot rename a
folder over a non-empty one, so the old folder is first renamed to ``<name>.old``; ``recover`` puts it back if a crash
fell between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def write_json(path: str | Path, data: dict) -> Path:
    """Write JSON atomically (temp file, then rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (see README: pipeline order)")
    return json.loads(path.read_text())


def _suffixed(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def recover(out: str | Path) -> None:
    """Undo a crash between the two renames of the fallback: ``out.old`` without ``out`` becomes ``out`` again;
    leftovers (``.old``, a half-written ``.tmp``) are removed."""
    out = Path(out)
    old = _suffixed(out, ".old")
    if old.exists() and not out.exists():
        old.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_suffixed(out, ".tmp"), ignore_errors=True)


def fresh_tmp(out: str | Path) -> Path:
    """``<out>.tmp``, emptied: where a folder that ``replace_dir`` will put at ``out`` is written."""
    tmp = _suffixed(Path(out), ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2); False where the call does not exist."""
    libc_name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: str | Path, out: str | Path) -> Path:
    """Put the finished folder ``tmp`` at ``out`` atomically (see the module docstring) and return ``out``."""
    tmp, out = Path(tmp), Path(out)
    if out.exists() and _exchange(tmp, out):
        shutil.rmtree(tmp)  # now the old folder
        return out
    old = _suffixed(out, ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` write the folder's files into ``tmp``; on success it replaces ``out``
    atomically, on an error ``out`` is left as it was and ``tmp`` is removed."""
    out = Path(out)
    recover(out)
    tmp = fresh_tmp(out)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
