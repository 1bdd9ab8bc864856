"""Accuracy: greedy answers from the chat template, scored against the closed answer vocabulary and its aliases."""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict

import torch
from tqdm.auto import tqdm

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


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


@torch.no_grad()
def generate_answers(model, collator, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = 16,
                     desc: str = "generate") -> list[str]:
    """Greedy answers, decoding only the new tokens (the prompt is stripped)."""
    model.eval()
    device = next(model.parameters()).device
    tok = collator.processor.tokenizer
    answers = []
    for i in tqdm(range(0, len(records), batch_size), desc=desc, leave=False):
        batch = collator(records[i:i + batch_size])
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += [a.strip() for a in tok.batch_decode(new, skip_special_tokens=True)]
    return answers


def score(predictions: list[str], records: list[dict]) -> dict:
    """Exact match and token F1, overall and per question type (0..1)."""
    per_type = defaultdict(lambda: {"n": 0, "exact_match": 0.0, "f1": 0.0})
    em = f1 = 0.0
    for pred, rec in zip(predictions, records, strict=True):
        e, f = exact_match(pred, references(rec)), token_f1(pred, references(rec))
        em, f1 = em + e, f1 + f
        row = per_type[rec.get("qtype", "all")]
        row["n"] += 1
        row["exact_match"] += e
        row["f1"] += f
    n = max(len(records), 1)
    types = {k: {"n": v["n"], "exact_match": v["exact_match"] / v["n"], "f1": v["f1"] / v["n"]}
             for k, v in sorted(per_type.items())}
    return {"n": len(records), "exact_match": em / n, "f1": f1 / n, "per_type": types}


def agreement(a: list[str], b: list[str]) -> float:
    """Share of questions where two models give the same normalised answer."""
    return sum(normalize(x) == normalize(y) for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def evaluate_models(models: dict, records: list[dict], *, pixels: dict, max_length: int, batch_size: int,
                    max_new_tokens: int, bench_new_tokens: int, bench_warmup: int, bench_repeats: int,
                    trust_remote_code: bool = False) -> dict:
    """Accuracy, parameter counts and latency for each model, loading one model at a time and freeing it after."""
    import gc

    from fslib import bench
    from fslib.collate import VQACollator
    from fslib.models import load_model, load_processor, param_counts

    results = {}
    for name, entry in models.items():
        processor = load_processor(entry["path"], trust_remote_code=trust_remote_code)
        model = load_model(entry["path"], trust_remote_code=trust_remote_code, frozen=True)
        collator = VQACollator(processor, pixels, max_length=max_length, train=False)
        preds = generate_answers(model, collator, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 desc=name)
        # Speed on the same real test image for every model, batch size 1, fixed output length.
        speed = bench.measure_latency(model, collator(records[:1])["inputs"], new_tokens=bench_new_tokens,
                                      warmup=bench_warmup, repeats=bench_repeats)
        results[name] = {"role": entry.get("role", name), "path": entry["path"], "predictions": preds,
                         **score(preds, records), **param_counts(model), **speed}
        del model
        gc.collect()
    return results


def protocol(new_tokens: int, warmup: int, repeats: int) -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary = (f"Each model is loaded alone, warmed up with {warmup} untimed runs, then timed {repeats} times "
               f"(median reported) on the same test image at batch size 1.\n"
               f"Every model generates exactly {new_tokens} tokens (min_new_tokens = max_new_tokens), greedy.\n"
               f"Time-to-first-token is a 1-token generate; decode time per token is (t({new_tokens}) - t(1)) / "
               f"{new_tokens - 1}; device: {device}, weights in float32 on CPU.")
    return {"new_tokens": new_tokens, "warmup": warmup, "repeats": repeats, "batch_size": 1, "device": device,
            "decoding": "greedy", "summary": summary}


def build_metrics(results: dict, *, split: str, params: dict, trained: dict, protocol: dict) -> dict:
    """The ``metrics.json`` document: per-model numbers, agreement with the teacher, protocol and provenance."""
    from fslib.config import environment

    keep = ("role", "path", "n", "exact_match", "f1", "per_type", "params", "params_vision", "params_language",
            "ttft_s", "ttft_p90_s", "decode_s_per_token", "decode_p90_s_per_token", "latency_s", "latency_p90_s",
            "tokens_per_s")
    models = {name: {k: r[k] for k in keep if k in r} for name, r in results.items()}
    if "teacher" in results:
        for name, r in results.items():
            models[name]["agreement_with_teacher"] = agreement(r["predictions"], results["teacher"]["predictions"])
    return {"split": split, "n_eval": len(next(iter(results.values()))["predictions"]), "models": models,
            "protocol": protocol, "params": params,
            "dataset": {"type": "synthetic" if trained.get("embedded") else "user", "name": "FirstSight egocentric VQA"},
            "environment": environment()}
