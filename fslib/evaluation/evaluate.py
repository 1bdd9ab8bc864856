"""Running 03's rows (each model in its own process) and the ``metrics.json`` document.

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
    teacher_check            02's check of the prepared teacher (fslib.evaluation.teachercheck), None when it did not run
    select_split             the split the student to trust is chosen on (validation; never the headline split unless
                             eval_split names it), scored for the main rows only
    choice                   {model, name, split, scores, verdict, distilled, reason}: that student and why
                             (fslib.evaluation.choice), with the KD-vs-SFT verdict on `split`; None without students

predictions.json (beside it): {split: {ids: [...], <model>: {normal: [answers], blind: [answers]}}}.
"""

from __future__ import annotations

from fslib.core.provenance import environment
from fslib.evaluation import choice
from fslib.evaluation.isolation import run_isolated
from fslib.evaluation.metrics import prior_baseline


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
    """Each row in its own fresh process (``fslib.evaluation.bench``): measured, then (if ``answers``) answering the questions.

    ``bench``: new_tokens, warmup, repeats, batch_sizes, split, threads. ``answers``: splits (the first is the headline one),
    blind_splits, batch_size, max_new_tokens; None when accuracy is not computed (random weights). Variants (quantised
    rows) answer the headline split only, and only when ``score_variants``.
    """
    import time

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
                  protocol: dict, dataset: dict, blind_splits: list[str], accuracy_note: str | None,
                  teacher_check: dict | None = None, select_split: str | None = None) -> dict:
    """The ``metrics.json`` document (schema in this module's docstring)."""
    models = {name: model_entry(r, scored.get(name), split) for name, r in results.items()}
    chosen = choice.choose(models, select_split=select_split, report_split=split) if accuracy_note is None else None
    return {"schema_version": 2, "split": split, "n_eval": len(records[split]),
            "splits": {s: len(v) for s, v in records.items()},
            "accuracy": {"computed": accuracy_note is None, "note": accuracy_note or "scored"},
            "models": models,
            "blind": {"splits": blind_splits,
                      "prior_baseline": prior_baseline(train, records[split]) if train else None},
            "protocol": protocol, "params": params, "dataset": dataset, "teacher_check": teacher_check,
            "select_split": select_split, "choice": chosen, "environment": environment()}
