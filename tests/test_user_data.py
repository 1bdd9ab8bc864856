"""Your own data, end to end: every format the README documents through all four notebooks, with params/tiny.yaml's
settings made small. Four runs cover the combinations between them:

| case            | format                       | media         | unlabelled rows | teacher cache | qtype from          |
|-----------------|------------------------------|---------------|-----------------|---------------|---------------------|
| `datasetdict`   | saved DatasetDict (messages) | images        | yes             | on            | a `qtype` column    |
| `jsonl`         | JSONL                        | images, clips | yes             | on            | a `qtype` field     |
| `llava`         | LLaVA JSON                   | images, clips | no              | off (live)    | a `qtype` field     |
| `dataset`       | plain Dataset folder         | images        | no              | off (live)    | a `qtype` column    |

The `dataset` case is also the decision on a small case: its answers are code words the teacher cannot know (no
teacher preparation), so the teacher check must say distilling will not beat fine-tuning, and 03's choice on
validation is what 04 publishes (the SFT-only student unless the KD student beat it on validation).
"""

import html
import json

import datasets
import pytest
import yaml

from fslib.core import config
from fslib.stages import pipeline
from fslib.world import synth

# Only what makes the runs fast; everything else is params/tiny.yaml's (teacher_cache true, n_unlabelled 960 too).
FAST = {"teacher_epochs": 1, "epochs": 1, "batch_size": 4, "bench_repeats": 1, "bench_warmup": 1,
        "bench_batch_sizes": [1], "bench_variants": [], "val_fraction": 0.25, "test_fraction": 0.25}
CASES = {"datasetdict": {}, "jsonl": {}, "llava": {"teacher_cache": False},
         # code words: the SFT-only student learns them in a few steps, the unprepared teacher never saw them
         "dataset": {"teacher_cache": False, "prepare_teacher": False, "epochs": 6, "train_kd_labelled_baseline": False}}
CODE_WORDS = {}


def _records(seed, video_fraction):
    s = synth.build_synthetic(seed=seed, n_train=20, n_val=4, n_test=6, n_ood=0, image_size=112,
                              video_fraction=video_fraction, video_frames=4)
    return s["train"][:14], s["train"][14:], s["val"] + s["test"]  # labelled train, unlabelled, labelled held out


def _row(record, answer=True):
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["question"]}]}]
    if answer:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]})
    return {"images": [record["image"]], "messages": turns, "qtype": record["qtype"]}


def _media(record, folder, rid):
    if record["video"]:
        paths = [f"clips/{rid}/{i}.png" for i in range(len(record["video"]))]
        for p, frame in zip(paths, record["video"]):
            (folder / p).parent.mkdir(parents=True, exist_ok=True)
            frame.save(folder / p)
        return {"video": paths}
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    record["image"].save(folder / f"frames/{rid}.png")
    return {"image": f"frames/{rid}.png"}


def make_datasetdict(folder):
    """A user's dataset as `datasets` saves it: row 0 of every split exists, so ids must carry the split."""
    labelled, unlabelled, held = _records(5, 0.0)
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([_row(r) for r in labelled] + [_row(r, False) for r in unlabelled]),
        "validation": datasets.Dataset.from_list([_row(r) for r in held[:4]]),
        "test": datasets.Dataset.from_list([_row(r) for r in held[4:]])}).save_to_disk(str(folder / "my_vqa"))
    return folder / "my_vqa", len(unlabelled)


def make_jsonl(folder):
    labelled, unlabelled, held = _records(6, 0.34)
    lines = [{"id": f"r{i}", **_media(r, folder, f"r{i}"), "question": r["question"], "qtype": r["qtype"],
              **({"answer": r["answer"]} if i < len(labelled) + len(held) else {})}
             for i, r in enumerate(labelled + held + unlabelled)]
    (folder / "mine.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "mine.jsonl", len(unlabelled)


def make_llava(folder):
    labelled, _, held = _records(7, 0.34)
    items = [{"id": f"s{i}", **_media(r, folder, f"s{i}"), "qtype": r["qtype"], "conversations": [
        {"from": "human", "value": ("<video>\n" if r["video"] else "<image>\n") + r["question"]},
        {"from": "gpt", "value": r["answer"]}]} for i, r in enumerate(labelled + held)]
    (folder / "mine.json").write_text(json.dumps(items))
    return folder / "mine.json", 0


def make_dataset(folder):
    labelled, _, held = _records(8, 0.0)
    words = ("k", "v", "w", "x", "z", "j", "q", "y")  # one token each; no question of the world is answered so
    rows = []
    for r in labelled + held:
        CODE_WORDS.setdefault(r["qtype"], words[len(CODE_WORDS) % len(words)])
        rows.append(_row({**r, "answer": CODE_WORDS[r["qtype"]]}))
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "plain"))
    return folder / "plain", 0


