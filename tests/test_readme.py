"""README.md gets a newcomer from clone to report, and its generated blocks are current."""

import json

import pytest

from fslib.core import config
from fslib.reporting import readme

TEXT = readme.README.read_text()


def test_params_reference_is_current():
    current = readme.current_block(TEXT, "params")
    assert current == readme.params_reference().rstrip(), "README's params reference is stale: run `make readme`"
    for key in config.declared_params():
        assert f"| `{key}` |" in current


def test_the_two_commands_with_cpu_times_and_results():
    for cmd in ("make report", "make test"):
        assert f"`{cmd}`" in TEXT
    assert "minutes" in TEXT and "reports/tiny/index.html" in TEXT and "metrics.json" in TEXT


@pytest.mark.parametrize("needle", [
    "params/qwen2vl-7b-to-2b.yaml", "papermill", "scripts/slurm/distill.sbatch", "configs/accelerate/",
    "accelerate launch", "environment.yml", "make lab", "make compare", "Troubleshooting", "out of memory", "NaN",
    "reports/index.html", "HF_TOKEN", "git clone"])
def test_covers(needle):
    assert needle.lower() in TEXT.lower(), needle


def test_headline_is_generated_not_typed():
    block = readme.current_block(TEXT, "headline")
    assert "make readme" in block and "metrics.json" in block


@pytest.mark.slow
def test_headline_block_reads_a_run(tiny_run):
    block = readme.headline_block(tiny_run / "metrics.json")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert f"{metrics['models']['student']['exact_match']:.3f}" in block
    assert "| student | KD student (labelled + teacher-answered questions) |" in block


@pytest.mark.slow
def test_update_rewrites_only_the_marked_blocks(tmp_path, tiny_run):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- BEGIN generated:params (make readme) -->\nSTALE-CONTENT\n<!-- END generated:params -->\n"
                    "middle\n<!-- BEGIN generated:headline (make readme) -->\nSTALE-CONTENT\n<!-- END generated:headline -->\n"
                    "end\n")
    assert readme.update(path, tiny_run / "metrics.json") == ["params", "headline"]
    text = path.read_text()
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n") and "STALE-CONTENT" not in text
    assert readme.update(path, tiny_run / "metrics.json") == []


def test_kd_vs_sft_block_is_read_from_the_benchmark_json(tmp_path):
    runs = [{"seed": s, "n_eval": 96, "exact_match": {"teacher": 0.5, "kd": 0.4 + s / 100, "kd_labelled": 0.38,
                                                      "sft": 0.35, "teacher_blind": 0.2}} for s in (0, 1)]
    res = {"runs": runs, "mean_exact_match": {"teacher": 0.5, "kd": 0.405, "kd_labelled": 0.38, "sft": 0.35,
                                              "teacher_blind": 0.2},
           "targets": {"kd_minus_sft": {"value": 0.055, "target": 0.10, "met": False},
                       "kd_over_teacher": {"value": 0.81, "target": 0.9, "met": False},
                       "base_exact_match": {"value": 0.3, "target": 0.45, "met": True},
                       "seeds_with_separated_cis": {"value": 2, "target": 2, "met": True},
                       "build1_kd_minus_sft": {"value": 0.08, "target": 0.07, "met": True}},
           "params": "params/tiny.yaml", "environment": {"command": "python benchmarks/kd_vs_sft.py"}}
    path = tmp_path / "kd_vs_sft.json"
    path.write_text(json.dumps(res))
    block = readme.kd_vs_sft_block(path)
    assert "| seed 1 | 0.500 | 0.410 | 0.380 | 0.350 | 0.200 |" in block
    assert "| KD − SFT (mean of seeds) | +0.055 | ≥ 0.10 | **not met** |" in block
    assert "| KD / teacher | 0.810 | ≥ 0.90 | **not met** |" in block
    assert "| student's starting weights | 0.300 | ≤ 0.45 | met |" in block
    assert "| seeds whose 95% CIs (KD above SFT) do not overlap | 2 | ≥ 2 | met |" in block
    assert "| KD − SFT, another build (build seed 1) | +0.080 | ≥ 0.07 | met |" in block
    assert "Per question type" not in block  # older results have no per-type means
    res["mean_per_type"] = {"count": {"teacher": 0.6, "kd": 0.5, "kd_labelled": 0.45, "sft": 0.3, "base": None}}
    path.write_text(json.dumps(res))
    block = readme.kd_vs_sft_block(path)
    assert "| `count` | 0.600 | 0.500 | 0.450 | 0.300 | — |" in block
    assert block.index("Per question type") < block.index("*Read from")
    assert readme.current_block(TEXT, "kd_vs_sft"), "README has no kd_vs_sft block: run `make readme`"


