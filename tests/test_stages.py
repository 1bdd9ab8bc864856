"""01's, 03's and 04's decisions (``fslib.stages``), on the shipped params where they apply."""

import json

import pytest

from fslib.core import config
from fslib.stages import data, publish
from fslib.stages import evaluate as evaluate_stage


@pytest.fixture()
def P():
    return {**config.default_params(), **config.load_params(config.REPO_ROOT / "params" / "tiny.yaml")}


def test_synthetic_splits_follow_the_scene_params(P):
    splits, skipped = data.build_splits({**P, "n_train": 4, "n_val": 2, "n_test": 3, "n_ood": 1})
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 2, "test": 3, "ood": 1} and skipped == []
    assert all(r["image"].size == (P["image_size"], P["image_size"]) for r in splits["train"] if r["image"] is not None)


def test_user_data_goes_through_the_loaders(P, tmp_path, small_splits):
    rows = []
    for i, r in enumerate(small_splits["train"][:6]):
        if r["image"] is None:
            continue
        r["image"].save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": r["question"], "answer": r["answer"]})
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits, _ = data.build_splits({**P, "data_source": str(tmp_path / "mine.jsonl"), "val_fraction": 0.2,
                                   "test_fraction": 0.2})
    assert sum(len(v) for v in splits.values()) == len(rows) and "train" in splits


def test_stats_and_card_name_the_source(P, tmp_path, small_splits):
    data.save(P, tmp_path, small_splits)
    assert "synthetic" in (tmp_path / "data" / "README.md").read_text()
    tokens = {s: {"text_tokens": [10] * len(v), "visual_tokens": [4] * len(v)} for s, v in small_splits.items()}
    data.write_stats(P, tmp_path, small_splits, tokens, [])
    written = json.loads((tmp_path / "data_stats.json").read_text())
    assert written["params"]["data_source"] == "synthetic" and written["environment"]["git_sha"]


def test_predictions_hold_each_split_ids_and_answers(tmp_path):
    records = {"test": [{"id": "a"}, {"id": "b"}]}
    results = {"student": {"answers": {"test": {"normal": ["1", "2"]}}}, "student_int8": {"answers": {}}}
    doc = evaluate_stage.write_predictions(tmp_path, records, results)
    assert doc == json.loads((tmp_path / "predictions.json").read_text())
    assert doc["test"] == {"ids": ["a", "b"], "student": {"normal": ["1", "2"]}, "student_int8": None}


def test_the_published_checkpoint_is_named_in_training_json():
    trained = {"models": {"student": {"path": "/r/kd_student/best"}, "sft_student": {"path": "/r/sft/best"}}}
    assert publish.checkpoint_of(trained, "student") == "/r/kd_student/best"
    with pytest.raises(KeyError, match="trained: student, sft_student"):
        publish.checkpoint_of(trained, "kd")


@pytest.mark.parametrize("source, kind, name", [("synthetic", "synthetic", "FirstSight egocentric VQA"),
                                                ("/data/my_vqa.jsonl", "user", "my_vqa.jsonl")])
def test_provenance_comes_from_01s_data_source_not_the_models(tmp_path, source, kind, name):
    (tmp_path / "data_stats.json").write_text(json.dumps({"params": {"data_source": source, "seed": 0}}))
    trained = {"embedded": True, "params": {"alpha": 0.7}}  # the embedded pair, whatever the data
    params, dataset = evaluate_stage.provenance(tmp_path, trained, {"eval_split": "test"})
    assert dataset["type"] == kind and dataset["name"] == name and dataset["source"] == source
    assert params == {"data_source": source, "seed": 0, "alpha": 0.7, "eval_split": "test"}


def test_a_missing_ood_split_is_skipped_with_a_note_and_a_missing_eval_split_is_an_error():
    assert evaluate_stage.splits_to_score(["train", "val", "test", "ood"], "test", "ood") == (["test", "ood"], None)
    splits, note = evaluate_stage.splits_to_score(["train", "val", "test"], "test", "ood")
    assert splits == ["test"] and "ood_split 'ood' is not scored" in note and "train, val, test" in note
    assert evaluate_stage.splits_to_score(["train", "val", "test"], "test", "") == (["test"], None)
    with pytest.raises(KeyError, match="eval_split 'dev' is not a split of 01's data; it has: train, test"):
        evaluate_stage.splits_to_score(["train", "test"], "dev", "")
