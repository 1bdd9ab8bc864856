"""Everything ``fslib.training.loop`` needs before its first step: the accelerator and engine checks, the optimizer and
schedule, the frozen teacher's placement, the data sharding, and the resume state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fslib.core import fsio
from fslib.engine import adapters
from fslib.engine.labels import counted
from fslib.training import checkpoint
from fslib.training.config import TRACKERS, DistillConfig

OOM_HINT = ("Out of memory. Change, in this order: kd_impl to chunked (and lower kd_chunk_size), batch_size (raising "
            "grad_accum keeps the effective batch), gradient_checkpointing to True, teacher_quantization to int8 or "
            "nf4 (or teacher_cache to True, which needs no teacher in memory), student_lora to True, max_length or "
            "the pixel bounds.")


@dataclass
class Run:
    """The state of one training run, shared by the loop's helpers; ``cfg`` is the training's whole config."""

    acc: object
    cfg: DistillConfig
    student: object
    teacher: object
    cache: object
    processor: object
    opt: object
    sched: object
    train_loader: object
    val_loader: object
    onpolicy_collator: object
    settings: dict
    steps_per_epoch: int
    history: dict = field(default_factory=dict)
    epoch: int = 1  # the epoch to run next
    position: int = 0  # optimizer steps of that epoch already done
    step: int = 0
    best: float = math.inf
    done: bool = False
    last_checkpoint: str = "none yet"
    memos: dict = field(default_factory=dict)  # fslib.engine.visionmemo per model ("student", "teacher")

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)


def answer_tokens(batch: dict) -> int:
    return int(counted(batch["labels"]).sum())


def peak_memory() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def teacher_in_eval(teacher) -> None:
    if teacher is not None:
        teacher.eval()  # the teacher never trains: no dropout, whatever the caller did to it


def accelerator(out_dir: Path, report_to: str):
    """bf16 autocast only where a GPU is present; on CPU everything runs in fp32. Trackers log into ``out_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if report_to not in TRACKERS:
        raise ValueError(f"report_to {report_to!r} is not one of: {', '.join(TRACKERS)}")
    if report_to != "none":
        import importlib.util

        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[report_to]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"report_to={report_to!r} needs the {module} package: pip install {module}")
    gpu = torch.cuda.is_available()
    # cpu=True where there is no GPU: launched processes then form a gloo group (accelerate's MULTI_CPU); without it,
    # each launched process would silently train alone on its own data.
    # The schedule counts global optimizer steps: accelerate's default would step it once per process per step.
    acc = Accelerator(cpu=not gpu, mixed_precision="bf16" if gpu else "no", step_scheduler_with_optimizer=False,
                      log_with=None if report_to == "none" else report_to,
                      project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")))
    if not gpu:
        _fsdp_on_cpu(acc)
    return acc


def _fsdp_on_cpu(acc) -> None:
    """Honour an FSDP launch (configs/accelerate/fsdp.yaml) on CPU processes, as tests/test_fsdp.py runs it.

    accelerate (1.15) turns FSDP on only for GPU-like devices: on CPU the launched processes come up as MULTI_CPU, so
    the student would silently be replicated (DDP) instead of sharded. Here the launch's plugin (read from the
    ``FSDP_*`` variables, as accelerate does on GPUs) is put in place, after which ``prepare``, ``clip_grad_norm_``,
    ``get_state_dict`` and ``save_state``/``load_state`` take accelerate's own FSDP2 code on gloo, the GPU's path.
    """
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"
            or acc.distributed_type != DistributedType.MULTI_CPU):
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes runs fsdp_version 2 only (configs/accelerate/fsdp.yaml)")
    for state in (PartialState(), acc.state):  # both: a later AcceleratorState() copies PartialState's fields over
        state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def _sharded(acc) -> bool:
    """Whether the engine shards the student's weights across processes (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP or (
        acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3)


def _check_engine(acc, cfg: DistillConfig, cache) -> None:
    """Refuse combinations an engine cannot run, before any work."""
    sharded = _sharded(acc)
    if sharded and cfg.loss.kd_impl == "chunked":
        raise ValueError("kd_impl chunked reads the student's whole lm_head weight, which FSDP and ZeRO-3 shard; use "
                         "kd_impl full there (or DDP / ZeRO-2), or teacher_cache, which needs no teacher logits")
    if cfg.onpolicy.onpolicy_lambda > 0 and sharded:
        raise ValueError("on-policy sampling generates with the whole student; not under FSDP / ZeRO-3")


def _optimizer(model, *, lr, weight_decay, warmup_ratio, total_steps):
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]  # never the teacher's, never frozen towers
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, get_cosine_schedule_with_warmup(opt, int(warmup_ratio * total_steps), total_steps)


def deepspeed_fill(ds: dict, *, batch_size: int, max_grad_norm: float) -> None:
    """Complete the DeepSpeed config (``DeepSpeedPlugin.deepspeed_config``) in place. No dataloader goes through
    ``prepare`` (the sampler shards), so DeepSpeed's "auto" batch sizes are filled here. Accumulation is ours
    (token-weighted, boundaries set per step), so DeepSpeed's own count stays 1; clipping is the run's."""
    ds.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=1, gradient_clipping=max_grad_norm)
    ds.pop("train_batch_size", None)


def _prepare(acc, student, *, batch_size: int, max_grad_norm: float, **opt_kw):
    """Wrap the student for the engine. DeepSpeed and FSDP2 take model and optimizer together (FSDP2: accelerate
    shards the model, then points the optimizer at the sharded parameters); FSDP1 wants the model wrapped before the
    optimizer sees its parameters."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        deepspeed_fill(acc.state.deepspeed_plugin.deepspeed_config, batch_size=batch_size, max_grad_norm=max_grad_norm)
    if acc.distributed_type == DistributedType.DEEPSPEED or acc.is_fsdp2:
        opt, sched = _optimizer(student, **opt_kw)
        return acc.prepare(student, opt, sched)
    student = acc.prepare(student)
    opt, sched = _optimizer(student, **opt_kw)
    opt, sched = acc.prepare(opt, sched)
    return student, opt, sched


