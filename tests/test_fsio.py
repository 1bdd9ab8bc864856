"""Atomic files and folders (fslib.core.fsio): a reader sees the complete old or the complete new version."""

import sys
from pathlib import Path

import pytest

from fslib.core import fsio


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir()}


def test_json_round_trip_leaves_no_tmp(tmp_path):
    path = fsio.write_json(tmp_path / "sub" / "a.json", {"x": 1, "p": Path("/p")})
    assert fsio.read_json(path) == {"x": 1, "p": "/p"}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    with pytest.raises(FileNotFoundError, match="run the stage that writes it"):
        fsio.read_json(tmp_path / "missing.json")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_replace_dir_replaces_a_non_empty_folder(tmp_path, monkeypatch, exchange):
    if not exchange:  # the two-rename path of systems without renameat2
        monkeypatch.setattr(fsio, "_exchange", lambda a, b: False)
    out = _folder(tmp_path / "model", {"old.bin": "old", "shared.json": "old"})
    tmp = _folder(fsio.fresh_tmp(out), {"new.bin": "new", "shared.json": "new"})
    assert fsio.replace_dir(tmp, out) == out
    assert _contents(out) == {"new.bin": "new", "shared.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no model.old, no model.tmp


def test_replace_dir_creates_a_missing_folder(tmp_path):
    tmp = _folder(tmp_path / "data.tmp", {"a": "1"})
    fsio.replace_dir(tmp, tmp_path / "data")
    assert _contents(tmp_path / "data") == {"a": "1"} and not tmp.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_linux_swaps_in_one_step_without_an_old_folder(tmp_path, monkeypatch):
    results, renames = [], []
    real_exchange, real_rename = fsio._exchange, Path.rename

    def exchange(a, b):
        results.append(real_exchange(a, b))
        return results[-1]

    def rename(self, target):
        renames.append(Path(target).name)
        return real_rename(self, target)

    monkeypatch.setattr(fsio, "_exchange", exchange)
    monkeypatch.setattr(Path, "rename", rename)
    out = _folder(tmp_path / "model", {"a": "old"})
    fsio.replace_dir(_folder(tmp_path / "model.tmp", {"a": "new"}), out)
    assert results == [True] and renames == []  # one exchange; `model.old` never existed
    assert _contents(out) == {"a": "new"}


def test_atomic_dir_replaces_the_folder_on_success(tmp_path):
    out = _folder(tmp_path / "cache", {"old": "1"})
    with fsio.atomic_dir(out) as tmp:
        assert tmp == tmp_path / "cache.tmp" and _contents(out) == {"old": "1"}  # untouched while writing
        _folder(tmp, {"new": "2"})
    assert _contents(out) == {"new": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_atomic_dir_keeps_the_old_folder_when_the_body_raises(tmp_path):
    out = _folder(tmp_path / "cache", {"old": "1"})
    with pytest.raises(RuntimeError, match="half-way"):
        with fsio.atomic_dir(out) as tmp:
            _folder(tmp, {"partial": "x"})
            raise RuntimeError("half-way")
    assert _contents(out) == {"old": "1"}
    assert not (tmp_path / "cache.tmp").exists()


def test_recover_restores_the_old_folder_after_a_crash_between_renames(tmp_path):
    out = tmp_path / "ckpt"
    _folder(tmp_path / "ckpt.old", {"weights": "old"})
    _folder(tmp_path / "ckpt.tmp", {"weights": "half"})
    fsio.recover(out)
    assert _contents(out) == {"weights": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_drops_a_stale_old_folder_when_the_new_one_is_in_place(tmp_path):
    out = _folder(tmp_path / "ckpt", {"weights": "new"})
    _folder(tmp_path / "ckpt.old", {"weights": "old"})
    fsio.recover(out)
    assert _contents(out) == {"weights": "new"} and not (tmp_path / "ckpt.old").exists()
