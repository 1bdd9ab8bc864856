"""The benchmark scripts' bookkeeping (the measurements themselves are the scripts' job, not the tests')."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from fslib.core.fsio import REPO_ROOT
from fslib.world import synth


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(em: dict, per_type: dict) -> dict:
    return {"split": "test", "n_eval": 4,
            "models": {name: {"exact_match": v, "per_type": {t: {"exact_match": per_type[t][name]} for t in per_type}}
                       for name, v in em.items()}}


def test_kd_vs_sft_collect_reads_each_seed_and_averages_per_type(tmp_path):
    kd_vs_sft = _script("kd_vs_sft")
    names = ("teacher", "student", "kd_labelled_student", "sft_student", "base_student")
    for seed, (kd, count_kd) in enumerate([(0.5, 0.75), (0.25, 0.25)]):
        run = tmp_path / "reports" / f"kd-vs-sft-seed{seed}"
        run.mkdir(parents=True)
        em = dict(zip(names, (0.5, kd, 0.4, 0.3, 0.0)))
        per_type = {"count": dict(zip(names, (1.0, count_kd, 0.5, 0.0, 0.0))),
                    "colour": dict(zip(names, (0.0, 0.5, 0.5, 0.5, 0.0)))}
        metrics = _metrics(em, per_type)
        if seed == 0:  # the KD student's interval wholly above the SFT-only student's on this seed only
            metrics["models"]["student"]["exact_match_ci"] = [0.45, 0.55]
            metrics["models"]["sft_student"]["exact_match_ci"] = [0.2, 0.4]
        metrics["blind"] = {"prior_baseline": {"exact_match": 0.2}}
        metrics["models"]["teacher"]["blind_exact_match"] = 0.3
        (run / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"runs": [{"run": str(tmp_path / "reports" / "kd-vs-sft-seed0"), "seconds": 12.5}],
                               "params": "params/tiny.yaml", "seeds": [0, 1],
                               "environment": {"command": "python benchmarks/kd_vs_sft.py "}}))
    assert kd_vs_sft.main(["--collect", "--seeds", "0", "1", "--reports-dir", str(tmp_path / "reports"),
                           "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["mean_exact_match"]["kd"] == 0.375 and res["mean_exact_match"]["sft"] == 0.3
    assert res["mean_per_type"]["count"] == {"teacher": 1.0, "kd": 0.5, "kd_labelled": 0.5, "sft": 0.0, "base": 0.0}
    t = res["targets"]
    assert abs(t["kd_minus_sft"]["value"] - 0.075) < 1e-12 and t["kd_minus_sft"]["met"] is False
    assert t["kd_over_teacher"] == {"value": 0.75, "target": 0.9, "met": False}
    assert t["seeds_with_separated_cis"] == {"value": 1, "target": 2, "met": False}
    assert t["teacher_worst_type"]["value"] == 0.0 and t["base_exact_match"]["met"] is True
    assert abs(t["teacher_blind_minus_prior"]["value"] - 0.1) < 1e-12 and t["teacher_blind_minus_prior"]["met"] is False
    assert res["builds"][0]["shipped"] and abs(res["builds"][0]["kd_minus_sft"] - 0.075) < 1e-12
    assert [r["seconds"] for r in res["runs"]] == [12.5, None]  # the full run's time is kept; unknown stays unknown
    assert res["environment"]["command"] == "python benchmarks/kd_vs_sft.py "
    assert res["environment"]["collected_by"].endswith("--collect --seeds 0 1 --reports-dir "
                                                       f"{tmp_path / 'reports'} --out {out}")


def test_kd_vs_sft_collect_names_a_missing_run(tmp_path):
    with pytest.raises(SystemExit, match="kd-vs-sft-seed7/metrics.json does not exist"):
        _script("kd_vs_sft").main(["--collect", "--seeds", "7", "--reports-dir", str(tmp_path),
                                   "--out", str(tmp_path / "o.json")])


def test_kd_vs_sft_collect_keeps_nothing_from_other_runs(tmp_path):
    kd_vs_sft = _script("kd_vs_sft")
    names = ("teacher", "student", "kd_labelled_student", "sft_student", "base_student")
    run = tmp_path / "reports" / "kd-vs-sft-seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(_metrics(dict(zip(names, (0.5, 0.4, 0.4, 0.3, 0.0))), {})))
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"runs": [{"run": str(run), "seconds": 99.0}], "params": "params/other.yaml",
                               "seeds": [0], "environment": {"command": "python benchmarks/kd_vs_sft.py --params x"}}))
    kd_vs_sft.main(["--collect", "--seeds", "0", "--reports-dir", str(tmp_path / "reports"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["runs"][0]["seconds"] is None and "--collect" in res["environment"]["command"]


def test_vision_probe_reads_labels_from_the_scene_and_a_probe_can_fail():
    from fslib.world import probe as vision_probe
    scene = {"objects": [{"name": "book", "colour": "red", "x": 0.9, "y": 0.1}],
             "hands": [{"x": 0.2, "y": 0.83, "held": {"name": "cup", "colour": "blue"}},
                       {"x": 0.8, "y": 0.83, "held": None}]}
    tokens = torch.arange(16.0)[:, None].repeat(1, 3)  # token i is (i, i, i): the row-major cell index
    ex = vision_probe.probe_examples([{"scene": scene}], [tokens], [(4, 4)])
    assert ex["object_category"][0][0, 0] == 3 and ex["object_colour"][0][0, 0] == 3  # top right cell
    assert ex["object_category"][1].tolist() == [vision_probe.synth.OBJECTS.index("book")]
    assert ex["held_object"][0][:, 0].tolist() == [12]  # bottom left; the empty right hand is no example
    # A feature that is the label is read perfectly; noise is read at about the majority class's rate.
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 6, (600,), generator=gen)
    readable = vision_probe.linear_probe(torch.nn.functional.one_hot(y, 6).float(), y)
    noise = vision_probe.linear_probe(torch.randn(600, 8, generator=gen), y)
    assert readable["accuracy"] == 1.0 and readable["test"] == 120
    assert noise["accuracy"] < noise["majority"] + 0.1


def test_cache_tail_mass_is_the_teacher_mass_outside_its_top_k(teacher_path, student_path, processor, pixels,
                                                                small_splits):
    """Against a direct softmax of the teacher's full logits at the answer positions; 0 when k covers the vocabulary,
    and more mass outside the top k at a higher temperature."""
    from fslib.engine import collate, losspaths, models

    cache_tail = _script("cache_tail")
    teacher = models.load_model(teacher_path, frozen=True)
    col = collate.VQACollator(processor, pixels)
    records = small_splits["train"][:5]
    vocab = models.load_model(student_path).get_output_embeddings().weight.shape[0]  # the cache's ids
    batch = col(records)
    logits = teacher(**batch["inputs"]).logits[losspaths.answer_positions(batch["labels"])][:, :vocab]
    expected = 1 - torch.softmax(logits / 3.0, -1).topk(4, -1).values.sum(-1)
    got = cache_tail.tail_mass(teacher, col, records, k=4, vocab=vocab, temperature=3.0, batch_size=2)
    assert got["tokens"] == expected.numel() > 5
    assert got["mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert got["max"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert cache_tail.tail_mass(teacher, col, records, k=vocab, vocab=vocab, temperature=3.0)["max"] < 1e-5
    cold = cache_tail.tail_mass(teacher, col, records, k=4, vocab=vocab, temperature=1.0)
    assert cold["mean"] < got["mean"]


def test_cache_tail_names_a_run_that_is_not_there(tmp_path):
    with pytest.raises(SystemExit, match="make report"):
        _script("cache_tail").main(["--run", str(tmp_path), "--out", str(tmp_path / "x.json")])


def test_kd_vs_sft_records_another_build_under_builds(tmp_path):
    from fslib.world import embedded

    kd_vs_sft = _script("kd_vs_sft")
    names = ("teacher", "student", "kd_labelled_student", "sft_student", "base_student")
    for run_name, kd in (("kd-vs-sft-seed0", 0.5), ("kd-vs-sft-build1-seed0", 0.45)):
        run = tmp_path / "reports" / run_name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_metrics(dict(zip(names, (0.6, kd, 0.4, 0.3, 0.1))), {})))
    pair = tmp_path / "pair-s1"
    pair.mkdir()
    (pair / embedded.RECIPE_FILE).write_text(json.dumps(embedded.recipe(build_seed=1)))
    out = tmp_path / "out.json"
    kd_vs_sft.main(["--collect", "--seeds", "0", "--reports-dir", str(tmp_path / "reports"), "--out", str(out),
                    "--build-pair", str(pair)])
    res = json.loads(out.read_text())
    other = [b for b in res["builds"] if not b["shipped"]]
    assert [(b["build_seed"], round(b["kd_minus_sft"], 6)) for b in other] == [(1, 0.15)]
    assert res["targets"]["build1_kd_minus_sft"]["met"] is True


@pytest.mark.slow
def test_lm_probe_trains_a_fresh_language_model_on_the_committed_towers(tmp_path):
    out = tmp_path / "lm.json"
    done = subprocess.run([sys.executable, "benchmarks/lm_probe.py", "--variants", "batch64", "student-2L",
                           "--records", "16", "--examples", "32", "--points", "1", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    teacher, student = res["variants"]["batch64"], res["variants"]["student-2L"]
    assert teacher["curve"][0]["examples"] == 0 and teacher["curve"][-1]["examples"] == 32  # the start, the end
    assert student["language_model_parameters"] < teacher["language_model_parameters"] / 2
    assert set(teacher["curve"][-1]["per_type"]) <= set(synth.QTYPES) and res["command"].startswith("python benchmarks")