def test_vision_probe_block_is_read_from_the_benchmark_json(tmp_path):
    res = {"scenes": 12, "command": "python benchmarks/vision_probe.py ",
           "models": {"embedded:tiny-teacher": {"object_category": {"accuracy": 0.4171, "majority": 0.197},
                                                "held_object": {"accuracy": 0.738, "majority": 0.19}}}}
    path = tmp_path / "vision_probe.json"
    path.write_text(json.dumps(res))
    block = readme.vision_probe_block(path)
    assert "| `embedded:tiny-teacher` | 0.417 (0.197) | — | 0.738 (0.190) |" in block
    assert "12 scenes" in block and "`python benchmarks/vision_probe.py`" in block


def test_cache_tail_block_is_read_from_the_benchmark_json(tmp_path):
    res = {"seeds": [0, 1], "run": "reports/tiny", "command": "python benchmarks/cache_tail.py ",
           "probe": {"questions": 600},
           "tail_mass": {"k": 64, "vocab": 384, "by_temperature": [{"temperature": 1.0, "mean": 0.0012, "max": 0.05},
                                                                  {"temperature": 3.0, "mean": 0.5512, "max": 0.74}]},
           "variants": {"live": {"exact_match": [0.3867, 0.3833], "mean": 0.385, "train_s_mean": 45.2},
                        "renormalise": {"exact_match": [0.3933, 0.3767], "mean": 0.385, "train_s_mean": 27.6}}}
    path = tmp_path / "cache_tail.json"
    path.write_text(json.dumps(res))
    block = readme.cache_tail_block(path)
    assert "| live teacher | 0.387 | 0.383 | **0.385** | 45 |" in block
    assert "| cache, `renormalise` | 0.393 | 0.377 | **0.385** | 28 |" in block
    assert "at T = 1 mean 0.00 (max 0.05); at T = 3 mean 0.55 (max 0.74)" in block
    assert "top 64 of 384 ids" in block and "600 probe questions" in block


def _section(title: str) -> str:
    return TEXT.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _fenced(text: str, lang: str) -> list[str]:
    return [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith(lang + "\n")]


def test_your_data_examples_load_as_written(tmp_path, monkeypatch):
    """The README's JSONL and messages-format examples, with their media written here, go through 01's loaders."""
    from PIL import Image

    from fslib.data import sources

    section = _section("Your own data")
    monkeypatch.chdir(tmp_path)
    for name in ("frames/kitchen-1.png", "frames/kitchen-3.png", *(f"clips/k2/{i}.png" for i in range(4))):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (120, 80, 40)).save(tmp_path / name)
    (tmp_path / "mine.jsonl").write_text(_fenced(section, "jsonl")[0])
    splits, skipped = sources.load_splits("mine.jsonl", val_fraction=0.0, test_fraction=0.0)
    assert skipped == [] and [r["id"] for r in splits["train"]] == ["kitchen-1", "kitchen-2", "kitchen-3"]
    assert [r["media"] for r in splits["train"]] == ["image", "video", "image"] and splits["train"][2]["answer"] is None
    exec(_fenced(section, "python")[0], {})  # writes my_vqa/ as the README says
    splits, _ = sources.load_splits("my_vqa")
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert splits["train"][1]["answer"] is None
    assert "cp params/tiny.yaml params/mine.yaml" in section and "make report PARAMS=params/mine.yaml" in section


