"""The distillation loop: a frozen teacher, a trained student, one loss from ``fslib.kd``.

Runs on accelerate, so the same code runs on a CPU, one GPU (bf16 autocast) or several. The loop itself is short:
it calls named helpers for a step, an evaluation and a save.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fslib import kd
from fslib.config import write_json


def make_loader(records: list, collator, *, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(records, batch_size=batch_size, shuffle=shuffle, collate_fn=collator, generator=g,
                      num_workers=0)


def _to(inputs, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def batch_loss(student, teacher, batch: dict, *, temperature: float, alpha: float, device) -> kd.KDLoss:
    """Forward both models on the *whole* processor output (pixels included) and combine with ``kd_loss``."""
    inputs = _to(batch["inputs"], device)
    labels = batch["labels"].to(device)
    s_logits = student(**inputs).logits
    if teacher is None:  # plain fine-tuning (SFT baseline, teacher preparation): CE only
        return kd.kd_loss(s_logits, s_logits.detach(), labels, temperature=temperature, alpha=0.0)
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
    return kd.kd_loss(s_logits, t_logits, labels, temperature=temperature, alpha=alpha)


@torch.no_grad()
def evaluate_loss(student, teacher, loader, *, temperature: float, alpha: float, device) -> dict:
    """Token-weighted mean of loss, KD and CE over a loader."""
    was_training = student.training
    student.eval()
    sums, n = {"loss": 0.0, "kd": 0.0, "ce": 0.0}, 0
    for batch in loader:
        out = batch_loss(student, teacher, batch, temperature=temperature, alpha=alpha, device=device)
        for key in sums:
            sums[key] += getattr(out, key).item() * out.n_tokens
        n += out.n_tokens
    student.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def save_checkpoint(model, processor, out: Path) -> Path:
    """``save_pretrained`` into a temporary folder, then rename: a checkpoint is never half-written."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _optimizer_and_schedule(model, *, lr, weight_decay, warmup_ratio, total_steps):
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(warmup_ratio * total_steps), total_steps)
    return opt, sched


def _accelerator():
    from accelerate import Accelerator

    # bf16 autocast only where a GPU is present; on CPU the tiny models train in fp32.
    return Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")


def train(student, teacher, processor, train_loader, val_loader, *, out_dir, epochs: int, grad_accum: int,
          lr: float, warmup_ratio: float, weight_decay: float, max_grad_norm: float, temperature: float,
          alpha: float, gradient_checkpointing: bool = False, label: str = "student") -> dict:
    """Train ``student`` (against ``teacher``, or on labels alone when it is None); save best and final.

    Gradient accumulation groups ``grad_accum`` micro-batches per optimizer step; the last group of an epoch may be
    smaller and is stepped at the epoch's end, so no micro-batch spills into the next epoch.
    """
    out_dir = Path(out_dir)
    acc = _accelerator()
    if gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    steps_per_epoch = math.ceil(len(train_loader) / grad_accum)
    opt, sched = _optimizer_and_schedule(student, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                                         total_steps=epochs * steps_per_epoch)
    student, opt, sched = acc.prepare(student, opt, sched)
    if teacher is not None:
        teacher.to(acc.device)
    kw = dict(temperature=temperature, alpha=alpha, device=acc.device)
    history = {"label": label, "steps": [], "epochs": [], "best_val_loss": None}
    step, best = 0, math.inf
    for epoch in range(1, epochs + 1):
        student.train()
        bar = tqdm(total=steps_per_epoch, desc=f"{label} epoch {epoch}/{epochs}", leave=False)
        for group in _groups(train_loader, grad_accum):
            record = _optimizer_step(acc, student, teacher, opt, sched, group, max_grad_norm, kw)
            step += 1
            history["steps"].append({"step": step, "epoch": epoch, **record})
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update()
        bar.close()
        val = evaluate_loss(student, teacher, val_loader, **kw)
        history["epochs"].append({"epoch": epoch, "step": step, **{f"val_{k}": v for k, v in val.items()},
                                  **_epoch_train_means(history["steps"], epoch)})
        if val["loss"] < best:
            best = val["loss"]
            history["best_val_loss"] = best
            history["best_epoch"] = epoch
            save_checkpoint(acc.unwrap_model(student), processor, out_dir / "best")
        write_json(out_dir / "training_history.json", history)
    save_checkpoint(acc.unwrap_model(student), processor, out_dir / "final")
    history["peak_memory_bytes"] = _peak_memory()
    write_json(out_dir / "training_history.json", history)
    return history


