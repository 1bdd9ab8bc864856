"""Peak memory of one training step on one device, as the largest of the step's phases (each a sum of components):

* ``teacher_forward``: the student's kept activations while the teacher runs its forward (its working set);
* ``kd_loss``: the same activations, the teacher's final hidden states and the loss's buffers (chunked: and the float32
  accumulator of the student head's gradient, filled during the forward);
* ``backward``: the activations while a layer's backward runs (its gradients; checkpointing: its recomputation) and
  the head's gradient;
* ``backward_end``: the embedding's backward, where a tied head's gradient waits in autograd's buffer beside the
  embedding's dense (V x H) gradient;
* ``optimizer_step``: every gradient, and AdamW's temporaries (CPU: per tensor, two of the largest; GPU: the
  multi-tensor path's sqrt of every second moment at once);
* ``checkpoint_save`` (CPU only; on a GPU it is host memory): LoRA's export holds every adapted layer merged into a
  new weight (a full fine-tuning's save copies nothing: safetensors writes from the tensors themselves).

With ``grad_accum`` > 1 every micro-batch after the first starts with the whole gradient in memory; the plan takes
that worst micro-batch. Weights, AdamW's moments, engine buffers and (CPU) the vision memo are in every phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from fslib.training.plan import activations as act
from fslib.training.plan import weights as wt
from fslib.training.plan.arch import Arch
from fslib.training.plan.workload import Workload

COMPONENTS = ("teacher_weights", "student_weights", "gradients", "optimizer_state", "engine_buffers",
              "autocast_copies", "vision_memo", "activations", "teacher_forward", "kd_loss", "head_gradient",
              "embedding_gradient", "optimizer_step", "checkpoint_copy")


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "cuda" or "cpu"
    memory_bytes: int
    tflops: float | None = None  # dense bf16 peak
    bandwidth: float | None = None  # bytes / s


@dataclass(frozen=True)
class Job:
    """What the plan needs of a ``DistillConfig``, with the architectures its names resolve to."""

    cfg: object  # fslib.training.config.DistillConfig
    student: Arch
    teacher: Arch | None  # None: no teacher in memory (no KD term, or the offline cache)
    work: Workload
    device: Device
    engine: str
    processes: int


def _student(job: Job) -> dict:
    m = job.cfg.model
    s = wt.student_bytes(job.student, dtype=m.dtype, lora=m.lora, lora_r=m.lora_r, freeze_vision=m.freeze_vision)
    return wt.shard(s, job.student, job.engine, max(job.processes, 1))


def _precision(job: Job) -> act.Precision:
    autocast = job.device.kind == "cuda" and not job.engine.startswith("zero")
    weight = 2 if job.engine.startswith("zero") else wt.DTYPE_BYTES[job.cfg.model.dtype]
    return act.precision(weight, job.device.kind, autocast)


def teacher_compute_bytes(job: Job) -> int:
    return 2 if job.device.kind == "cuda" else wt.DTYPE_BYTES[job.cfg.teacher.dtype]


def _autocast_copies(job: Job) -> int:
    """bf16 copies autocast makes of float32 weights (GPU, not DeepSpeed / FSDP): trained weights are cast once and
    cached for the whole autocast region (the loop's spans forward and backward); frozen ones feeding a trained path
    (LoRA's base) are cast per call and kept for backward (all layers, or one with checkpointing)."""
    m, a = job.cfg.model, job.student
    if job.device.kind != "cuda" or job.engine not in ("none", "ddp") or wt.DTYPE_BYTES[m.dtype] == 2:
        return 0
    text = sum(lin.params for lin in a.linears_of("text"))
    if m.lora:
        layer = sum(lin.params for lin in a.layer_linears)
        return 2 * (layer if m.gradient_checkpointing else text) + 2 * a.lora_params(m.lora_r)
    head = a.params_embedding if a.tied else a.params_head
    vision = 0 if m.freeze_vision else sum(lin.params for lin in a.linears_of("vision"))
    return 2 * (text + head + vision)


def _memo(job: Job) -> int:
    """The vision memo's CPU memory (``fslib.engine.visionmemo``): merged visual tokens of every train and
    validation item (Qwen3-VL: and each DeepStack layer's), up to ``vision_memo_gb`` per model; the student's only
    where its tower is frozen and unsharded."""
    m, w, limit = job.cfg.model, job.work, int(job.cfg.runtime.vision_memo_gb * 2**30)
    feature = 2 if job.device.kind == "cuda" else None
    total = 0
    if (m.freeze_vision or m.lora) and job.engine not in ("fsdp", "zero3"):
        total += min(limit, int(w.memo_samples * w.mean_visual_tokens * job.student.hidden
                                * (1 + job.student.deepstack) * (feature or wt.DTYPE_BYTES[m.dtype])))
    if job.teacher is not None:
        total += min(limit, int(w.memo_samples * w.mean_visual_tokens * job.teacher.hidden
                                * (1 + job.teacher.deepstack) * (feature or teacher_compute_bytes(job))))
    return total


def _head(job: Job, s: dict) -> int:
    """The student head's gradient while backward (chunked: from the forward on) holds it apart from ``.grad``: a
    float32 (V, H) accumulator (chunked) or autograd's product (full). None for LoRA (the head is frozen)."""
    if job.cfg.model.lora:
        return 0
    rows = job.student.params_embedding if job.student.tied else job.student.params_head
    return rows * (4 if job.cfg.loss.kd_impl == "chunked" else s["param_bytes"])


def _transients(job: Job, s: dict, p: act.Precision) -> dict:
    cfg, a, w, t = job.cfg, job.student, job.work, job.teacher
    n = w.batch * w.answer_tokens
    tc = teacher_compute_bytes(job)
    logits = p.compute  # the student's logits: bf16 under a GPU's autocast, its weights' dtype on a CPU
    kd = act.kd_bytes(cfg.loss.kd_impl if cfg.teacher.cache_dir is None or not cfg.uses_teacher else "full", n=n,
                      chunk=cfg.loss.kd_chunk_size, vocab=a.vocab, student=a, teacher=t, student_logit_bytes=logits,
                      teacher_bytes=tc, stream=p.stream)
    if t is not None:
        deq = wt.largest_dequantized(t, cfg.teacher.quantization, tc)
        teacher = act.teacher_forward_bytes(t, tokens=w.tokens, patches=w.batch * w.patches, compute=tc,
                                            dequantized=deq)
        kd += w.tokens * t.hidden * tc  # the teacher's final hidden states, until the loss returns
    else:
        teacher = 0
    acts = act.student_activations(a, p, batch=w.batch, seq_len=w.seq_len, patches=w.batch * w.patches,
                                   lora_r=cfg.model.lora_r if cfg.model.lora else None,
                                   checkpointing=cfg.model.gradient_checkpointing,
                                   trainable_vision=not (cfg.model.freeze_vision or cfg.model.lora))
    return {"kd": kd, "teacher": teacher, "acts": acts}


def _optimizer_temp(job: Job, s: dict) -> int:
    if job.device.kind == "cuda":  # the foreach AdamW: sqrt of every second moment at once
        return s["optimizer_state"] // 2
    return 2 * s["largest"]  # the per-tensor AdamW on a CPU: sqrt, then its quotient, of one tensor


def phases(job: Job) -> dict[str, dict[str, int]]:
    """Every phase's components (bytes on one device); see the module doc."""
    cfg = job.cfg
    s, p = _student(job), _precision(job)
    x = _transients(job, s, p)
    cpu = job.device.kind == "cpu"
    base = {"teacher_weights": _teacher_weights(job), "student_weights": s["weights"],
            "optimizer_state": s["optimizer_state"], "vision_memo": _memo(job) if cpu else 0,
            "engine_buffers": s["buckets"]}
    live = s["gradients"] if cfg.optim.grad_accum > 1 else 0
    head = _head(job, s)
    emb = 0 if cfg.model.lora else job.student.params_embedding * s["param_bytes"]
    chunked = cfg.loss.kd_impl == "chunked"
    step = {"engine_buffers": s["buckets"] + s["gathered"], "autocast_copies": _autocast_copies(job),
            "gradients": live}
    out = {
        "teacher_forward": {**step, "activations": x["acts"]["forward"], "teacher_forward": x["teacher"]},
        "kd_loss": {**step, "activations": x["acts"]["forward"], "kd_loss": x["kd"],
                    "head_gradient": head if chunked else 0},
        "backward": {**step, "activations": x["acts"]["backward"], "head_gradient": head},
        "backward_end": {**step, "gradients": s["gradients"] if live else s["gradients"] - emb,
                         "head_gradient": head if job.student.tied else 0, "embedding_gradient": emb},
        "optimizer_step": {"gradients": s["gradients"], "optimizer_step": _optimizer_temp(job, s)},
    }
    if cpu:
        out["checkpoint_save"] = {"checkpoint_copy": checkpoint_copy(job)}
    if x["teacher"] == 0:
        del out["teacher_forward"]
    return {name: {c: {**base, **parts}.get(c, 0) for c in COMPONENTS} for name, parts in out.items()}


def _teacher_weights(job: Job) -> int:
    t = job.cfg.teacher
    if job.teacher is None:
        return 0
    total = wt.teacher_weight_bytes(job.teacher, t.dtype, t.quantization)
    spread = t.device_map == "auto" and job.device.kind == "cuda" and job.engine == "none" and job.processes > 1
    return total // job.processes if spread else total


def checkpoint_copy(job: Job) -> int:
    """What a save adds: safetensors (0.8) writes straight from the tensors, so a full fine-tuning's save copies
    nothing; LoRA's export merges every adapted layer into a new weight (``adapters.merged_state_dict``: the merged
    layers, plus B @ A and its scaled copy for the layer being merged)."""
    m, a = job.cfg.model, job.student
    if not m.lora:
        return 0
    b = wt.DTYPE_BYTES[m.dtype]
    largest = max(lin.params for lin in a.linears_of("text"))
    return sum(lin.params for lin in a.linears_of("text")) * b + 2 * largest * 4


def host_bytes(job: Job) -> dict:
    """Host (CPU) memory a GPU run needs beside the device's: the vision memo and a checkpoint save's copy."""
    return {"vision_memo": _memo(job), "checkpoint_copy": checkpoint_copy(job)}