def test_user_data_block_is_read_from_the_benchmark_json(tmp_path):
    res = {"command": "python benchmarks/user_data.py ", "git_sha": "0123456789abcdef", "sizes": {"train": 10},
           "dataset": {"name": "digits_vqa"}, "changed_params": {"data_source": "x", "teacher_epochs": 16},
           "models": {"teacher": {"exact_match": 0.375, "exact_match_ci": [0.335, 0.413], "blind_exact_match": 0.3,
                                  "per_type": {"digit": 0.25, "parity": 0.5}},
                      "sft_student": {"exact_match": 0.648, "exact_match_ci": [0.6, 0.7], "blind_exact_match": None,
                                      "per_type": {"digit": 0.6, "parity": 0.7}}},
           "teacher_check": {"n": 100, "teacher_em": 0.28, "teacher_blind_em": 0.27, "student_start_em": 0.0,
                             "sft_em": 0.61, "ahead": False, "message": "Distilling from this teacher will not ..."},
           "choice": {"model": "sft_student", "split": "val", "reason": "The SFT-only student has the best ..."},
           "published": "sft_student", "teacher_epochs": 16,
           "trainings": {"teacher": {"epochs_run": 5, "best_epoch": 3, "stopped_early": {"after_epoch": 5},
                                     "val_loss": [0.9, 0.8, 0.7, 0.75, 0.76]}},
           "stage_seconds": {"01_data": 10.0, "02_distill": 300.4}, "distill_step_seconds": {"SFT-student": 100.2},
           "load_average_before": [3.2, 2.0, 1.0], "cpus": 2}
    path = tmp_path / "user_data.json"
    path.write_text(json.dumps(res))
    block = readme.user_data_block(path)
    assert "| model | test exact match [95% CI] | blind | `digit` | `parity` |" in block
    assert "| teacher, prepared on the labels | 0.375 [0.335, 0.413] | 0.300 | 0.250 | 0.500 |" in block
    assert "| SFT-only student | 0.648 [0.600, 0.700] | — | 0.600 | 0.700 |" in block
    assert "teacher 0.280 (blind 0.270), the SFT-only student 0.610" in block and "Distilling from this" in block
    assert "5 epochs of at most 16, best epoch 3 (stopped on validation)" in block
    assert "(03, chosen on the val split): `sft_student`" in block and "04 published `sft_student`" in block
    assert "02 300 s" in block and "`SFT-student` 100 s" in block and "load average 3.2 on 2 CPUs" in block
    assert "`digits_vqa` (train 10 rows), with `teacher_epochs: 16`" in block and "commit `0123456789ab`" in block


def test_embedded_block_is_read_from_the_build_report(tmp_path):
    q = lambda em: {"n": 4, "exact_match": em, "blind_exact_match": 0.25, "prior_baseline": 0.3,  # noqa: E731
                    "per_type": {"count": {"exact_match": em / 2}}}
    model = lambda em: {"parameters": {"params_language": 1000, "params_vision": 500},  # noqa: E731
                        "vision_probe": {"object_category": {"accuracy": 0.7}}, "questions": q(em)}
    res = {"measured": {"models": {"tiny-teacher": model(0.9), "tiny-student": model(0.4)},
                        "settings": {"questions": 4, "scenes": 9, "image_size": 112}},
           "sizes": {"tiny-teacher": {"safetensors_bytes": 2**20}, "tiny-student": {"safetensors_bytes": 2**21}},
           "wall_seconds": 60, "commit": "abcdef1234567", "recipe_budget": "full", "build_seed": 0,
           "pretraining": {"tiny-teacher": {"seconds": 1800}, "tiny-student": {"seconds": 600}}}
    path = tmp_path / "build_report.json"
    path.write_text(json.dumps(res))
    block = readme.embedded_block(path)
    assert "| **exact match, probe questions** | **0.900** | **0.400** |" in block
    assert "| `count` | 0.450 | 0.200 |" in block and "| weights (safetensors) | 1.0 MiB | 2.0 MiB |" in block
    assert "(`tiny-teacher` 30 min, `tiny-student` 10 min;" in block and "measured in 1 min, at commit `abcdef123456`" in block
