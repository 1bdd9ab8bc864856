"""What to change when a training does not fit: each candidate is a set of 02 parameters, planned on its own (its
predicted total beside it), best first; then the cheapest changes combined, one at a time, until the plan fits."""

from __future__ import annotations

import dataclasses

from fslib.training.plan.memory import Job

MAX_GPUS = 8


def _candidates(job: Job) -> list[tuple[dict, Job]]:
    """(02's parameters, the job they give), for the changes that apply to ``job``."""
    cfg, out = job.cfg, []

    def add(params: dict, **parts):
        extra = {k: parts.pop(k) for k in ("engine", "processes") if k in parts}
        new = cfg.but(**parts) if parts else cfg
        teacher = None if new.teacher.cache_dir and new.uses_teacher else job.teacher
        work = dataclasses.replace(job.work, batch=new.optim.batch_size)
        out.append((params, dataclasses.replace(job, cfg=new, teacher=teacher, work=work, **extra)))

    if job.teacher is not None:
        for q in ("int8", "nf4"):
            if ("none", "int8", "nf4").index(q) > ("none", "int8", "nf4").index(cfg.teacher.quantization):
                add({"teacher_quantization": q}, teacher={"quantization": q})
        add({"teacher_cache": True}, teacher={"cache_dir": "teacher_cache"})
    if not cfg.model.gradient_checkpointing:
        add({"gradient_checkpointing": True}, model={"gradient_checkpointing": True})
    if cfg.loss.kd_impl == "full" and job.engine not in ("fsdp", "zero3"):
        add({"kd_impl": "chunked"}, loss={"kd_impl": "chunked"})
    if cfg.optim.batch_size > 1:
        b = cfg.optim.batch_size // 2
        add({"batch_size": b, "grad_accum": cfg.optim.grad_accum * 2},
            optim={"batch_size": b, "grad_accum": cfg.optim.grad_accum * 2})
    if not cfg.model.lora:
        add({"student_lora": True, "lora_r": cfg.model.lora_r}, model={"lora": True})
        if not cfg.model.freeze_vision:
            add({"freeze_vision": True}, model={"freeze_vision": True})
    elif cfg.model.lora_r > 4:
        add({"lora_r": cfg.model.lora_r // 2}, model={"lora_r": cfg.model.lora_r // 2})
    if job.device.kind == "cuda":
        for n in (2, 4, MAX_GPUS):
            if n > job.processes:
                add({"num_processes": n, "accelerate_config": "configs/accelerate/fsdp.yaml", "kd_impl": "full"},
                    loss={"kd_impl": "full"}, engine="fsdp", processes=n)
    return out


def _entry(params: dict, job: Job) -> dict:
    from fslib.training.plan import plan

    p = plan(job, with_advice=False)
    return {"params": params, "total_bytes": p["total_bytes"], "fits": p["fits"], "step_seconds": p["step_seconds"]}


def advice(job: Job) -> list[dict]:
    """Every applicable change alone, smallest predicted total first, then (when none fits alone) a combination."""
    singles = sorted((_entry(params, j) for params, j in _candidates(job)), key=lambda e: e["total_bytes"])
    if not singles or any(e["fits"] for e in singles):
        return singles
    combined, current, seen = {}, job, set()
    for _ in range(6):  # greedy: the change that lowers the total most, then the next, on top of it
        options = [(params, j) for params, j in _candidates(current) if not set(params) & seen]
        if not options:
            break
        params, current = min(options, key=lambda o: _entry(*o)["total_bytes"])
        combined.update(params)
        seen.update(params)
        entry = _entry(dict(combined), current)
        if entry["fits"]:
            break
    return singles + [{**_entry(dict(combined), current), "combined": True}]
