"""Accuracy with confidence intervals, the blind control, and the ``metrics.json`` document of 03_evaluate.

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

metrics.json (schema_version 2; keys are added over time, never removed or renamed)::

    split, n_eval            headline split and its number of questions; splits: {split: n} for every scored split
    accuracy                 {computed: bool, note}: false for random-weight (real-size) models: answers mean nothing
    models.<name>            one entry per measured row: teacher, student (KD), kd_labelled_student (KD on labelled
                             questions only, when 02 had teacher-answered ones), sft_student, base_student, variants
                             such as teacher_int8 or student_nf4 (variant_of, dtype, quantization say which)
      role, path, dtype, quantization, variant_of
      params, params_vision, params_language          sum(p.numel()), split at the vision tower
      exact_match, exact_match_ci, f1, f1_ci, rouge_l, rouge_l_ci, bleu, bleu_ci, n   on `split`; None if not scored
      blind_exact_match, blind_exact_match_ci, agreement_with_teacher, agreement_with_teacher_ci
      per_type.<qtype>, per_media.<image|video>       {n, exact_match, exact_match_ci, f1, blind_exact_match}
      by_split.<split>                                the same accuracy block for every scored split (test, ood)
      ttft_s, ttft_p90_s, decode_s_per_token, decode_p90_s_per_token, latency_s, latency_p90_s, tokens_per_s (batch 1)
      throughput                                      {batch size: generated tokens / s}
      weights_bytes, decode_bytes_per_token, peak_bytes (batch 1), peak_bytes_by_batch, baseline_bytes
      bandwidth_utilisation                           GPU only, else None
      samples                                         {ttft_s: [...], decode_s_per_token: [...]} the timed repeats
      generated_tokens, visual_tokens, prompt_tokens, load_s    checks: N for every run, the same image for every row
    blind                    {splits, prior_baseline: {exact_match, per_type}}
    protocol                 summary (three lines), new_tokens, warmup, repeats, batch_size, batch_sizes, dtype, device,
                             device_name, isolation, memory, accuracy, decoding, max_new_tokens, bootstrap, versions
    params, dataset, environment                      resolved params of all stages; data provenance; versions, git SHA

predictions.json (beside it): {split: {ids: [...], <model>: {normal: [answers], blind: [answers]}}}.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """Exact match of always answering the most frequent training answer of each question type (no pixels needed)."""
    majority = {q: Counter(r["answer"] for r in train if r["qtype"] == q).most_common(1)[0][0]
                for q in {r["qtype"] for r in train}}
    hits = [(r["qtype"], exact_match(majority.get(r["qtype"], ""), references(r))) for r in records]
    per_type = {q: float(np.mean([h for t, h in hits if t == q])) for q in sorted({t for t, _ in hits})}
    return {"exact_match": float(np.mean([h for _, h in hits])) if hits else None, "per_type": per_type,
            "answers": majority}


@torch.no_grad()
def generate_batches(model, collator, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = 16,
                     desc: str = "generate", scores: bool = False):
    """Greedy generation a batch at a time: yields ``(output, new_token_ids)``; ``output`` carries the per-step
    scores when ``scores`` is set (for answer probabilities, ``fslib.seqkd.generate_with_confidence``)."""
    model.eval()
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(records), batch_size), desc=desc, leave=False):
        batch = collator(records[i:i + batch_size])
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             return_dict_in_generate=True, output_scores=scores)
        yield out, out.sequences[:, inputs["input_ids"].shape[1]:]


def generate_answers(model, collator, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = 16,
                     desc: str = "generate") -> list[str]:
    """Greedy answers, decoding only the new tokens (the prompt is stripped)."""
    tok = collator.processor.tokenizer
    return [a.strip() for _, new in generate_batches(model, collator, records, batch_size=batch_size,
                                                     max_new_tokens=max_new_tokens, desc=desc)
            for a in tok.batch_decode(new, skip_special_tokens=True)]


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



# ------------------------------------------------------------------------------------------------ running 03


def models_to_evaluate(out_dir, eval_models: dict, *, embedded_root) -> tuple[dict, dict | None]:
    """The models of 02's ``training.json``, or, when ``eval_models`` is given, ``{name: model}`` (hub id, folder,
    ``embedded:`` or ``random-init:``); returns ``({name: {path, role}}, training.json or None)``."""
    from pathlib import Path

    from fslib import config, presets
    from fslib.models import resolve_model

    if not eval_models:
        trained = config.read_json(Path(out_dir) / "training.json")
        return trained["models"], trained
    models = {}
    for name, model in eval_models.items():
        role = f"{name}: {model}, random weights" if presets.is_random_init(model) else f"{name}: {model}"
        models[name] = {"path": resolve_model(model, embedded_root), "role": role}
    return models, None


def accuracy_note(models: dict) -> str | None:
    """Why accuracy is not computed (a random-weight model's answers mean nothing), or None when it is."""
    from fslib import presets

    random = [n for n, m in models.items() if presets.is_random_folder(m["path"])]
    return (f"{', '.join(random)} have random weights (real-size shapes, for speed and memory only): their answers "
            "would mean nothing" if random else None)


def provenance(out_dir, trained: dict | None, own_params: dict) -> tuple[dict, dict]:
    """The resolved params of every stage so far (01, 02, 03) and a description of the data."""
    from pathlib import Path

    from fslib import config

    stats = config.read_json(Path(out_dir) / "data_stats.json")
    params = {**stats.get("params", {}), **(trained or {}).get("params", {}), **own_params}
    embedded = (trained or {}).get("embedded", True)
    return params, {"type": "synthetic" if embedded else "user", "name": "FirstSight egocentric VQA"}


def answers_of(results: dict, split: str, mode: str = "normal") -> dict[str, list[str]]:
    """``{model: answers}`` on one split for every row that answered."""
    return {n: r["answers"][split][mode] for n, r in results.items() if mode in r.get("answers", {}).get(split, {})}


_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def benchmark_rows(models: dict, variants: list[str], dtype: str) -> dict:
    """One row per model at ``dtype``, plus each variant ``model:int8``, ``model:nf4`` or ``model:<dtype>``."""
    rows = {name: {"path": m["path"], "role": m.get("role", name), "dtype": dtype, "quantization": "none",
                   "variant_of": None} for name, m in models.items()}
    for v in variants:
        base, _, kind = str(v).partition(":")
        if base not in models:
            raise ValueError(f"variant {v!r}: no model {base!r}; models: {', '.join(models)}")
        quant = kind if kind in ("int8", "nf4") else "none"
        row_dtype = dtype if quant != "none" else kind
        if row_dtype not in _SHORT:
            raise ValueError(f"variant {v!r}: expected int8, nf4, float32, bfloat16 or float16 after ':'")
        rows[f"{base}_{kind if quant != 'none' else _SHORT[kind]}"] = {
            "path": models[base]["path"], "role": f"{rows[base]['role']}, {_SHORT.get(kind, kind).upper()}",
            "dtype": row_dtype, "quantization": quant, "variant_of": base}
    return rows


def evaluate_models(rows: dict, *, data_dir, workdir, bench: dict, answers: dict | None, score_variants: bool,
                    pixels: dict, max_length: int, seed: int = 0, trust_remote_code: bool = False) -> dict:
    """Each row in its own fresh process (``fslib.bench``): measured, then (if ``answers``) answering the questions.

    ``bench``: new_tokens, warmup, repeats, batch_sizes, split, threads. ``answers``: splits (the first is the headline one),
    blind_splits, batch_size, max_new_tokens; None when accuracy is not computed (random weights). Variants (quantised
    rows) answer the headline split only, and only when ``score_variants``.
    """
    import time

    from fslib.bench import run_isolated

    results = {}
    for name, row in rows.items():
        ask = answers if answers and (row["variant_of"] is None or score_variants) else None
        # a variant answers the headline split only: its place on the accuracy/latency plot
        splits = (ask["splits"] if row["variant_of"] is None else ask["splits"][:1]) if ask else []
        spec = {"name": name, "path": row["path"], "dtype": row["dtype"], "quantization": row["quantization"],
                "data_dir": str(data_dir), "pixels": pixels, "max_length": max_length, "seed": seed,
                "trust_remote_code": trust_remote_code, **bench,
                "answer_splits": splits,
                "blind_splits": ask["blind_splits"] if ask and row["variant_of"] is None else [],
                "eval_batch_size": ask["batch_size"] if ask else 1,
                "max_new_tokens": ask["max_new_tokens"] if ask else 1}
        t0 = time.time()
        results[name] = {**row, **run_isolated(spec, workdir)}
        print(f"{name}: measured{' and answered' if ask else ''} in {time.time() - t0:.0f} s", flush=True)
    return results


_SPEED_KEYS = ("ttft_s", "ttft_p90_s", "decode_s_per_token", "decode_p90_s_per_token", "latency_s", "latency_p90_s",
               "tokens_per_s", "weights_bytes", "decode_bytes_per_token", "peak_bytes", "peak_bytes_by_batch",
               "baseline_bytes", "bandwidth_utilisation", "params", "params_vision", "params_language",
               "generated_tokens", "visual_tokens", "prompt_tokens", "load_s")


def model_entry(row: dict, scored: dict | None, split: str) -> dict:
    """One ``models.<name>`` entry: identity, accuracy on ``split`` (None when not scored), speed and memory."""
    entry = {k: row.get(k) for k in ("role", "path", "dtype", "quantization", "variant_of")}
    head = (scored or {}).get(split, {})
    for key in ("n", "exact_match", "f1", "rouge_l", "bleu", "blind_exact_match", "agreement_with_teacher"):
        entry[key] = head.get(key)
        if key != "n":
            entry[f"{key}_ci"] = head.get(f"{key}_ci")
    entry["per_type"], entry["per_media"] = head.get("per_type", {}), head.get("per_media", {})
    entry["by_split"] = scored or {}
    entry.update({k: row.get(k) for k in _SPEED_KEYS})
    entry["throughput"] = {b: t["tokens_per_s"] for b, t in row.get("throughput", {}).items()}
    entry["samples"] = {"ttft_s": row.get("ttft_samples"), "decode_s_per_token": row.get("decode_samples")}
    return entry


def build_metrics(results: dict, scored: dict, *, split: str, records: dict, train: list[dict], params: dict,
                  protocol: dict, dataset: dict, blind_splits: list[str], accuracy_note: str | None) -> dict:
    """The ``metrics.json`` document (schema in this module's docstring)."""
    from fslib.config import environment

    models = {name: model_entry(r, scored.get(name), split) for name, r in results.items()}
    return {"schema_version": 2, "split": split, "n_eval": len(records[split]),
            "splits": {s: len(v) for s, v in records.items()},
            "accuracy": {"computed": accuracy_note is None, "note": accuracy_note or "scored"},
            "models": models,
            "blind": {"splits": blind_splits,
                      "prior_baseline": prior_baseline(train, records[split]) if train else None},
            "protocol": protocol, "params": params, "dataset": dataset, "environment": environment()}
