"""The embedded pair as a built artefact: the committed folder matches the code's recipe, and the build command works."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fslib.core.fsio import REPO_ROOT
from fslib.engine import models
from fslib.world import build, embedded


def test_committed_pair_was_built_from_the_codes_recipe():
    """A change to a preset, a pre-training recipe, the pixel bounds, the scene settings or the tokenizer's corpus
    cannot land without a rebuild (`make embedded`): the stored recipe would no longer be the code's."""
    stored = embedded.check_pair(embedded.PAIR_DIR)
    assert stored == embedded.recipe() and stored["budget"] == "full" and stored["build_seed"] == 0
    assert stored == json.loads((embedded.PAIR_DIR / embedded.RECIPE_FILE).read_text())


def test_a_changed_recipe_makes_the_committed_pair_stale(monkeypatch):
    wider = {**embedded.EMBEDDED_PRESETS["tiny-student"], "ffn": 512}
    monkeypatch.setitem(embedded.EMBEDDED_PRESETS, "tiny-student", wider)
    with pytest.raises(embedded.StalePairError, match="differs in: models.*make embedded"):
        embedded.check_pair(embedded.PAIR_DIR)
    with pytest.raises(embedded.StalePairError):
        embedded.resolve_model("embedded:tiny-student", "unused")


def test_a_missing_pair_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.PAIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(embedded.StalePairError, match="nowhere.*recipe.json does not exist.*make embedded"):
        embedded.resolve_model("embedded:tiny-teacher", tmp_path)


def test_embedded_names_resolve_to_the_committed_folders(tmp_path):
    for preset in embedded.EMBEDDED_PRESETS:
        assert embedded.resolve_model(f"embedded:{preset}", tmp_path) == str(embedded.PAIR_DIR / preset)
    assert not list(tmp_path.iterdir())  # nothing built or copied into the run


def test_committed_pair_is_small_and_its_report_is_complete():
    report = json.loads((embedded.PAIR_DIR / embedded.REPORT_FILE).read_text())
    on_disk = sum(f.stat().st_size for f in embedded.PAIR_DIR.rglob("*") if f.is_file())
    assert on_disk <= 60 * 2**20, on_disk
    measured = report["measured"]["models"]
    for name in embedded.EMBEDDED_PRESETS:
        assert set(measured[name]["vision_probe"]) == {"object_category", "object_colour", "held_object"}
        assert len(measured[name]["questions"]["per_type"]) == 8  # all eight question types
    assert measured["tiny-teacher"]["questions"]["blind_exact_match"] is not None
    assert report["wall_seconds"] > 0 and report["commit"] and report["recipe_budget"] == "full"
    teacher, student = (models.param_counts(models.load_model(embedded.PAIR_DIR / n))
                        for n in ("tiny-teacher", "tiny-student"))
    assert 2 * student["params_language"] <= teacher["params_language"]  # at most half the teacher's language model