MAKERS = {"datasetdict": make_datasetdict, "jsonl": make_jsonl, "llava": make_llava, "dataset": make_dataset}


@pytest.fixture(scope="module", params=list(CASES))
def user_run(request, tmp_path_factory):
    case = request.param
    root = tmp_path_factory.mktemp(f"user-{case}")
    source, n_unlabelled = MAKERS[case](root)
    params = {**yaml.safe_load((config.REPO_ROOT / "params" / "tiny.yaml").read_text()), **FAST, **CASES[case],
              "run_name": "mine", "reports_dir": str(root), "data_source": str(source)}
    (root / "mine.yaml").write_text(yaml.safe_dump(params))
    pipeline.run(root / "mine.yaml")
    return case, root / "mine", params, n_unlabelled


def _json(path):
    return json.loads(path.read_text())


def _same_weights(a, b):
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.slow
def test_each_format_runs_01_to_04_with_its_own_question_types_and_media(user_run):
    case, run, params, _ = user_run
    for stage in config.NOTEBOOKS:
        assert not _json(run / "notebooks" / f"{stage}.ipynb")["metadata"]["papermill"].get("exception"), stage
    metrics = _json(run / "metrics.json")
    assert metrics["dataset"]["type"] == "user" and "ood" not in metrics["splits"] and metrics["split"] == "test"
    data = datasets.load_from_disk(str(run / "data"))
    test_types = set(data["test"]["qtype"])
    assert "user" not in test_types and len(set(data["train"]["qtype"])) > 1  # the data's own kinds of question
    assert set(metrics["models"]["student"]["per_type"]) == test_types
    assert set(metrics["blind"]["prior_baseline"]["per_type"]) == test_types
    if case in ("jsonl", "llava"):  # clips, as frame lists
        assert "video" in set(data["train"]["media"]) | set(data["test"]["media"])
    assert metrics["dataset"]["name"] in (run / "hub" / "README.md").read_text()


@pytest.mark.slow
def test_unlabelled_rows_and_the_teacher_cache_are_used_as_the_check_allows(user_run):
    case, run, params, n_unlabelled = user_run
    check = _json(run / "teacher_check.json")
    assert check["sft_em"] is not None and check["n"] == len(datasets.load_from_disk(str(run / "data"))["val"])
    answers = run / "seqkd" / "answers.json"
    if check["ahead"] and n_unlabelled:  # the data's own unlabelled rows; no synthetic scenes for n_unlabelled
        assert len(_json(answers)["answers"]) == n_unlabelled
    else:  # a teacher that failed its check answers nothing
        assert not answers.exists()
    assert (run / "teacher_cache" / "meta.json").exists() == params["teacher_cache"]
    trained = _json(run / "training.json")
    assert (trained["trainings"]["kd_student"]["teacher"]["cache_dir"] is not None) == params["teacher_cache"]


@pytest.mark.slow
def test_03s_choice_on_validation_is_what_04_published_and_the_report_says_so(user_run):
    case, run, params, _ = user_run
    metrics, trained = _json(run / "metrics.json"), _json(run / "training.json")
    chosen = metrics["choice"]
    assert chosen["split"] == "val" and chosen["model"] in ("student", "kd_labelled_student", "sft_student")
    from pathlib import Path

    assert _same_weights(run / "hub" / "model.safetensors",
                         Path(trained["models"][chosen["model"]]["path"]) / "model.safetensors")
    page = (run / "index.html").read_text()
    assert "The student to trust" in page and html.escape(chosen["reason"]) in page
    card = (run / "hub" / "README.md").read_text()
    assert ("distilled from" in card.split("## Results")[0]) == (chosen["model"] != "sft_student")
    if not (chosen.get("verdict") or {}).get("kd_helped"):
        assert "distillation helped" not in card


@pytest.mark.slow
def test_a_teacher_that_cannot_beat_fine_tuning_is_reported_and_the_sft_student_published(user_run):
    case, run, params, _ = user_run
    if case != "dataset":
        pytest.skip("the decision case is the plain-Dataset run")
    check, metrics = _json(run / "teacher_check.json"), _json(run / "metrics.json")
    assert not check["ahead"] and not check["parts"]["sft"] and check["sft_em"] > check["teacher_em"]
    assert check["message"].startswith("Distilling from this teacher will not beat fine-tuning on this data")
    page = (run / "index.html").read_text()
    assert page.count("Teacher check failed") >= 2  # the headline and the top of 02
    assert metrics["choice"]["scores"]["sft_student"] >= metrics["choice"]["scores"]["student"]
    assert metrics["choice"]["model"] == "sft_student"
    assert "fine-tuned from" in (run / "hub" / "README.md").read_text()
