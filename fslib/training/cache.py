"""Offline teacher cache: one pass of the teacher stores its top-k logits at every answer token; later epochs and
reruns train the student without loading the teacher.

Layout of ``<run>/teacher_cache/``::

    meta.json                     fingerprint, k, vocab, row count, what went into the fingerprint
    index.json                    {record id: [shard, first row, rows]}
    topk-00000-of-0000N.safetensors   values (rows, k) float16 raw logits at T = 1; indices (rows, k) int32;
                                  log_partition (rows,) float32: logsumexp(logits / T) over the whole vocabulary

Rows are the counted positions of each record (``labels[:, 1:] != -100``: its answer tokens and closing
``<|im_end|>``), in order. A record's rows do not depend on the batch it is collated in (right padding), so a
shuffled batch is the concatenation of its records' rows. The teacher's logits are cut to the student's vocabulary
before the top k (the rows past it are padding no token maps to). The tail mass (02's ``teacher_cache_tail``, see
``fslib.engine.kd.topk_kd_loss``):

- ``renormalise`` (02's default): the teacher renormalised over its k ids, its tail bucket empty; the student's
  softmax collapsed into the same k + 1 buckets, so forward KL also pushes the student's tail mass towards 0.
- ``exact``: the cache also stores the teacher's log-partition at the training temperature T, which gives its exact
  probabilities at the k ids and so its true tail mass: the divergence of both models' true (k+1)-bucket
  distributions. Reverse KL and ``jsd`` with beta = 1 need it (they are infinite against an empty bucket).

On the tiny default (``benchmarks/kd_vs_sft.py``, 3 seeds) the two reached the same exact match within the seeds'
spread, ``renormalise`` slightly ahead for the main KD student, so it stays the default.

The fingerprint hashes the teacher (its config and weight files, dtype, quantisation), every record (id, text and
pixels), the processor settings, k, the vocabulary and T: any change gives a new fingerprint and the cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fslib.core import fsio
from fslib.engine import losspaths
from fslib.engine.labels import counted

FORMAT_VERSION = 2  # 2: the log-partition at T
SHARD_ROWS = 1 << 20  # ~400 MB per shard at k = 64


TAILS = ("renormalise", "exact")


def tail_temperature(tail: str, temperature: float) -> float | None:
    """The ``temperature`` argument of ``ensure`` for a ``tail`` handling: T for "exact", None for "renormalise"."""
    if tail not in TAILS:
        raise ValueError(f"teacher_cache_tail {tail!r} is not one of: {', '.join(TAILS)}")
    return float(temperature) if tail == "exact" else None


class CacheMismatchError(ValueError):
    """A batch asks for rows the cache does not hold as stored: the cache is stale."""


@dataclass
class TeacherRef:
    """How to load the frozen teacher, loaded at most once and only when needed (a cache hit never loads it)."""

    path: str
    dtype: str = "float32"
    quantization: str = "none"
    device_map: str = ""
    trust_remote_code: bool = False
    _model: object = field(default=None, repr=False, compare=False)

    def load(self):
        if self._model is None:
            from fslib.engine import models

            self._model = models.load_model(self.path, dtype=self.dtype, quantization=self.quantization,
                                            device_map=self.device_map or None, frozen=True,
                                            trust_remote_code=self.trust_remote_code)
            if not (self.quantization != "none" or self.device_map) and torch.cuda.is_available():
                self._model.to("cuda")
        return self._model

    def release(self) -> None:
        self._model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _file_digest(path: Path, known: dict) -> str:
    """sha256 of a file, reused from ``known`` when its size and mtime are unchanged (a 7B has 15 GB of weights)."""
    st = path.stat()
    prev = known.get(path.name)
    if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
        return prev["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def teacher_digest(ref: TeacherRef, known: dict | None = None) -> dict:
    """{file: {size, mtime_ns, sha256}} of a local teacher folder's config and weights (a hub id is hashed by name)."""
    folder = Path(ref.path)
    if not folder.is_dir():
        return {"hub_id": {"size": 0, "mtime_ns": 0, "sha256": ref.path}}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors") and "processor" not in p.name)
    out = {}
    for p in files:
        st = p.stat()
        out[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _file_digest(p, known or {})}
    return out


def records_digest(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.get("id"), r.get("question"), r.get("answer"), r.get("media")]).encode())
        for im in ([r["image"]] if r.get("image") is not None else []) + list(r.get("video") or []):
            h.update(f"{im.mode}{im.size}".encode())
            h.update(im.tobytes())
    return h.hexdigest()


def processor_digest(collator) -> str:
    proc = collator.processor
    parts = {"vocab": sorted(proc.tokenizer.get_vocab().items()), "template": proc.tokenizer.chat_template,
             "image": proc.image_processor.to_dict(), "pixels": collator.pixels, "max_length": collator.max_length}
    video = getattr(proc, "video_processor", None)
    if video is not None:
        parts["video"] = video.to_dict()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(ref: TeacherRef, collator, records: list[dict], *, k: int, vocab: int, known: dict | None = None,
                temperature: float | None = None):
    """(fingerprint, its parts): a hash of everything the cached rows depend on."""
    parts = {"format": FORMAT_VERSION, "teacher": teacher_digest(ref, known), "dtype": ref.dtype,
             "quantization": ref.quantization, "records": records_digest(records),
             "processor": processor_digest(collator), "k": k, "vocab": vocab, "temperature": temperature}
    hashed = {**parts, "teacher": {n: d["sha256"] for n, d in parts["teacher"].items()}}
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest(), parts


