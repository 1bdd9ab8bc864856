"""Accuracy with confidence intervals and the blind control's prior baseline (no torch).

Scores (per question, then averaged; every answer is the greedy continuation of the chat template, new tokens only):

- ``exact_match``: 1 if normalise(prediction) equals normalise(r) for the reference or any alias r, else 0.
  normalise = lower case, strip punctuation, drop the articles a/an/the, collapse spaces (SQuAD).
- ``f1``: max over references of 2PR/(P+R), P and R the shares of common tokens (multiset) of prediction and reference.
- ``rouge_l``: max over references of the ROUGE-L F-measure (``rouge-score``; longest common subsequence) on the
  normalised text.
- ``bleu``: sentence BLEU, 0..100, against all references at once (``sacrebleu``, effective order, so one-word answers
  are scored on unigrams rather than getting 0).
- ``*_ci``: 95% percentile-bootstrap interval of the mean over questions (``bootstrap_ci``: 1000 resamples, seed 0).
- ``blind_exact_match``: exact match when every image and video frame is replaced by uniform grey (same sizes, same
  text). ``blind.prior_baseline`` is the best a model without pixels can do: always answer the most frequent training
  answer of the question's type. Scores well above it with pixels, and near it without, show that the answers come
  from the pixels; scores near it either way show a model answering from the question text alone.
- ``agreement_with_teacher``: share of questions where the model's normalised answer equals the teacher's.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
SCORES = ("exact_match", "f1", "rouge_l", "bleu")


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def references(record: dict) -> list[str]:
    return [record["answer"], *(record.get("aliases") or [])]


def exact_match(prediction: str, refs: list[str]) -> float:
    pred = normalize(prediction)
    return float(any(pred == normalize(r) for r in refs))


def token_f1(prediction: str, refs: list[str]) -> float:
    """Best token-overlap F1 against any reference; an empty prediction scores 0 unless a reference is empty."""
    best = 0.0
    pred = normalize(prediction).split()
    for ref in refs:
        gold = normalize(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


_SCORERS: dict = {}


def rouge_l(prediction: str, refs: list[str]) -> float:
    """Best ROUGE-L F-measure (0..1) over references, on normalised text; empty prediction scores 0."""
    if "rouge" not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS["rouge"] = rouge_scorer.RougeScorer(["rougeL"])
    pred = normalize(prediction)
    if not pred:
        return 0.0
    return max(_SCORERS["rouge"].score(normalize(r), pred)["rougeL"].fmeasure for r in refs)


def bleu(prediction: str, refs: list[str]) -> float:
    """Sentence BLEU (0..100) against all references, effective n-gram order; empty prediction scores 0."""
    if "bleu" not in _SCORERS:
        from sacrebleu.metrics import BLEU

        _SCORERS["bleu"] = BLEU(effective_order=True)
    pred = normalize(prediction)
    if not pred:
        return 0.0
    return float(_SCORERS["bleu"].sentence_score(pred, [normalize(r) for r in refs]).score)


def item_scores(predictions: list[str], records: list[dict]) -> dict[str, np.ndarray]:
    """Per-question exact match, F1, ROUGE-L and BLEU, each an array aligned with ``records``."""
    rows = [(exact_match(p, references(r)), token_f1(p, references(r)), rouge_l(p, references(r)),
             bleu(p, references(r))) for p, r in zip(predictions, records, strict=True)]
    cols = np.asarray(rows, dtype=float).reshape(len(rows), len(SCORES))
    return {name: cols[:, i] for i, name in enumerate(SCORES)}


def bootstrap_ci(values, *, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean: resample the n questions with replacement ``n_resamples`` times,
    take the (1-level)/2 and (1+level)/2 quantiles of the resampled means. None for no data."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def agreement(a: list[str], b: list[str]) -> float:
    """Share of questions where two models give the same normalised answer."""
    return sum(normalize(x) == normalize(y) for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def _block(scores: dict[str, np.ndarray], mask: np.ndarray, ci: dict) -> dict:
    out = {"n": int(mask.sum())}
    for name, values in scores.items():
        out[name] = float(values[mask].mean()) if mask.any() else None
        out[f"{name}_ci"] = bootstrap_ci(values[mask], **ci)
    return out


def summarise(predictions: list[str], records: list[dict], *, blind: list[str] | None = None,
              teacher: list[str] | None = None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Overall scores with CIs, the blind control and agreement, then the same per question type and per media."""
    ci = {"n_resamples": n_resamples, "seed": seed}
    scores = item_scores(predictions, records)
    if blind is not None:
        scores["blind_exact_match"] = item_scores(blind, records)["exact_match"]
    if teacher is not None:
        scores["agreement_with_teacher"] = np.array([normalize(p) == normalize(t) for p, t in
                                                     zip(predictions, teacher, strict=True)], dtype=float)
    everything = np.ones(len(records), dtype=bool)
    out = _block(scores, everything, ci)
    keep = ("n", "exact_match", "exact_match_ci", "f1", "blind_exact_match", "blind_exact_match_ci")
    for key, field in (("per_type", "qtype"), ("per_media", "media")):
        values = np.array([r.get(field) or "image" for r in records])
        out[key] = {v: {k: x for k, x in _block(scores, values == v, ci).items() if k in keep}
                    for v in sorted(set(values))}
    return out


def prior_baseline(train: list[dict], records: list[dict]) -> dict:
    """Exact match of always answering the most frequent training answer of each question type (no pixels needed).
    Unlabelled training records (no answer) are left out: their "answer" is no answer a model could give."""
    train = [r for r in train if r.get("answer") is not None]
    majority = {q: Counter(r["answer"] for r in train if r["qtype"] == q).most_common(1)[0][0]
                for q in {r["qtype"] for r in train}}
    hits = [(r["qtype"], exact_match(majority.get(r["qtype"], ""), references(r))) for r in records]
    per_type = {q: float(np.mean([h for t, h in hits if t == q])) for q in sorted({t for t, _ in hits})}
    return {"exact_match": float(np.mean([h for _, h in hits])) if hits else None, "per_type": per_type,
            "answers": majority}


def score_models(results: dict, records: dict[str, list[dict]], *, n_resamples: int = 1000, seed: int = 0) -> dict:
    """``{name: {split: summary}}`` for every row that answered; agreement is against the teacher's answers."""
    teacher = results.get("teacher", {}).get("answers", {})
    out = {}
    for name, r in results.items():
        if not r.get("answers"):
            continue
        out[name] = {}
        for split, modes in r["answers"].items():
            ref = teacher.get(split, {}).get("normal") if name != "teacher" else None
            out[name][split] = summarise(modes["normal"], records[split], blind=modes.get("blind"), teacher=ref,
                                         n_resamples=n_resamples, seed=seed)
    return out
