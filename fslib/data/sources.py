"""Where 01's data comes from: the synthetic world (the default) or users' own files, split and checked.

``data_source: synthetic`` builds the seeded egocentric world (``fslib.world.synth``). Anything else is a user source:
a JSONL file, a LLaVA/Qwen fine-tuning JSON, a ``datasets`` folder saved with ``save_to_disk`` or a hub dataset id
in TRL's messages/images format (``load_user_data``). A source that already has train/validation/test
splits keeps them; otherwise its labelled records are split at random (seeded) by ``val_fraction`` and
``test_fraction``. Unlabelled records (no answer) always go to train, where 02 has the teacher answer them.
"""
from __future__ import annotations

import random
from pathlib import Path

from fslib.data import formats, store

SYNTHETIC = "synthetic"
_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}


def _hub_splits(source: str, fmt: str) -> list[str] | None:
    """The split names of a saved DatasetDict folder or hub dataset; None for a single file or a plain Dataset."""
    p = Path(source)
    if p.is_dir() and (p / "dataset_dict.json").exists() and fmt in ("auto", "hf"):
        import json
        return list(json.loads((p / "dataset_dict.json").read_text())["splits"])
    if not p.exists() and fmt == "hf":  # a hub id (a missing local path with fmt auto is a clear "not found")
        from datasets import get_dataset_split_names
        return list(get_dataset_split_names(source))
    return None


def load_splits(source: str, *, fmt: str = "auto", on_bad_sample: str = "error", val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, max_frames: int = 16) -> tuple[dict, list[dict]]:
    """``({"train", "val", "test": records}, skipped)`` from a user source (see the module docstring)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                         "and leave some records for train")
    names = _hub_splits(source, fmt)
    if names and "train" in names:
        out, skipped = {}, []
        for split, aliases in _SPLIT_NAMES.items():
            found = next((n for n in aliases if n in names), None)
            recs, bad = load_user_data(source, "hf", on_bad_sample, split=found) if found else ([], [])
            out[split], skipped = recs, skipped + bad
        if out["val"] and out["test"]:
            return check_unique_ids(_tagged(out), source), skipped
        records = out["train"] + out["val"] + out["test"]
    else:
        kwargs = {"max_frames": max_frames} if fmt != "hf" and detect_format(source) != "hf" else {}
        records, skipped = load_user_data(source, fmt, on_bad_sample, **kwargs)
    if not records:
        raise store.DataError(source, None, "no usable records" + (f" ({len(skipped)} skipped)" if skipped else ""))
    labelled = [r for r in records if r.get("answer") is not None]
    order = list(range(len(labelled)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(val_fraction * len(labelled)), round(test_fraction * len(labelled))
    pick = lambda idx: [labelled[i] for i in idx]  # noqa: E731
    out = {"train": pick(order[n_val + n_test:]) + [r for r in records if r.get("answer") is None],
           "val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test])}
    return check_unique_ids(_tagged(out), source), skipped


def check_unique_ids(splits: dict, source: str) -> dict:
    """``splits`` as they are when every record id is unique across all of them; otherwise a ``DataError`` naming
    the ids that collide and their splits (the teacher cache, the teacher's answers and predictions.json key by id)."""
    where: dict[str, list[str]] = {}
    for name, recs in splits.items():
        for r in recs:
            where.setdefault(r["id"], []).append(name)
    dup = {rid: names for rid, names in where.items() if len(names) > 1}
    if dup:
        shown = "; ".join(f"{rid!r} ({', '.join(names)})" for rid, names in list(dup.items())[:5])
        raise store.DataError(source, None, f"{len(dup)} record id(s) occur more than once: {shown}"
                              + (" ..." if len(dup) > 5 else "") + ". Give each record its own 'id' (JSONL/LLaVA) "
                              "or drop the duplicated rows")
    return splits


def _tagged(splits: dict) -> dict:
    return {name: [{**r, "split": name} for r in recs] for name, recs in splits.items()}


def check_limits(splits: dict, tokens: dict, *, max_length: int, max_visual_tokens: int, on_bad_sample: str,
                 source: str) -> tuple[dict, dict, list[dict]]:
    """Drop (``skip``) or refuse (``error``) samples longer than ``max_length`` or with more visual tokens than
    ``max_visual_tokens`` (0: no limit), naming the source, split and record. Returns the kept records, their token
    counts (``tokens`` filtered alike) and the skipped list."""
    kept, kept_tokens, skipped = {}, {}, []
    for name, records in splits.items():
        t = tokens[name]
        lengths = [a + b for a, b in zip(t["text_tokens"], t["visual_tokens"])]
        kept[name], bad = check_sample_limits(records, lengths, t["visual_tokens"], max_length=max_length,
                                              max_visual_tokens=max_visual_tokens or None,
                                              on_bad_sample=on_bad_sample, source=f"{source} [{name}]")
        keep = {id(r) for r in kept[name]}
        mask = [id(r) in keep for r in records]
        kept_tokens[name] = {k: [v for v, m in zip(vals, mask) if m] for k, vals in t.items()}
        skipped += bad
    return kept, kept_tokens, skipped


def detect_format(path) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: not found (for a hub dataset id pass fmt='hf')")
    if p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return "hf"
    if p.suffix == ".jsonl":
        return "jsonl"
    if p.suffix == ".json":
        return "llava"
    raise ValueError(f"{path}: cannot tell the format; pass fmt= one of {store.FORMATS}")


def load_user_data(path, fmt: str = "auto", on_bad_sample: str = "error", **kwargs) -> tuple[list[dict], list[dict]]:
    """Load users' own data as (records, skipped). ``fmt``: "auto" (by suffix / folder), or one of FORMATS;
    ``kwargs`` go to the loader (split=, media_root=, max_frames=)."""
    store.check_on_bad_sample(on_bad_sample)
    fmt = detect_format(path) if fmt == "auto" else fmt
    loaders = {"jsonl": formats.load_jsonl, "llava": formats.load_llava_json, "hf": formats.load_hf_vlm}
    if fmt not in loaders:
        raise ValueError(f"fmt must be 'auto' or one of {store.FORMATS}, got {fmt!r}")
    return loaders[fmt](path, on_bad_sample=on_bad_sample, **kwargs)


def check_sample_limits(records: list[dict], lengths, visual_tokens, *, max_length: int,
                        max_visual_tokens: int | None, on_bad_sample: str = "error",
                        source: str = "records") -> tuple[list[dict], list[dict]]:
    """Keep records whose token length (as counted by the collator) is <= max_length and whose visual-token count
    is <= max_visual_tokens (None: no visual limit); the others raise or are skipped, named by index and id."""
    store.check_on_bad_sample(on_bad_sample)
    if not len(records) == len(lengths) == len(visual_tokens):
        raise ValueError(f"{len(records)} records but {len(lengths)} lengths and {len(visual_tokens)} visual counts")
    kept, skipped = [], []
    for i, (rec, n, v) in enumerate(zip(records, lengths, visual_tokens)):
        reason = (f"{int(n)} tokens exceed max_length={max_length}" if n > max_length else
                  f"{int(v)} visual tokens exceed max_visual_tokens={max_visual_tokens}"
                  if max_visual_tokens is not None and v > max_visual_tokens else None)
        if reason is None:
            kept.append(rec)
        else:
            store.bad_sample(store.DataError(source, i, f"record {rec.get('id')!r}: {reason}"), on_bad_sample, skipped)
    return kept, skipped
