"""The training planner: predicted peak memory per device, by component, and time per step and epoch, for one
``DistillConfig`` on a named GPU (or a CPU), before anything is loaded. ``python -m fslib.plan PARAMS`` is its
command line; 02_distill prints it before training (``fslib.stages.distill.memory_plan``).

Modules: ``arch`` (counts and shapes from the meta-device model), ``workload`` (tokens of a micro-batch),
``weights`` (weights, quantisation, optimizer state, sharding), ``activations`` (what forward and backward keep),
``memory`` (the step's phases), ``timing`` (FLOPs), ``advice`` (what to change when it does not fit), ``gpus``.
What is measured (benchmarks/plan_vs_measured.py on CPU) and what is only predicted is said in README.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fslib.training.plan import gpus
from fslib.training.plan.arch import Arch, arch_of
from fslib.training.plan.memory import COMPONENTS, Device, Job, host_bytes, phases
from fslib.training.plan.timing import timing
from fslib.training.plan.workload import Workload

__all__ = ["Device", "Job", "Workload", "COMPONENTS", "arch_of", "device", "job_for", "plan", "summary"]


def device(name: str = "cpu", *, memory_bytes: int | None = None, tflops: float | None = None) -> Device:
    """A named GPU of ``gpus.GPUS``, or ``cpu`` (memory: the host's RAM unless given; no stated peak)."""
    if name in gpus.GPUS:
        g = gpus.GPUS[name]
        return Device(name, "cuda", memory_bytes or g["memory_bytes"], tflops or g["tflops"], g["bandwidth"])
    if name != "cpu":
        raise ValueError(f"unknown GPU {name!r}; named GPUs: {', '.join(gpus.GPUS)} (or cpu)")
    if memory_bytes is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    return Device("cpu", "cpu", memory_bytes, tflops, None)


def teacher_in_memory(cfg) -> bool:
    """Whether the training loads its teacher: a KD term (alpha > 0) from a live teacher, not the offline cache."""
    return bool(cfg.uses_teacher and cfg.teacher.path and not cfg.teacher.cache_dir)


def job_for(cfg, work: Workload, dev: Device, *, engine: str = "none", processes: int = 1,
            search: str | Path | None = None, student: Arch | None = None, teacher: Arch | None = None) -> Job:
    """A ``Job``: ``cfg``'s models resolved to architectures (``arch.arch_of``), its batch size in ``work``."""
    student = student or arch_of(cfg.model.path, search)
    if teacher is None and teacher_in_memory(cfg):
        teacher = arch_of(cfg.teacher.path, search)
    work = dataclasses.replace(work, batch=cfg.optim.batch_size)
    return Job(cfg, student, teacher if teacher_in_memory(cfg) else None, work, dev, engine,
               processes if engine != "none" else 1)


def plan(job: Job, *, with_advice: bool = True) -> dict:
    """The plan of one training on one device: ``total_bytes`` (the largest phase), ``components`` (that phase's,
    summing to it), ``fits``, ``step_seconds``, ``epoch_seconds``, ``advice`` and what they rest on."""
    ph = phases(job)
    peak = max(ph, key=lambda name: sum(ph[name].values()))
    total = sum(ph[peak].values())
    usable = gpus.usable_bytes(job.device.memory_bytes, job.device.kind)
    t = timing(job)
    out = {"total_bytes": total, "fits": total <= usable, "components": ph[peak], "peak_phase": peak,
           "phases": {name: sum(c.values()) for name, c in ph.items()},
           "step_seconds": t["step_seconds"], "epoch_seconds": t["epoch_seconds"],
           "later_epoch_seconds": t["later_epoch_seconds"], "steps_per_epoch": t["steps_per_epoch"],
           "device": {"name": job.device.name, "kind": job.device.kind, "memory_bytes": job.device.memory_bytes,
                      "usable_bytes": usable, "tflops": job.device.tflops, "mfu": gpus.MFU},
           "engine": job.engine, "processes": job.processes, "workload": job.work.to_dict(),
           "host_bytes": host_bytes(job) if job.device.kind == "cuda" else {}, "notes": notes(job),
           "advice": []}
    if with_advice and not out["fits"]:
        from fslib.training.plan.advice import advice

        out["advice"] = advice(job)
    return out


def notes(job: Job) -> list[str]:
    n = [f"time at {gpus.MFU:.0%} of the dense bf16 peak (assumed, not measured)" if job.device.tflops
         else "no time predicted: no stated peak for this device (pass --tflops)"]
    if job.device.kind == "cuda":
        n.append(f"fits: total <= {1 - gpus.FRAGMENTATION:.0%} of the memory less {gpus.CUDA_RESERVE / 2**30:.1f} "
                 "GiB (CUDA context and allocator fragmentation, assumed)")
    if job.engine in ("fsdp", "zero3") and job.cfg.loss.kd_impl == "chunked":
        n.append("kd_impl chunked is refused under FSDP / ZeRO-3 (fslib.training.setup): use kd_impl full there")
    return n


def summary(p: dict) -> dict:
    """The ``--json`` keys: total_bytes, fits, components, step_seconds, epoch_seconds, advice."""
    return {k: p[k] for k in ("total_bytes", "fits", "components", "step_seconds", "epoch_seconds", "advice")}


def this_device() -> tuple[Device, str]:
    """The device a training here would use, and how it was found: the first GPU (its name matched to the spec
    table for time; its memory from torch), else the CPU with the host's RAM."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory
        key = gpus.match(name)
        if key:
            return device(key, memory_bytes=memory), f"{name} ({memory / 2**30:.1f} GiB, torch.cuda)"
        return Device(name, "cuda", memory), f"{name} ({memory / 2**30:.1f} GiB; not in the spec table: no time)"
    dev = device("cpu")
    return dev, f"CPU: no device limit; the host's RAM ({dev.memory_bytes / 2**30:.1f} GiB) is the limit shown"


def table_row(p: dict) -> dict:
    """One training's plan as a row for a notebook table (GiB, seconds)."""
    top = sorted(((b, c) for c, b in p["components"].items() if b), reverse=True)[:3]
    return {"predicted peak (GiB)": round(p["total_bytes"] / 2**30, 2), "usable (GiB)":
            round(p["device"]["usable_bytes"] / 2**30, 2), "fits": p["fits"], "peak phase": p["peak_phase"],
            "largest parts": ", ".join(f"{c} {b / 2**30:.2f}" for b, c in top),
            "s / step": None if p["step_seconds"] is None else round(p["step_seconds"], 2),
            "min / epoch": None if p["epoch_seconds"] is None else round(p["epoch_seconds"] / 60, 1)}