def _install_memos(acc, student, teacher, vision_memo_gb: float) -> dict:
    """Reuse of frozen vision towers' features (``fslib.engine.visionmemo``): the teacher's always (a full frozen copy per
    process), the student's unless the engine shards its weights (a skipped forward would stall the all-gathers)."""
    from fslib.engine import visionmemo

    limit = int(vision_memo_gb * 2**30)
    models = {"teacher": teacher} | ({} if _sharded(acc) else {"student": student})
    memos = {name: visionmemo.install(m, limit) for name, m in models.items() if m is not None}
    return {name: memo for name, memo in memos.items() if memo is not None}


def _place_teacher(teacher, device) -> None:
    """The teacher is never passed to ``prepare``: no wrapper, no optimizer, one full copy per process (it only runs
    forward, so it needs no gradient sync). A quantised or device_map'ed teacher stays where loading put it."""
    if teacher is None:
        return
    if any(p.requires_grad for p in teacher.parameters()):
        raise ValueError("the teacher must be frozen: load it with models.load_model(..., frozen=True)")
    if not (getattr(teacher, "is_quantized", False) or getattr(teacher, "hf_device_map", None)):
        teacher.to(device)


def setup(student, teacher, processor, train_loader, val_loader, cfg: DistillConfig, *, cache=None,
          onpolicy_collator=None) -> Run:
    out_dir, optim = Path(cfg.out_dir), cfg.optim
    acc = accelerator(out_dir, cfg.runtime.report_to)
    _check_engine(acc, cfg, cache)
    if cfg.model.gradient_checkpointing and not adapters.is_checkpointing(student):
        adapters.enable_checkpointing(student)
    for loader in (train_loader, val_loader):
        loader.batch_sampler.shard(acc.process_index, acc.num_processes)
    steps_per_epoch = math.ceil(len(train_loader) / optim.grad_accum)
    student, opt, sched = _prepare(acc, student, batch_size=train_loader.batch_sampler.batch_size,
                                   max_grad_norm=optim.max_grad_norm, lr=optim.learning_rate,
                                   weight_decay=optim.weight_decay, warmup_ratio=optim.warmup_ratio,
                                   total_steps=optim.epochs * steps_per_epoch)
    _place_teacher(teacher, acc.device)
    # What a resume must match: the whole config (runtime aside) and what the engine and data made of it.
    settings = {**cfg.resume_settings(), "cached": cache is not None, "n_train": len(train_loader.dataset),
                "processes": acc.num_processes, "engine": acc.distributed_type.value}
    run = Run(acc, cfg, student, teacher, cache, processor, opt, sched, train_loader, val_loader, onpolicy_collator,
              settings, steps_per_epoch,
              history={"label": cfg.label, "steps": [], "epochs": [], "best_val_loss": None, "settings": settings})
    _restore(run, cfg.runtime.resume)
    if cfg.runtime.report_to != "none":
        acc.init_trackers(cfg.label, config={k: str(v) for k, v in settings.items()})
    run.memos = _install_memos(acc, student, teacher, cfg.runtime.vision_memo_gb)  # last: a failed setup leaves none
    return run


def _restore(run: Run, resume: bool) -> None:
    """Continue from ``out_dir/checkpoint`` when resuming; otherwise forget any earlier run's state."""
    for name in ("best", "final"):
        fsio.recover(run.out_dir / name)
    if not resume:
        if run.acc.is_main_process:
            checkpoint.clear(run.out_dir)
        run.acc.wait_for_everyone()
        return
    state = checkpoint.load_resume(run.acc, run.out_dir, run.settings)
    if state is None:
        return
    run.epoch, run.position, run.step = state["epoch"], state["position"], state["step"]
    run.best, run.done, run.history = state["best"], state["done"], state["history"]
    run.last_checkpoint = f"{run.out_dir / checkpoint.RESUME_DIR} (step {run.step})"
