"""Users' own data in three formats: JSONL, LLaVA/Qwen fine-tuning JSON, and TRL's messages/images datasets.

Each loader returns (records, skipped) in ``fslib.data.store``'s record form. A record's question type is the
``qtype`` field of a JSONL line or a LLaVA item, or the ``qtype`` column of a dataset row, when present, else
``"user"``: per-type tables, plots and the prior baseline (03) then show the user's own kinds of question.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
from PIL import Image

from fslib.data.store import DataError, bad_sample, check_on_bad_sample

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
PLACEHOLDER = re.compile(r"<image>|<video>")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEFAULT_QTYPE = "user"


class _Bad(Exception):
    """Raised inside per-record parsing; the loop turns it into a DataError that names file and record."""

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


def _qtype(row: dict) -> str:
    """The row's own question type (``qtype``), or "user" when it has none."""
    value = row.get("qtype")
    return DEFAULT_QTYPE if value is None else _text(value, "qtype", required=True)


def _user_record(rid, question, answer, *, image=None, video=None, qtype=DEFAULT_QTYPE, aliases=()) -> dict:
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
                qtype=_qtype(row), aliases=aliases))
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
    """LLaVA/Qwen fine-tuning JSON: a list of {"id", "image" | "video", "conversations": [{"from", "value"}]}, with an
    optional "qtype" per item (every question of the item gets it).
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
            records += [_user_record(f"{rid}-t{k}", q, a, **media, qtype=_qtype(item)) for k, (q, a) in enumerate(pairs)]
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
    (hub ids need a network). Needs one image per row; each user/assistant pair becomes one record, of the row's
    ``qtype`` when the dataset has that column."""
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
            records += [_user_record(f"{name}-{split}-{i}-t{k}" if split else f"{name}-{i}-t{k}", q, a, image=image,
                                     qtype=_qtype(row)) for k, (q, a) in enumerate(_turn_pairs(turns))]
        except _Bad as exc:
            bad_sample(DataError(path_or_id, i, str(exc)), on_bad_sample, skipped)
    return records, skipped