class TeacherCache:
    """The cached rows, loaded into memory (6 bytes x k per answer token: 0.4 GB for a million tokens at k = 64)."""

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.index = json.loads((self.folder / "index.json").read_text())
        shards = [load_file(str(self.folder / name)) for name in self.meta["shards"]]
        self.values = [s["values"] for s in shards]
        self.indices = [s["indices"] for s in shards]
        self.log_partition = [s["log_partition"] for s in shards] if self.temperature is not None else None

    @property
    def k(self) -> int:
        return self.meta["k"]

    @property
    def temperature(self) -> float | None:
        """The T of the stored log-partition (None: none stored)."""
        return self.meta.get("temperature")

    def rows(self, ids: list[str], counts: list[int]):
        """(values (N, k) float16, indices (N, k) int32, log-partition (N,) float32 or None) for a batch's records,
        in batch order."""
        vals, idxs, lse = [], [], []
        for rid, n in zip(ids, counts):
            if rid not in self.index:
                raise CacheMismatchError(f"record {rid!r} is not in the teacher cache {self.folder}")
            shard, start, stored = self.index[rid]
            if stored != n:
                raise CacheMismatchError(f"record {rid!r} has {n} answer tokens but {stored} cached rows: the cache "
                                         f"{self.folder} is stale (delete it to rebuild)")
            vals.append(self.values[shard][start:start + n])
            idxs.append(self.indices[shard][start:start + n])
            if self.log_partition is not None:
                lse.append(self.log_partition[shard][start:start + n])
        return torch.cat(vals), torch.cat(idxs), torch.cat(lse) if self.log_partition is not None else None


@torch.no_grad()
def _topk_rows(teacher, batch: dict, *, k: int, vocab: int, temperature: float | None):
    device = next(teacher.parameters()).device
    inputs = losspaths.to_device(batch["inputs"], device)
    labels = batch["labels"].to(device)
    # logits at the counted positions only: (N, V_t), never (B, L, V_t)
    logits = teacher(**inputs, logits_to_keep=losspaths.answer_positions(labels)).logits[:, :vocab].float()
    values, indices = logits.topk(k, dim=-1)
    lse = torch.logsumexp(logits / temperature, dim=-1).cpu() if temperature is not None else None
    counts = counted(labels).sum(1).tolist()
    return values.half().cpu(), indices.int().cpu(), lse, counts


def build(teacher, collator, records: list[dict], folder: Path, *, k: int, vocab: int, fp: str, parts: dict,
          batch_size: int = 8, progress: bool = True, temperature: float | None = None) -> Path:
    """One teacher pass over ``records`` (in order, with labels) into ``folder``, written atomically."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    tmp = fsio.fresh_tmp(folder)
    tmp.mkdir(parents=True)
    index, shards, buf, row = {}, [], ([], [], []), 0
    for i in tqdm(range(0, len(records), batch_size), desc="teacher cache", leave=False, disable=not progress):
        chunk = records[i:i + batch_size]
        values, indices, lse, counts = _topk_rows(teacher, collator(chunk), k=k, vocab=vocab, temperature=temperature)
        for rec, n in zip(chunk, counts):
            index[rec["id"]] = [len(shards), row, n]
            row += n
        buf[0].append(values)
        buf[1].append(indices)
        buf[2].append(lse)
        if row >= SHARD_ROWS or i + batch_size >= len(records):
            shards.append(f"topk-{len(shards):05d}.safetensors")
            tensors = {"values": torch.cat(buf[0]), "indices": torch.cat(buf[1])}
            if temperature is not None:
                tensors["log_partition"] = torch.cat(buf[2])
            save_file(tensors, str(tmp / shards[-1]))
            buf, row = ([], [], []), 0
    (tmp / "index.json").write_text(json.dumps(index))
    meta = {"fingerprint": fp, "k": k, "vocab": vocab, "temperature": temperature, "shards": shards,
            "records": len(records), "rows": sum(v[2] for v in index.values()), "parts": parts}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return fsio.replace_dir(tmp, folder)


def ensure(ref: TeacherRef, collator, records: list[dict], folder, *, k: int, vocab: int,
           batch_size: int = 8, temperature: float | None = None) -> tuple[TeacherCache, bool]:
    """Open the cache in ``folder`` if its fingerprint matches, else rebuild it (loading the teacher).

    ``temperature``: the distillation T, for the log-partition that gives the teacher's exact tail mass (None: the
    loss renormalises the teacher over its k ids instead); ``tail_temperature`` maps 02's ``teacher_cache_tail``.

    Returns (cache, rebuilt). ``records`` must carry their answers (labelled or teacher-answered) and unique ids.
    """
    folder = Path(folder)
    fsio.recover(folder)
    seen, dup = set(), []
    for r in records:
        if r["id"] in seen:
            dup.append(r["id"])
        seen.add(r["id"])
    if dup:
        raise ValueError(f"the teacher cache keys its rows by record id, and {len(dup)} id(s) occur more than once: "
                         f"{', '.join(map(repr, dup[:5]))}{' ...' if len(dup) > 5 else ''} (records from several "
                         "splits or sources must have distinct ids)")
    old = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    k = min(k, vocab)
    fp, parts = fingerprint(ref, collator, records, k=k, vocab=vocab, known=old.get("parts", {}).get("teacher"),
                            temperature=temperature)
    if old.get("fingerprint") == fp:
        return TeacherCache(folder), False
    build(ref.load(), collator, records, folder, k=k, vocab=vocab, fp=fp, parts=parts, batch_size=batch_size,
          temperature=temperature)
    return TeacherCache(folder), True