def _groups(loader, grad_accum: int):
    """Yield lists of micro-batches, one list per optimizer step; the epoch's last list may be shorter."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == grad_accum:
            yield group
            group = []
    if group:
        yield group


def _optimizer_step(acc, student, teacher, opt, sched, group, max_grad_norm, kw) -> dict:
    """One optimizer step over a group of micro-batches, weighting each by its answer tokens.

    The loss is a mean over answer tokens, so each micro-batch's mean is scaled by its share of the group's
    tokens: the accumulated gradient is then exactly that of the mean over every answer token in the group.
    """
    t0 = time.perf_counter()
    total_tokens = sum(int((b["labels"][:, 1:] != kd.IGNORE_INDEX).sum()) for b in group)
    sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    for i, batch in enumerate(group):
        ctx = acc.no_sync(student) if i < len(group) - 1 else _nullcontext()
        with ctx, acc.autocast():
            out = batch_loss(student, teacher, batch, **kw)
            weight = out.n_tokens / max(total_tokens, 1)
            acc.backward(out.loss * weight)
        for key in sums:
            sums[key] += getattr(out, key).item() * weight
    if not all(math.isfinite(v) for v in sums.values()):
        raise FloatingPointError(f"non-finite loss {sums}; the last good checkpoint is kept. Lower the learning "
                                 "rate or check the data")
    grad_norm = float(acc.clip_grad_norm_(student.parameters(), max_grad_norm))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    tokens = sum(int(b["inputs"]["attention_mask"].sum()) for b in group)
    return {**sums, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm, "answer_tokens": total_tokens,
            "tokens_per_s": tokens / seconds, "seconds": seconds}


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def _epoch_train_means(steps: list, epoch: int) -> dict:
    rows = [s for s in steps if s["epoch"] == epoch]
    n = sum(r["answer_tokens"] for r in rows) or 1
    return {f"train_{k}": sum(r[k] * r["answer_tokens"] for r in rows) / n for k in ("loss", "kd", "ce")}


def _peak_memory() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def write_training_summary(out_dir, histories: dict, *, teacher_path: str, student_path: str, params: dict) -> dict:
    """``training.json``: which checkpoint is which model, for 03 and 04 to read (no hidden state between stages)."""
    out_dir = Path(out_dir)
    models = {"teacher": {"path": str(teacher_path), "role": "teacher"}}
    if "kd_student" in histories:
        models["student"] = {"path": str(out_dir / "kd_student" / "best"), "role": "KD student"}
    if "sft_student" in histories:
        models["sft_student"] = {"path": str(out_dir / "sft_student" / "best"), "role": "SFT-only student"}
    models["base_student"] = {"path": str(student_path), "role": "student's starting weights"}
    keys = ("epochs", "batch_size", "grad_accum", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm",
            "temperature", "alpha", "gradient_checkpointing", "teacher_quantization", "teacher_dtype", "student_dtype",
            "seed")
    summary = {"models": models, "teacher_model": params["teacher_model"], "student_model": params["student_model"],
               "embedded": params["student_model"].startswith("embedded:"),
               "training": {k: params[k] for k in keys if k in params},
               "best_val_loss": {k: h.get("best_val_loss") for k, h in histories.items()},
               "params": params}
    write_json(out_dir / "training.json", summary)
    return summary
