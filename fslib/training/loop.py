"""The distillation loop: a frozen teacher (or its offline cache), a trained student, one loss from ``fslib.engine.kd``.

Runs on accelerate, so the same code runs on a CPU, one GPU (bf16 autocast) or several processes (DDP, FSDP,
DeepSpeed; see ``fslib.training.jobs`` and configs/accelerate). The loop is short: it calls named helpers for a step, an
evaluation and the saves. Data order comes from ``fslib.training.sampler``; every setting from one
``fslib.training.config.DistillConfig``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time

import torch
from tqdm.auto import tqdm

from fslib.core.fsio import atomic_dir, write_json
from fslib.engine import adapters, kd, visionmemo
from fslib.engine.losspaths import LossConfig, batch_loss  # batch_loss: looked up here at call time (tests patch it)
from fslib.training import checkpoint, onpolicy
from fslib.training.config import DistillConfig
from fslib.training.setup import OOM_HINT, Run, answer_tokens, peak_memory, setup, teacher_in_eval


@torch.no_grad()
def evaluate_loss(student, teacher, loader, *, loss: LossConfig, device, acc=None, cache=None) -> dict:
    """Token-weighted mean of loss, KD and CE over a loader (summed over every process when ``acc`` is given)."""
    was_training = student.training
    student.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, kd, ce (token-weighted sums) and tokens
    for batch in loader:
        out = batch_loss(student, teacher, batch, loss=loss, device=device, cache=cache)
        sums += torch.tensor([out.loss.item() * out.n_tokens, out.kd.item() * out.n_tokens,
                              out.ce.item() * out.n_tokens, out.n_tokens], dtype=torch.float64)
    student.train(was_training)
    sums = _reduce(acc, sums)
    return {k: float(v / max(sums[3], 1)) for k, v in zip(("loss", "kd", "ce"), sums[:3])}


def _reduce(acc, t: torch.Tensor) -> torch.Tensor:
    if acc is None or acc.num_processes == 1:
        return t
    return acc.reduce(t.to(acc.device), reduction="sum").cpu()


def train(student, teacher, processor, train_loader, val_loader, cfg: DistillConfig, *, cache=None,
          onpolicy_collator=None) -> dict:
    """Train ``student`` as ``cfg`` says, against ``teacher`` (a frozen model), ``cache`` (its offline top-k logits)
    or the labels alone (both None); save ``best`` (lowest validation loss) and ``final`` to ``cfg.out_dir``; return
    the history.

    ``cfg.optim.grad_accum`` micro-batches make an optimizer step; the epoch's last step may hold fewer, so no
    micro-batch spills into the next epoch. Every ``cfg.runtime.save_every`` optimizer steps and at every epoch's end
    the full training state is saved to ``out_dir/checkpoint``; ``cfg.runtime.resume`` continues from it (from where a
    SIGKILL left it). With ``cfg.onpolicy.onpolicy_lambda`` > 0, that share of the micro-batches is answered by the
    student (re-collated by ``onpolicy_collator``) and scored by the teacher (GKD). Frozen vision towers' features are
    reused across epochs (``fslib.engine.visionmemo``), up to ``cfg.runtime.vision_memo_gb`` of CPU memory per model;
    ``history["vision_memo"]`` counts the reuse.
    """
    run = setup(student, teacher, processor, train_loader, val_loader, cfg, cache=cache,
                onpolicy_collator=onpolicy_collator)
    try:
        if run.done:
            return run.history
        for epoch in range(run.epoch, cfg.optim.epochs + 1):
            if _stalled(run, epoch - 1):
                break
            _train_epoch(run, epoch)
            _end_epoch(run, epoch)
        return _finish(run)
    finally:
        for model in (run.student, run.teacher):
            visionmemo.remove(model)  # the models go back as they came; the memo's memory is freed


def _stalled(run: Run, done: int) -> bool:
    """Early stopping: ``patience`` epochs have passed since the best validation loss (``best`` is kept)."""
    patience, best = run.cfg.optim.patience, run.history.get("best_epoch")
    if not patience or best is None or done - best < patience:
        return False
    run.history["stopped_early"] = {"after_epoch": done, "best_epoch": best, "patience": patience}
    return True


def _train_epoch(run: Run, epoch: int) -> None:
    skip = run.position if epoch == run.epoch else 0  # optimizer steps of this epoch already done before a resume
    run.train_loader.batch_sampler.set_epoch(epoch, skip=skip * run.cfg.optim.grad_accum)
    run.student.train()
    teacher_in_eval(run.teacher)
    bar = tqdm(total=run.steps_per_epoch, initial=skip, desc=f"{run.cfg.label} epoch {epoch}/{run.cfg.optim.epochs}",
               leave=False, disable=not run.acc.is_local_main_process)
    ready = time.perf_counter()
    for i, group in enumerate(_groups(run.train_loader, run.cfg.optim.grad_accum), start=skip + 1):
        data_seconds = time.perf_counter() - ready  # collating this step's micro-batches (processor, pixels)
        try:
            record = {**_optimizer_step(run, group), "data_seconds": data_seconds}
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(f"{e}\n{OOM_HINT}") from e
        run.step += 1
        run.history["steps"].append({"step": run.step, "epoch": epoch, **record})
        run.acc.log({f"train/{k}": v for k, v in record.items() if v is not None}, step=run.step)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update()
        save_every = run.cfg.runtime.save_every
        if save_every and run.step % save_every == 0 and i < run.steps_per_epoch:
            _save_resume(run, epoch, i)
        ready = time.perf_counter()
    bar.close()


def _end_epoch(run: Run, epoch: int) -> None:
    val = evaluate_loss(run.student, run.teacher, run.val_loader, loss=run.cfg.loss, device=run.acc.device,
                        acc=run.acc, cache=run.cache)
    run.history["epochs"].append({"epoch": epoch, "step": run.step, **{f"val_{k}": v for k, v in val.items()},
                                  **_epoch_train_means(run.history["steps"], epoch), "peak_memory_bytes": peak_memory()})
    run.acc.log({f"val/{k}": v for k, v in val.items()}, step=run.step)
    if val["loss"] < run.best:
        run.best = val["loss"]
        run.history.update(best_val_loss=run.best, best_epoch=epoch)
        _save_model(run, "best")
    if run.acc.is_main_process:
        write_json(run.out_dir / "training_history.json", run.history)
    _save_resume(run, epoch + 1, 0)  # "done" only once final exists (_finish): a kill in between redoes _finish


def _finish(run: Run) -> dict:
    _save_model(run, "final")
    run.history["peak_memory_bytes"] = peak_memory()
    run.history["vision_memo"] = {name: memo.stats() for name, memo in run.memos.items()}
    if run.acc.is_main_process:
        write_json(run.out_dir / "training_history.json", run.history)
    _save_resume(run, run.cfg.optim.epochs + 1, 0, done=True)
    run.acc.end_training()
    return run.history


def _save_model(run: Run, name: str) -> None:
    """``best`` / ``final`` as plain from_pretrained folders (LoRA merged), written atomically by the main process."""
    state = run.acc.get_state_dict(run.student)  # a collective under FSDP / ZeRO-3: every process calls it
    if run.acc.is_main_process:
        with atomic_dir(run.out_dir / name) as tmp:
            adapters.save_pretrained(run.acc.unwrap_model(run.student), state, run.processor, tmp)
    run.acc.wait_for_everyone()


def _save_resume(run: Run, epoch: int, position: int, done: bool = False) -> None:
    state = {"epoch": epoch, "position": position, "step": run.step, "best": run.best, "done": done,
             "history": run.history, "settings": run.settings, "settings_hash": checkpoint.settings_hash(run.settings)}
    checkpoint.save_resume(run.acc, run.out_dir, state)
    run.last_checkpoint = f"{run.out_dir / checkpoint.RESUME_DIR} (step {run.step})"


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


def _micro_loss(run: Run, batch: dict, micro: int) -> kd.KDLoss:
    """One micro-batch's loss; with probability lambda (GKD) the batch is first answered by the student itself."""
    loss, op = run.cfg.loss, run.cfg.onpolicy
    draw = random.Random(f"{run.cfg.optim.seed}-{run.step}-{micro}").random() if op.onpolicy_lambda > 0 else 1.0
    if draw < op.onpolicy_lambda:
        batch = onpolicy.onpolicy_batch(run.acc.unwrap_model(run.student), batch, run.onpolicy_collator,
                                        max_new_tokens=op.onpolicy_max_new_tokens,
                                        temperature=op.onpolicy_temperature, device=run.acc.device)
        loss = dataclasses.replace(loss, alpha=1.0)  # the student's own samples have no reference: divergence only
    return batch_loss(run.student, run.teacher, batch, loss=loss, device=run.acc.device, cache=run.cache)


