"""Time per optimizer step and per epoch from FLOPs at an assumed share of the device's dense bf16 peak
(``gpus.MFU``). Matmul FLOPs per token: 2 x N forward for every linear weight; training adds 2 x N for activation
gradients and 2 x N for weight gradients (full fine-tuning: 6 x N; LoRA: 4 x N, its adapters aside); checkpointing
recomputes the forward (+2 x N). Attention adds 2 x L^2 x width per layer forward (causal: half of QK^T and AV).
The frozen teacher runs its forward only (2 x N). Vision towers: 2 x N per patch plus 4 x P^2 x width per block; a
frozen tower with checkpointing also recomputes and back-propagates (transformers makes its patch embedding's output
require grad), and from the second epoch on the vision memo returns a frozen tower's tokens without running it.
A quantised teacher also moves its weights through memory once per forward to dequantise them (read the packed
weights, write and read bf16), at the device's bandwidth. Communication between GPUs is not counted."""

from __future__ import annotations

import math

from fslib.training.plan import gpus
from fslib.training.plan.arch import Arch
from fslib.training.plan.memory import Job


def _text_forward(a: Arch, seq_len: float, answers: int) -> float:
    matmul = sum(lin.params for lin in a.linears_of("text"))
    return 2 * matmul * seq_len + 2 * seq_len**2 * a.heads * a.head_dim * a.layers + 2 * a.vocab * a.hidden * answers


def _vision_forward(a: Arch, patches: float) -> float:
    return 2 * a.params_vision * patches + 4 * patches**2 * a.vis_dim * a.vis_depth


def sample_flops(job: Job, seq_len: float, visual_tokens: float, *, memo_hits: bool) -> dict:
    """FLOPs of one sample's training step: ``{"student", "student_vision", "teacher", "teacher_vision"}``."""
    m, s, t = job.cfg.model, job.student, job.teacher
    answers = job.work.answer_tokens
    patches = visual_tokens * s.merge * s.merge
    fwd = _text_forward(s, seq_len, answers)
    student = fwd * ((2 if m.lora else 3) + (1 if m.gradient_checkpointing else 0))
    frozen = m.freeze_vision or m.lora
    vision = _vision_forward(s, patches)
    if frozen:
        vision = 0.0 if memo_hits else vision * (3 if m.gradient_checkpointing else 1)
    else:
        vision *= 4 if m.gradient_checkpointing else 3
    out = {"student": student, "student_vision": vision, "teacher": 0.0, "teacher_vision": 0.0}
    if t is not None:
        out["teacher"] = _text_forward(t, seq_len, answers)
        out["teacher_vision"] = 0.0 if memo_hits else _vision_forward(t, patches)
    return out


def _dequant_seconds(job: Job) -> float:
    q = job.cfg.teacher.quantization
    if job.teacher is None or q in ("none", "", None) or not job.device.bandwidth:
        return 0.0
    n = sum(lin.params for lin in job.teacher.linears if lin.part != "head")
    packed = 0.5 if q == "nf4" else 1.0
    return n * (packed + 4) / job.device.bandwidth  # read packed, write bf16, read bf16 for the matmul


def timing(job: Job) -> dict:
    """``step_seconds`` (a step of mean-length samples, first epoch), ``epoch_seconds`` (first epoch) and
    ``later_epoch_seconds`` (vision memo warm), or None where the device has no stated peak (a CPU)."""
    tflops = job.device.tflops
    w, o = job.work, job.cfg.optim
    micro = o.grad_accum * w.batch
    steps = math.ceil(w.samples_per_epoch / (micro * max(job.processes, 1))) if w.samples_per_epoch else None
    result = {"mfu": gpus.MFU, "tflops": tflops, "steps_per_epoch": steps}
    if not tflops:
        return {**result, "step_seconds": None, "epoch_seconds": None, "later_epoch_seconds": None,
                "flops_per_step": None}
    rate = tflops * 1e12 * gpus.MFU
    seconds = {}
    for hits in (False, True):
        f = sample_flops(job, w.mean_seq_len, w.mean_visual_tokens, memo_hits=hits)
        seconds[hits] = (micro * sum(f.values()) / rate + o.grad_accum * _dequant_seconds(job), micro * sum(f.values()))
    step, flops = seconds[False]
    return {**result, "step_seconds": step, "flops_per_step": flops,
            "epoch_seconds": step * steps if steps else None,
            "later_epoch_seconds": seconds[True][0] * steps if steps else None}
