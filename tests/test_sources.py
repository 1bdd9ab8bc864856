"""01's data sources: users' own files split and checked, and the notebook run on one of them."""
import json

import datasets
import pytest
from PIL import Image

from fslib.core import config
from fslib.data import sources, store


def _jsonl(folder, n=20, bad_line=None, unlabelled=0):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "red.png")
    rows = [{"image": "red.png", "question": f"What colour is thing {i}?", "answer": "red"} for i in range(n)]
    rows += [{"image": "red.png", "question": f"And thing {i}?"} for i in range(unlabelled)]
    if bad_line is not None:
        rows[bad_line - 1] = {"image": "missing.png", "question": "Where?", "answer": "here"}
    path = folder / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_file_without_splits_is_split_by_fraction_and_unlabelled_records_train(tmp_path):
    path = _jsonl(tmp_path, n=20, unlabelled=3)
    splits, skipped = sources.load_splits(str(path), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 14 + 3, "val": 2, "test": 4} and skipped == []
    assert all(r["answer"] is not None for r in splits["val"] + splits["test"])
    assert {r["split"] for r in splits["test"]} == {"test"}
    ids = [r["id"] for s in splits.values() for r in s]
    assert len(ids) == len(set(ids))  # no record in two splits
    again, _ = sources.load_splits(str(path), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert [r["id"] for r in again["test"]] == [r["id"] for r in splits["test"]]


def test_a_bad_record_stops_with_file_and_line_or_is_skipped_and_listed(tmp_path):
    path = _jsonl(tmp_path, bad_line=5)
    with pytest.raises(store.DataError, match=r"mine\.jsonl, line 5: .*missing\.png"):
        sources.load_splits(str(path))
    splits, skipped = sources.load_splits(str(path), on_bad_sample="skip")
    assert sum(len(v) for v in splits.values()) == 19
    assert skipped[0]["record"] == 5 and skipped[0]["file"].endswith("mine.jsonl")


def test_a_saved_datasetdict_keeps_its_own_splits(tmp_path):
    img = Image.new("RGB", (32, 32), (0, 0, 255))
    row = lambda i: {"images": [img], "messages": [  # noqa: E731
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Colour {i}?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]}
    dd = datasets.DatasetDict({name: datasets.Dataset.from_list([row(i) for i in range(n)])
                               for name, n in (("train", 5), ("validation", 2), ("test", 3))})
    dd.save_to_disk(str(tmp_path / "ds"))
    splits, _ = sources.load_splits(str(tmp_path / "ds"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "val": 2, "test": 3}
    ids = [r["id"] for recs in splits.values() for r in recs]  # row 0 of train and row 0 of validation differ
    assert len(ids) == len(set(ids)) and splits["val"][0]["id"] == "ds-validation-0-t0"


def test_record_ids_that_collide_across_splits_are_named(tmp_path):
    splits = {"train": [{"id": "a"}, {"id": "b"}], "val": [{"id": "b"}], "test": [{"id": "a"}, {"id": "c"}]}
    with pytest.raises(store.DataError, match=r"mine.jsonl: 2 record id\(s\) occur more than once: 'a' \(train, "
                                              r"test\); 'b' \(train, val\)"):
        sources.check_unique_ids(splits, str(tmp_path / "mine.jsonl"))
    assert sources.check_unique_ids({"train": [{"id": "a"}], "val": [{"id": "b"}]}, "x") is not None


def test_bad_fractions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        sources.load_splits(str(_jsonl(tmp_path)), val_fraction=0.5, test_fraction=0.5)


def test_limits_name_the_source_split_and_record():
    splits = {"train": [{"id": "a"}, {"id": "b"}], "val": [{"id": "c"}]}
    tokens = {"train": {"text_tokens": [10, 30], "visual_tokens": [4, 4]}, "val": {"text_tokens": [5],
                                                                               "visual_tokens": [64]}}
    with pytest.raises(store.DataError, match=r"mine\.jsonl \[train\], index 1: record 'b': 34 tokens"):
        sources.check_limits(splits, tokens, max_length=20, max_visual_tokens=0, on_bad_sample="error",
                             source="mine.jsonl")
    kept, kept_tokens, skipped = sources.check_limits(splits, tokens, max_length=20, max_visual_tokens=16,
                                                      on_bad_sample="skip", source="mine.jsonl")
    assert [r["id"] for r in kept["train"]] == ["a"] and kept["val"] == []
    assert kept_tokens == {"train": {"text_tokens": [10], "visual_tokens": [4]},
                           "val": {"text_tokens": [], "visual_tokens": []}}
    assert [s["reason"].split(":")[0] for s in skipped] == ["record 'b'", "record 'c'"]


@pytest.mark.slow
def test_01_builds_the_dataset_from_your_jsonl_and_lists_skipped_records(tmp_path):
    import papermill as pm

    path = _jsonl(tmp_path, n=12, bad_line=3)
    params = {"run_name": "mine", "reports_dir": str(tmp_path / "reports"), "data_source": str(path),
              "on_bad_sample": "skip", "val_fraction": 0.25, "test_fraction": 0.25}
    pm.execute_notebook(str(config.notebook_path("01_data")), str(tmp_path / "01.ipynb"), parameters=params,
                        kernel_name="python3", progress_bar=False)
    run = tmp_path / "reports" / "mine"
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["n_skipped"] == 1 and stats["skipped"][0]["record"] == 3
    saved = datasets.load_from_disk(str(run / "data"))
    assert {k: saved[k].num_rows for k in saved} == {"train": 5, "val": 3, "test": 3}
    assert saved["train"][0]["question"].startswith("What colour is thing")
