"""Your own data, end to end: a DatasetDict in TRL's messages/images format (train with unlabelled rows,
validation, test; no ood split) through all four notebooks with params/tiny.yaml's settings, teacher cache on."""

import json

import datasets
import pytest
import yaml

from fslib.core import config
from fslib.stages import pipeline
from fslib.world import synth

# Only what makes the run fast; everything else is params/tiny.yaml's (teacher_cache true, n_unlabelled 960 too).
FAST = {"teacher_epochs": 1, "epochs": 1, "batch_size": 4, "bench_repeats": 2, "bench_warmup": 1,
        "bench_batch_sizes": [1], "bench_variants": ["student:int8"]}


def _row(record, answer=True):
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["question"]}]}]
    if answer:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]})
    return {"images": [record["image"]], "messages": turns}


def user_datasetdict(folder, seed=5):
    """A user's dataset as `datasets` saves it: row 0 of every split exists, so ids must carry the split."""
    s = synth.build_synthetic(seed=seed, n_train=16, n_val=4, n_test=6, n_ood=0, image_size=112, video_fraction=0.0)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([_row(r) for r in s["train"][:12]] + [_row(r, False) for r in s["train"][12:]]),
        "validation": datasets.Dataset.from_list([_row(r) for r in s["val"]]),
        "test": datasets.Dataset.from_list([_row(r) for r in s["test"]])})
    dd.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    params = {**yaml.safe_load((config.REPO_ROOT / "params" / "tiny.yaml").read_text()), **FAST,
              "run_name": "mine", "reports_dir": str(root), "data_source": str(user_datasetdict(root / "my_vqa"))}
    (root / "mine.yaml").write_text(yaml.safe_dump(params))
    pipeline.run(root / "mine.yaml")
    return root / "mine"


@pytest.mark.slow
def test_user_datasetdict_runs_01_to_04_with_the_cache_and_names_its_source(user_run):
    for stage in config.NOTEBOOKS:
        nb = json.loads((user_run / "notebooks" / f"{stage}.ipynb").read_text())
        assert not nb["metadata"]["papermill"].get("exception"), stage
    metrics = json.loads((user_run / "metrics.json").read_text())
    assert metrics["dataset"]["type"] == "user" and metrics["dataset"]["name"] == "my_vqa"
    assert "ood" not in metrics["splits"] and metrics["split"] == "test"
    assert "my_vqa" in (user_run / "hub" / "README.md").read_text()
    assert json.loads((user_run / "teacher_cache" / "meta.json").read_text())["records"] > 0
    answered = json.loads((user_run / "seqkd" / "answers.json").read_text())["answers"]
    assert len(answered) == 4  # the data's own unlabelled rows; no synthetic scenes for n_unlabelled


@pytest.mark.slow
def test_user_run_report_shows_the_teacher_check_and_the_skipped_ood_split(user_run):
    check = json.loads((user_run / "teacher_check.json").read_text())
    assert check["n"] == 4 and json.loads((user_run / "metrics.json").read_text())["teacher_check"] == check
    page = (user_run / "index.html").read_text()
    assert "Is the teacher worth distilling?" in page
    assert ("Teacher check failed" in page) == (not check["ahead"])
    assert "is not scored: 01&#x27;s data has no such split" in page or "is not scored: 01's data has no such split" in page
