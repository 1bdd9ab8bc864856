"""Sequence-level and on-policy distillation.

* Sequence-level KD (Kim & Rush 2016): the teacher answers unlabelled questions (greedy), and the student is trained
  on those answers with the usual token-level loss against the teacher's distributions (seq-KD plus token KD).
  Records whose answer is None are unlabelled (``fslib.data`` loaders produce them); for the synthetic default an
  extra pool of unlabelled scenes is built from a different master seed, so it is disjoint from train, val and test
  by construction (``fslib.synth.scene_seed``).
* On-policy mixing (GKD, Agarwal et al. 2024): with probability lambda, a micro-batch's answers are replaced by the
  student's own samples, which the teacher then scores; the loss on them is the divergence alone (no reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from fslib import cache, checkpoint

POOL_SEED_OFFSET = 100_003  # master seed of the unlabelled pool: seed + this (never the data's own seed)
_SYNTH_KEYS = ("image_size", "max_objects", "clutter", "video_fraction", "video_frames")


def split_labelled(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(labelled, unlabelled): a record with answer None has no reference and can only be answered by the teacher."""
    return [r for r in records if r.get("answer") is not None], [r for r in records if r.get("answer") is None]


def synthetic_pool(n: int, *, data_params: dict, seed: int) -> list[dict]:
    """``n`` unlabelled synthetic scenes rendered with 01's settings (``data_params``, from data_stats.json)."""
    if n <= 0:
        return []
    from fslib import synth

    if data_params.get("data_source", "synthetic") != "synthetic":
        raise ValueError(f"n_unlabelled={n} renders synthetic scenes, but the data is {data_params['data_source']!r}: "
                         "set n_unlabelled to 0 and add records without an answer to your own data instead")
    missing = [k for k in _SYNTH_KEYS if k not in data_params]
    if missing:
        raise ValueError(f"the data was not built by fslib.synth (no {missing} in its params): an unlabelled "
                         "pool cannot be rendered; add records with answer None to your own data instead")
    kw = {k: data_params[k] for k in _SYNTH_KEYS}
    recs = synth.build_synthetic(seed=seed + POOL_SEED_OFFSET, n_train=n, n_val=0, n_test=0, n_ood=0, **kw)["train"]
    return [{**r, "id": f"unlabelled-{i:06d}", "split": "unlabelled", "answer": None, "aliases": []}
            for i, r in enumerate(recs)]


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
    from fslib import data

    folder = Path(folder)
    checkpoint.recover(folder)
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
        tmp = checkpoint.fresh_tmp(folder)
        tmp.mkdir(parents=True)
        data.save_dataset({"train": answered}, tmp / "data", card={"answered_by": "teacher", "fingerprint": fp})
        (tmp / "answers.json").write_text(json.dumps({"fingerprint": fp, "answers": answers}, indent=1))
        checkpoint.swap_in(tmp, folder)
    return answered, regenerated


@torch.no_grad()
def generate_with_confidence(model, collator, records: list[dict], *, batch_size: int = 8,
                             max_new_tokens: int = 16) -> tuple[list[str], list[float]]:
    """Greedy answers and each answer's probability under the model: the product of its tokens' probabilities,
    the closing ``<|im_end|>`` included (what a confidence threshold on pseudo-labels filters on)."""
    from fslib.evaluate import generate_batches

    tok = collator.processor.tokenizer
    stops = {tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id}
    texts, probs = [], []
    for out, new in generate_batches(model, collator, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     desc="teacher answers", scores=True):
        logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        for row, lp in zip(new.tolist(), logp):
            end = next((j for j, t in enumerate(row) if t in stops), len(row) - 1)
            probs.append(float(lp[:end + 1].sum().exp()))
        texts += [a.strip() for a in tok.batch_decode(new, skip_special_tokens=True)]
    return texts, probs


def confident(answered: list[dict], min_confidence: float) -> list[dict]:
    """The teacher's answers at least ``min_confidence`` probable (0 keeps all): pseudo-label filtering, as in
    Noisy Student / FixMatch, so a teacher's guesses on questions it cannot answer do not become training labels."""
    return [r for r in answered if r.get("confidence", 1.0) >= min_confidence]


@torch.no_grad()
def sample_answers(model, records: list[dict], collator, *, max_new_tokens: int, temperature: float,
                   device) -> list[str]:
    """The student's own sampled answers (multinomial at ``temperature``); the torch RNG makes them reproducible."""
    gen = dataclasses.replace(collator, train=False)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in gen(records)["inputs"].items()}
    was_training = model.training
    model.eval()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                         top_k=0, top_p=1.0)
    model.train(was_training)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [a.strip() for a in collator.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def onpolicy_batch(model, batch: dict, collator, *, max_new_tokens: int, temperature: float, device) -> dict:
    """``batch`` with every answer replaced by the student's sample, re-collated (labels on the sampled tokens).

    The sample is decoded and re-tokenised, so its tokens can differ from the sampled ids where BPE merges
    differently; the teacher scores the re-tokenised text, which is what the student is then trained on.
    """
    records = batch["records"]
    answers = sample_answers(model, records, collator, max_new_tokens=max_new_tokens, temperature=temperature,
                             device=device)
    sampled = [{**r, "answer": a} for r, a in zip(records, answers)]
    return {**collator(sampled), "records": sampled}
