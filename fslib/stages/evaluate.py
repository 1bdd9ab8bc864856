"""03_evaluate's decisions: which models are evaluated, whether accuracy means anything, where the data came from."""

from __future__ import annotations

from pathlib import Path

from fslib.core import fsio
from fslib.engine import randominit
from fslib.evaluation import teachercheck
from fslib.world.embedded import resolve_model


def models_to_evaluate(out_dir, eval_models: dict, *, embedded_root) -> tuple[dict, dict | None]:
    """The models of 02's ``training.json``, or, when ``eval_models`` is given, ``{name: model}`` (hub id, folder,
    ``embedded:`` or ``random-init:``); returns ``({name: {path, role}}, training.json or None)``."""
    if not eval_models:
        trained = fsio.read_json(Path(out_dir) / "training.json")
        return trained["models"], trained
    models = {}
    for name, model in eval_models.items():
        role = f"{name}: {model}, random weights" if randominit.is_random_init(model) else f"{name}: {model}"
        models[name] = {"path": resolve_model(model, embedded_root), "role": role}
    return models, None


def accuracy_note(models: dict) -> str | None:
    """Why accuracy is not computed (a random-weight model's answers mean nothing), or None when it is."""
    random = [n for n, m in models.items() if randominit.is_random_folder(m["path"])]
    return (f"{', '.join(random)} have random weights (real-size shapes, for speed and memory only): their answers "
            "would mean nothing" if random else None)


def provenance(out_dir, trained: dict | None, own_params: dict) -> tuple[dict, dict]:
    """The resolved params of every stage so far (01, 02, 03) and a description of the data, from 01's
    ``data_source`` (the models' kind says nothing about the data: a user's data runs with the embedded pair too)."""
    stats = fsio.read_json(Path(out_dir) / "data_stats.json")
    params = {**stats.get("params", {}), **(trained or {}).get("params", {}), **own_params}
    source = stats.get("params", {}).get("data_source", "synthetic")
    if source == "synthetic":
        return params, {"type": "synthetic", "name": "FirstSight egocentric VQA", "source": source}
    return params, {"type": "user", "name": Path(str(source)).name or str(source), "source": str(source)}


def write_predictions(out_dir, records: dict[str, list[dict]], results: dict) -> dict:
    """``predictions.json``: every scored split's question ids and each model's answers (normal and blind), beside
    ``metrics.json``, so a failure can be traced to its question."""
    doc = {s: {"ids": [r["id"] for r in recs], **{n: r["answers"].get(s) for n, r in results.items()}}
           for s, recs in records.items()}
    fsio.write_json(Path(out_dir) / "predictions.json", doc)
    return doc


def splits_to_score(available, eval_split: str, ood_split: str) -> tuple[list[str], str | None]:
    """The splits 03 scores (the headline ``eval_split`` first) and a note when ``ood_split`` is skipped: only the
    synthetic world has an out-of-distribution split, and a user's data need not."""
    available = list(available)
    if eval_split not in available:
        raise KeyError(f"eval_split {eval_split!r} is not a split of 01's data; it has: {', '.join(available)}")
    if ood_split and ood_split not in available:
        note = (f"Note: ood_split {ood_split!r} is not scored: 01's data has no such split (it has "
                f"{', '.join(available)}). Set ood_split to one of them, or to an empty string to skip it.")
        print(note, flush=True)  # in the notebook, so in the report, and on the console
        return [eval_split], note
    return [s for s in (eval_split, ood_split) if s], None


def with_selection_split(splits: list[str], available, select_split: str = "val") -> tuple[list[str], str | None]:
    """``splits`` plus the split the student to trust is chosen on (``fslib.evaluation.choice``): validation, never
    the test split the headline reports; (splits, None) when the data has no validation split (then no choice)."""
    if select_split not in list(available):
        print(f"Note: no {select_split!r} split: the student to publish is not chosen on validation.", flush=True)
        return splits, None
    return splits + [s for s in [select_split] if s not in splits], select_split


def teacher_check(out_dir) -> dict | None:
    """02's teacher check of this run (``teacher_check.json``), for metrics.json and the headline; None without it."""
    return teachercheck.read(out_dir)