@pytest.mark.slow
def test_tiny_budget_build_runs_the_command_and_is_deterministic(tmp_path, monkeypatch):
    out = tmp_path / "pair"
    done = subprocess.run([sys.executable, "-m", "fslib.world.build", "--out", str(out), "--budget", "tiny",
                           "--threads", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[build] tiny-teacher: random init" in done.stdout and "teacher EM" in done.stdout
    assert embedded.check_pair(out) == embedded.recipe(budget="tiny")
    assert not (tmp_path / "pair.parts").exists()
    for name in embedded.EMBEDDED_PRESETS:  # loads like the committed pair, with stock transformers
        assert models.load_model(out / name).config.get_text_config().hidden_size == \
            embedded.EMBEDDED_PRESETS[name]["hidden"]
    # The same command again gives the same weights; an interrupted build keeps what it finished.
    calls = []
    threads = torch.get_num_threads()
    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda folder, name, *a, **k: calls.append(name) or real(folder, name, *a, **k))
    parts = tmp_path / "again.parts"
    torch.set_num_threads(1)  # as the command ran (--threads 1): another thread count sums floats in another order
    try:
        real(parts / "tiny-teacher", "tiny-teacher", embedded.recipe(budget="tiny")["models"]["tiny-teacher"],
             embedded.build_tiny_processor(embedded.default_corpus(), **embedded.TINY_PIXELS), progress=False)
        stamp = (parts / "tiny-teacher" / "firstsight_embedded.json").stat().st_mtime_ns
        build.build(tmp_path / "again", budget="tiny", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert calls == ["tiny-teacher", "tiny-student"]
    for name in embedded.EMBEDDED_PRESETS:
        a, b = (load_file(str(d / name / "model.safetensors")) for d in (out, tmp_path / "again"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "again" / "tiny-teacher" / "firstsight_embedded.json").stat().st_mtime_ns == stamp  # kept


def test_build_seed_moves_every_seed_and_budget_shrinks_every_stage():
    full, other, tiny = embedded.recipe(), embedded.recipe(build_seed=1), embedded.recipe(budget="tiny")
    for name in embedded.EMBEDDED_PRESETS:
        assert other["models"][name]["preset"]["seed"] != full["models"][name]["preset"]["seed"]
        assert other["models"][name]["pretrain"]["seed"] != full["models"][name]["pretrain"]["seed"]
        for stage, knobs in embedded.TINY_BUDGET.items():
            if full["models"][name]["pretrain"].get(stage):
                assert all(tiny["models"][name]["pretrain"][stage][k] == v for k, v in knobs.items())
    with pytest.raises(ValueError, match="budget"):
        embedded.recipe(budget="huge")


@pytest.mark.slow
def test_a_tower_is_reused_only_from_a_build_with_the_same_vision_key(tmp_path):
    """The vision stage does not depend on the language model's depth (the tower is created and seeded first), so
    ``--towers-from`` may take it from an earlier build with an equal vision key; another key trains it anew."""
    processor = embedded.build_tiny_processor(embedded.default_corpus(), **embedded.TINY_PIXELS)
    base = embedded.recipe(budget="tiny")["models"]["tiny-student"]
    vision_only = {**base, "pretrain": {k: v for k, v in base["pretrain"].items() if k != "language"}}
    deeper = {**vision_only, "preset": {**vision_only["preset"], "layers": 3}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build.build_model(tmp_path / "a" / "tiny-student", "tiny-student", vision_only, processor, progress=False)
        build.build_model(tmp_path / "b" / "tiny-student", "tiny-student", deeper, processor, progress=False)
        build.build_model(tmp_path / "c" / "tiny-student", "tiny-student", deeper, processor, progress=False,
                          towers_from=tmp_path / "a")
        other_seed = {**deeper, "pretrain": {**deeper["pretrain"], "seed": 77}}
        build.build_model(tmp_path / "d" / "tiny-student", "tiny-student", other_seed, processor, progress=False,
                          towers_from=tmp_path / "a")
    finally:
        torch.set_num_threads(threads)
    towers = {k: {n: t for n, t in load_file(str(tmp_path / k / "tiny-student" / "model.safetensors")).items()
                  if n.startswith("visual.")} for k in "abcd"}
    assert towers["a"] and all(torch.equal(towers["a"][n], towers["b"][n]) for n in towers["a"])  # trained: same
    assert all(torch.equal(towers["a"][n], towers["c"][n]) for n in towers["a"])  # reused
    assert not all(torch.equal(towers["a"][n], towers["d"][n]) for n in towers["a"])  # another seed: trained
    stamp = lambda k: json.loads((tmp_path / k / "tiny-student" / "firstsight_embedded.json").read_text())  # noqa
    assert "reused_from" in stamp("c")["pretraining"]["vision"]
    assert "reused_from" not in stamp("d")["pretraining"]["vision"]
