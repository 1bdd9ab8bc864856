"""02_distill's decisions: which trainings run and with what (the fair protocol), and what training.json says."""

from __future__ import annotations

from pathlib import Path

from fslib.core.fsio import write_json


def write_training_summary(out_dir, histories: dict, *, teacher_path: str, student_path: str, params: dict) -> dict:
    """``training.json``: which checkpoint is which model, for 03 and 04 to read (no hidden state between stages)."""
    out_dir = Path(out_dir)
    models = {"teacher": {"path": str(teacher_path), "role": "teacher"}}
    if "kd_student" in histories:
        models["student"] = {"path": str(out_dir / "kd_student" / "best"), "role": "KD student"
                             + (" (labelled + teacher-answered questions)" if "kd_labelled_student" in histories else "")}
    if "kd_labelled_student" in histories:
        models["kd_labelled_student"] = {"path": str(out_dir / "kd_labelled_student" / "best"),
                                         "role": "KD student, labelled questions only"}
    if "sft_student" in histories:
        models["sft_student"] = {"path": str(out_dir / "sft_student" / "best"), "role": "SFT-only student"}
    models["base_student"] = {"path": str(student_path), "role": "student's starting weights"}
    keys = ("epochs", "batch_size", "grad_accum", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm",
            "temperature", "alpha", "divergence", "beta", "kd_impl", "kd_chunk_size", "teacher_cache",
            "teacher_cache_topk", "gradient_checkpointing", "student_lora", "freeze_vision", "teacher_quantization",
            "teacher_dtype", "student_dtype", "n_unlabelled", "teacher_answer_min_confidence", "prepare_teacher",
            "teacher_freeze_vision", "onpolicy_lambda", "num_processes", "seed")
    summary = {"models": models, "teacher_model": params["teacher_model"], "student_model": params["student_model"],
               "embedded": params["student_model"].startswith("embedded:"),
               "training": {k: params[k] for k in keys if k in params},
               "best_val_loss": {k: h.get("best_val_loss") for k, h in histories.items()},
               "params": params}
    write_json(out_dir / "training.json", summary)
    return summary




def summary_table(histories: dict):
    """One row per trained model: what was trained against what, memory and speed (medians over steps)."""
    import pandas as pd

    rows = {}
    for label, h in histories.items():
        models, steps = h.get("models") or {}, h["steps"]
        s, t = models.get("student") or {}, models.get("teacher")
        source = "labels only" if not h["settings"]["loss"]["alpha"] else (
            "teacher cache (top-k)" if h["settings"].get("cached") else
            f"live teacher ({t['dtype']}, {t['quantization']})" if t else "live teacher")
        rows[label] = {"trained params": s.get("trainable_params"), "trainable share": s.get("trainable_share"),
                       "dtype": s.get("dtype"), "KD target": source, "steps": len(steps),
                       "processes": h["settings"].get("processes"),
                       "best val loss": h.get("best_val_loss"),
                       "tokens/s": _median([x["tokens_per_s"] for x in steps]),
                       "samples/s": _median([x["samples_per_s"] for x in steps]),
                       "peak memory (GB)": max([e.get("peak_memory_bytes", 0) for e in h["epochs"]] or [0]) / 1e9}
    return pd.DataFrame(rows)


def _median(values: list) -> float | None:
    return float(sorted(values)[len(values) // 2]) if values else None