def _optimizer_step(run: Run, group: list[dict]) -> dict:
    """One optimizer step over a group of micro-batches (on every process), weighting each by its answer tokens.

    The loss is a mean over answer tokens, so each micro-batch's mean is scaled by its share n_b / N of the tokens
    of the whole global step (N summed over processes first). DDP, FSDP and ZeRO average gradients over the W
    processes, so the scale is W * n_b / N: the result is exactly the gradient of the mean over every answer token.
    """
    acc, t0 = run.acc, time.perf_counter()
    n_global = float(_reduce(acc, torch.tensor([float(sum(answer_tokens(b) for b in group))]))[0])
    sums = torch.zeros(5, dtype=torch.float64)  # loss, kd, ce (token-weighted), input tokens, samples
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        acc.gradient_state._set_sync_gradients(last)  # DeepSpeed steps at the boundary; others skip the all-reduce
        with (contextlib.nullcontext() if last else acc.no_sync(run.student)), acc.autocast():
            out = _micro_loss(run, batch, i)
            acc.backward(out.loss * (out.n_tokens * acc.num_processes / max(n_global, 1.0)))
        n = out.n_tokens
        sums += torch.tensor([out.loss.item() * n, out.kd.item() * n, out.ce.item() * n,
                              float(batch["inputs"]["attention_mask"].sum()), len(batch["ids"])], dtype=torch.float64)
    sums = _reduce(acc, sums)
    loss, kd_, ce = (float(v / max(n_global, 1.0)) for v in sums[:3])
    if not all(math.isfinite(v) for v in (loss, kd_, ce)):
        raise FloatingPointError(f"non-finite loss at step {run.step + 1} (loss={loss}, kd={kd_}, ce={ce}); stopped "
                                 f"before the update. Last good checkpoint: {run.last_checkpoint}. Lower the learning "
                                 "rate or check the data, then resume")
    grad_norm = acc.clip_grad_norm_(run.student.parameters(), run.cfg.optim.max_grad_norm)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    return {"loss": loss, "kd": kd_, "ce": ce, "lr": run.sched.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None, "answer_tokens": int(n_global),
            "tokens_per_s": float(sums[3]) / seconds, "samples_per_s": float(sums[4]) / seconds, "seconds": seconds}


def _epoch_train_means(steps: list, epoch: int) -> dict:
    rows = [s for s in steps if s["epoch"] == epoch]
    n = sum(r["answer_tokens"] for r in rows) or 1
    return {f"train_{k}": sum(r[k] * r["answer_tokens"] for r in rows) / n for k in ("loss", "kd", "ce")}
