"""Sequence-level distillation.

* Sequence-level KD (Kim & Rush 2016): the teacher answers unlabelled questions (greedy), and the student is trained
  on those answers with the usual token-level loss against the teacher's distributions (seq-KD plus token KD).
  Records whose answer is None are unlabelled (``fslib.data.store`` loaders produce them); for the synthetic default an
  extra pool of unlabelled scenes is built from a different master seed, so it is disjoint from train, val and test
  by construction (``fslib.world.synth.scene_seed``).
* On-policy mixing (GKD) is in ``fslib.training.onpolicy``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from fslib.core.fsio import atomic_dir, recover
from fslib.data import store
from fslib.engine.generate import generate_with_confidence
from fslib.training import cache


def split_labelled(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(labelled, unlabelled): a record with answer None has no reference and can only be answered by the teacher."""
    return [r for r in records if r.get("answer") is not None], [r for r in records if r.get("answer") is None]


def _fingerprint(ref, collator, records, max_new_tokens: int) -> str:
    parts = {"format": 2, "teacher": {n: d["sha256"] for n, d in cache.teacher_digest(ref).items()}, "dtype": ref.dtype,
             "quantization": ref.quantization, "records": cache.records_digest(records),
             "processor": cache.processor_digest(collator), "max_new_tokens": max_new_tokens}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def teacher_answers(ref, collator, records: list[dict], folder, *, max_new_tokens: int = 16,
                    batch_size: int = 8) -> tuple[list[dict], bool]:
    """The teacher's greedy answers to ``records``, as labelled records (``answered_by: teacher``).

    Stored in ``folder`` (answers.json, and data/: a dataset folder a launched training process reads) under a
    fingerprint of (teacher, records, processor, max_new_tokens): rerunning reuses them without loading the teacher.
    Returns (records, regenerated).
    """
    folder = Path(folder)
    recover(folder)
    if not records:
        return [], False
    fp = _fingerprint(ref, collator, records, max_new_tokens)
    saved = folder / "answers.json"
    if saved.exists() and json.loads(saved.read_text())["fingerprint"] == fp:
        answers, regenerated = json.loads(saved.read_text())["answers"], False
    else:
        gen = dataclasses.replace(collator, train=False)
        texts, probs = generate_with_confidence(ref.load(), gen, records, batch_size=batch_size,
                                                max_new_tokens=max_new_tokens)
        answers = {r["id"]: {"text": t, "confidence": p} for r, t, p in zip(records, texts, probs)}
        regenerated = True
    answered = [{**r, "answer": answers[r["id"]]["text"], "confidence": answers[r["id"]]["confidence"],
                 "answered_by": "teacher"} for r in records]
    if regenerated or not (folder / "data").exists():
        with atomic_dir(folder) as tmp:
            store.save_dataset({"train": answered}, tmp / "data", card={"answered_by": "teacher", "fingerprint": fp})
            (tmp / "answers.json").write_text(json.dumps({"fingerprint": fp, "answers": answers}, indent=1))
    return answered, regenerated


def confident(answered: list[dict], min_confidence: float) -> list[dict]:
    """The teacher's answers at least ``min_confidence`` probable (0 keeps all): pseudo-label filtering, as in
    Noisy Student / FixMatch, so a teacher's guesses on questions it cannot answer do not become training labels."""
    return [r for r in answered if r.get("confidence", 1.0) >= min_confidence]
