"""Datasets on disk, users' own data in three formats, and loud validation.

Every loader returns records in the same dict form as ``fslib.world.synth`` (id, split, scene_seed, qtype, media,
question, answer, aliases, image, video, pairs, target) plus a list of skipped samples. A bad sample either raises
``DataError`` naming the file and the record, or (``on_bad_sample="skip"``) is left out and listed in ``skipped``
as {"file", "record", "reason"}. Nothing is ever replaced by stand-in data. Choosing the loader by format and the
length / visual-token limits are in ``fslib.data.sources`` (``load_user_data``, ``check_sample_limits``).
"""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

ON_BAD_SAMPLE = ("error", "skip")
FORMATS = ("jsonl", "llava", "hf")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
PLACEHOLDER = re.compile(r"<image>|<video>")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
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


class _Bad(Exception):
    """Raised inside per-record parsing; the loop turns it into a DataError that names file and record."""


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


# ------------------------------------------------------------------------------------------ users' own data


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise _Bad(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.verify()  # catches truncated or corrupt files that open() alone accepts
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:  # PIL raises several unrelated types for bad files
        raise _Bad(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def _keep(n: int, max_frames: int) -> list[int]:
    """Indices of at most max_frames frames spread evenly over n."""
    return list(range(n)) if n <= max_frames else [round(i * (n - 1) / (max_frames - 1)) for i in range(max_frames)]


def _decode_video(path: Path, max_frames: int) -> list[Image.Image]:
    try:
        import av
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [f.to_image().convert("RGB") for f in container.decode(stream)]
    except Exception as exc:
        raise _Bad(f"cannot decode video {path}: {type(exc).__name__}: {exc}") from exc
    return [frames[i] for i in _keep(len(frames), max_frames)]


def _natural(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _load_video(spec, base: Path, max_frames: int) -> list[Image.Image]:
    """A video given as a list of frame paths, a folder of frames (natural name order) or a video file. Longer
    videos are cut to ``max_frames`` frames spread evenly over the clip."""
    if isinstance(spec, list):
        if not spec or not all(isinstance(p, str) for p in spec):
            raise _Bad("'video' list must hold one or more frame paths")
        paths = [base / p for p in spec]
    elif isinstance(spec, str) and (base / spec).is_dir():
        paths = sorted((p for p in (base / spec).iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_natural)
        if not paths:
            raise _Bad(f"video folder has no image frames: {base / spec}")
    elif isinstance(spec, str) and (base / spec).is_file() and (base / spec).suffix.lower() in VIDEO_EXTS:
        return _check_frames(_decode_video(base / spec, max_frames))
    elif isinstance(spec, str):
        raise _Bad(f"video not found or not a frame folder / {VIDEO_EXTS} file: {base / spec}")
    else:
        raise _Bad(f"'video' must be a path or a list of frame paths, got {type(spec).__name__}")
    return _check_frames([_open_image(paths[i]) for i in _keep(len(paths), max_frames)])


def _check_frames(frames: list[Image.Image]) -> list[Image.Image]:
    if not frames:
        raise _Bad("video has no frames")
    if len({f.size for f in frames}) > 1:
        raise _Bad(f"video frames differ in size: {sorted({f.size for f in frames})}")
    return frames


def _text(value, what: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if value is not None and not isinstance(value, str):
        raise _Bad(f"{what} must be a string, got {type(value).__name__}")
    if not value or not value.strip():
        raise _Bad(f"empty or missing {what}")
    return value.strip()


def _user_record(rid, question, answer, *, image=None, video=None, qtype="user", aliases=()) -> dict:
    return {"id": str(rid), "split": "user", "scene_seed": -1, "qtype": qtype, "media": "video" if video else "image",
            "question": question, "answer": answer, "aliases": list(aliases), "image": image, "video": video,
            "pairs": [], "target": None}


def _media(row: dict, base: Path, max_frames: int) -> dict:
    image, video = row.get("image"), row.get("video")
    if (image is None) == (video is None):
        raise _Bad("needs exactly one of 'image' or 'video'")
    if video is not None:
        return {"video": _load_video(video, base, max_frames)}
    if isinstance(image, list):  # LLaVA allows a list; one image per record is what the pipeline supports
        if len(image) != 1:
            raise _Bad(f"needs exactly one image, got a list of {len(image)}")
        image = image[0]
    if not isinstance(image, str):
        raise _Bad(f"'image' must be a path, got {type(image).__name__}")
    return {"image": _open_image(base / image)}


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    return path.read_text(encoding="utf-8")


def load_jsonl(path, *, on_bad_sample: str = "error", max_frames: int = 16) -> tuple[list[dict], list[dict]]:
    """One JSON object a line: ``image`` or ``video`` (paths relative to the file), ``question``, optional
    ``answer`` (absent = unlabelled), optional ``id``, ``qtype``, ``aliases``. Returns (records, skipped)."""
    check_on_bad_sample(on_bad_sample)
    path, records, skipped = Path(path), [], []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _Bad(f"malformed JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise _Bad(f"each line must be a JSON object, got {type(row).__name__}")
            aliases = row.get("aliases") or []
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise _Bad("'aliases' must be a list of strings")
            records.append(_user_record(
                row.get("id", f"{path.stem}-L{n}"), _text(row.get("question"), "question", required=True),
                _text(row.get("answer"), "answer", required=False), **_media(row, path.parent, max_frames),
                qtype=_text(row.get("qtype", "user"), "qtype", required=True), aliases=aliases))
        except _Bad as exc:
            bad_sample(DataError(path, n, str(exc), "line"), on_bad_sample, skipped)
    return records, skipped


def _turn_pairs(turns: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """[(role, text)] with roles user/assistant (system dropped) -> [(question, answer or None)]."""
    turns, out = [t for t in turns if t[0] != "system"], []
    if not turns:
        raise _Bad("no conversation turns")
    for i in range(0, len(turns), 2):
        if turns[i][0] != "user" or (i + 1 < len(turns) and turns[i + 1][0] != "assistant"):
            raise _Bad(f"turns must alternate user/assistant, got {[r for r, _ in turns]}")
        question = _text(PLACEHOLDER.sub("", turns[i][1] or ""), f"question in turn {i}", required=True)
        answer = _text(turns[i + 1][1], f"answer in turn {i + 1}", required=True) if i + 1 < len(turns) else None
        out.append((question, answer))
    return out


def _role(turn, key: str) -> str:
    if not isinstance(turn, dict) or turn.get(key) not in ROLES:
        raise _Bad(f"each turn needs '{key}' in {sorted(ROLES)}, got {turn!r:.80}")
    return ROLES[turn[key]]


def load_llava_json(path, *, on_bad_sample: str = "error", media_root=None,
                    max_frames: int = 16) -> tuple[list[dict], list[dict]]:
    """LLaVA/Qwen fine-tuning JSON: a list of {"id", "image" | "video", "conversations": [{"from", "value"}]}.
    Each (human, gpt) pair becomes one record with ``<image>``/``<video>`` removed from the question; a final human
    turn without an answer becomes an unlabelled record. Earlier turns are not carried into later questions.
    Media paths are relative to ``media_root`` (default: the JSON file's folder)."""
    check_on_bad_sample(on_bad_sample)
    path, records, skipped = Path(path), [], []
    base = Path(media_root) if media_root is not None else path.parent
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, None, f"malformed JSON: {exc}") from exc
    if not isinstance(items, list):
        raise DataError(path, None, f"expected a JSON list of samples, got {type(items).__name__}")
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
                raise _Bad("needs a 'conversations' list")
            turns = [(_role(t, "from"), t.get("value")) for t in item["conversations"]]
            pairs, media = _turn_pairs(turns), _media(item, base, max_frames)
            rid = item.get("id", f"{path.stem}-{i}")
            records += [_user_record(f"{rid}-t{k}", q, a, **media) for k, (q, a) in enumerate(pairs)]
        except _Bad as exc:
            bad_sample(DataError(path, i, str(exc)), on_bad_sample, skipped)
    return records, skipped


def _message_text(content) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Bad(f"message content must be a string or a list of parts, got {type(content).__name__}")
    return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def load_hf_vlm(path_or_id, *, split: str | None = None, on_bad_sample: str = "error") -> tuple[list[dict], list[dict]]:
    """A TRL-style VLM dataset (``messages`` + ``images`` columns), from a ``save_to_disk`` folder or a hub id
    (hub ids need a network). Needs one image per row; each user/assistant pair becomes one record."""
    check_on_bad_sample(on_bad_sample)
    local = Path(path_or_id).exists()
    ds = datasets.load_from_disk(str(path_or_id)) if local else datasets.load_dataset(str(path_or_id), split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise ValueError(f"{path_or_id} has splits {list(ds)}; pass split=")
        ds = ds[split or next(iter(ds))]
    if missing := {"messages", "images"} - set(ds.column_names):
        raise DataError(path_or_id, None, f"missing columns {sorted(missing)}; has {ds.column_names}")
    records, skipped, name = [], [], Path(str(path_or_id)).name
    for i in range(len(ds)):
        try:
            try:
                row = ds[i]
            except Exception as exc:  # an undecodable image surfaces here, when the row is read
                raise _Bad(f"cannot decode row: {type(exc).__name__}: {exc}") from exc
            images = row["images"] or []
            if len(images) != 1 or not isinstance(images[0], Image.Image):
                raise _Bad(f"needs exactly one decoded image, got {len(images)}")
            if not isinstance(row["messages"], list):
                raise _Bad("'messages' must be a list")
            turns = [(_role(m, "role"), _message_text(m.get("content"))) for m in row["messages"]]
            image = images[0].convert("RGB")
            records += [_user_record(f"{name}-{split}-{i}-t{k}" if split else f"{name}-{i}-t{k}", q, a, image=image)
                        for k, (q, a) in enumerate(_turn_pairs(turns))]
        except _Bad as exc:
            bad_sample(DataError(path_or_id, i, str(exc)), on_bad_sample, skipped)
    return records, skipped
