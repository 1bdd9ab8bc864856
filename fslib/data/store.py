"""Datasets on disk, the record form every loader returns, and loud validation.

Every loader returns records in the same dict form as ``fslib.world.synth`` (id, split, scene_seed, qtype, media,
question, answer, aliases, image, video, pairs, target) plus a list of skipped samples. A bad sample either raises
``DataError`` naming the file and the record, or (``on_bad_sample="skip"``) is left out and listed in ``skipped``
as {"file", "record", "reason"}. Nothing is ever replaced by stand-in data. Users' own formats are read by
``fslib.data.formats``; choosing the loader and the length / visual-token limits are in ``fslib.data.sources``.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

ON_BAD_SAMPLE = ("error", "skip")
FORMATS = ("jsonl", "llava", "hf")
FEATURES = datasets.Features({
    "id": datasets.Value("string"), "split": datasets.Value("string"), "scene_seed": datasets.Value("int64"),
    "qtype": datasets.Value("string"), "media": datasets.Value("string"), "question": datasets.Value("string"),
    "answer": datasets.Value("string"), "aliases": datasets.List(datasets.Value("string")),
    "image": datasets.Image(), "video": datasets.List(datasets.Image()),
    "pairs": datasets.List(datasets.Value("string")), "target": datasets.Value("string")})


class DataError(ValueError):
    """A bad sample. ``record`` is the 1-based line (JSONL) or the 0-based index (JSON list, datasets)."""

    def __init__(self, file, record: int | None, reason: str, unit: str = "index"):
        self.file, self.record, self.reason = str(file), record, reason
        super().__init__(f"{file}: {reason}" if record is None else f"{file}, {unit} {record}: {reason}")


def check_on_bad_sample(on_bad_sample: str) -> None:
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")


def bad_sample(err: DataError, on_bad_sample: str, skipped: list) -> None:
    """What every loader does with a bad record: raise ``err`` ("error"), or list it in ``skipped`` ("skip")."""
    if on_bad_sample == "error":
        raise err
    skipped.append({"file": err.file, "record": err.record, "reason": err.reason})


# ------------------------------------------------------------------------------------------- saved datasets


def dataset_stats(splits: dict[str, list[dict]]) -> dict:
    """Per-split counts of records, question types and media, and the scene-seed range, read from the records."""
    out = {}
    for name, recs in splits.items():
        seeds = [r["scene_seed"] for r in recs if r.get("scene_seed", -1) >= 0]
        out[name] = {"n": len(recs), "qtypes": dict(sorted(collections.Counter(r["qtype"] for r in recs).items())),
                     "media": dict(sorted(collections.Counter(r["media"] for r in recs).items())),
                     "labelled": sum(r.get("answer") is not None for r in recs),
                     "scene_seed_range": [min(seeds), max(seeds)] if seeds else None}
    return out


def _card_text(stats: dict, card: dict) -> str:
    n = sum(s["n"] for s in stats.values())
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K" if n < 100000 else "n>100K"
    data = DatasetCardData(pretty_name=card.get("pretty_name", "FirstSight egocentric VQA"), language="en",
                           license=card.get("license", "apache-2.0"), size_categories=size,
                           task_categories=["visual-question-answering"])
    qtypes = sorted({q for s in stats.values() for q in s["qtypes"]})
    lines = [f"# {data.pretty_name}", "", "## Provenance", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v if isinstance(v, str) else json.dumps(v, default=str)} |" for k, v in card.items()]
    lines += ["", "## Splits", "", "| split | records | labelled | image | video | scene seeds |",
              "|---|---|---|---|---|---|"]
    for name, s in stats.items():
        seeds = "-" if s["scene_seed_range"] is None else f"{s['scene_seed_range'][0]}..{s['scene_seed_range'][1]}"
        lines.append(f"| {name} | {s['n']} | {s['labelled']} | {s['media'].get('image', 0)} "
                     f"| {s['media'].get('video', 0)} | {seeds} |")
    lines += ["", "## Question types", "", "| split | " + " | ".join(qtypes) + " |", "|---" * (len(qtypes) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(s["qtypes"].get(q, 0)) for q in qtypes) + " |"
              for name, s in stats.items()]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def _row(r: dict) -> dict:
    return {"id": r["id"], "split": r.get("split", ""), "scene_seed": r.get("scene_seed", -1), "qtype": r["qtype"],
            "media": r["media"], "question": r["question"], "answer": r.get("answer"),
            "aliases": list(r.get("aliases") or []), "image": r.get("image"), "video": list(r.get("video") or []),
            "pairs": list(r.get("pairs") or []), "target": r.get("target")}


def save_dataset(splits: dict[str, list[dict]], out_dir, *, card: dict) -> datasets.DatasetDict:
    """Save records as a DatasetDict (``datasets.load_from_disk(out_dir)`` opens it) plus a README.md dataset card.

    ``card`` holds provenance (generator version, seed, parameters) shown as given; every count in the card is
    computed from ``splits``.
    """
    dd = datasets.DatasetDict({name: datasets.Dataset.from_list([_row(r) for r in recs], features=FEATURES)
                               for name, recs in splits.items()})
    dd.save_to_disk(str(out_dir))
    DatasetCard(_card_text(dataset_stats(splits), card)).save(str(Path(out_dir) / "README.md"))
    return dd


def load_dataset_dir(path) -> datasets.DatasetDict:
    """Open a folder written by ``save_dataset``."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no dataset folder here (write one with fslib.data.store.save_dataset)")
    return datasets.load_from_disk(str(path))


def records_from_dataset(ds) -> list[dict]:
    """Rows -> record dicts with PIL images (image records: video None; video records: image None).
    A DatasetDict gives the records of all its splits, in its split order."""
    if isinstance(ds, datasets.DatasetDict):
        return [r for name in ds for r in records_from_dataset(ds[name])]
    out = []
    for row in ds:
        video = [f.convert("RGB") for f in row.get("video") or []]
        image = row.get("image")
        out.append({**row, "aliases": list(row.get("aliases") or []), "pairs": list(row.get("pairs") or []),
                    "image": image.convert("RGB") if image is not None else None, "video": video or None})
    return out
