"""One training job (teacher preparation, KD student or SFT baseline) as a script, so that it can run on several
processes. 02_distill runs a job in its own process when ``num_processes`` is 1, and otherwise launches::

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m fslib.training.jobs JOB.json
    torchrun --standalone --nproc_per_node 2 -m fslib.training.jobs JOB.json      # the same, without accelerate's CLI

``JOB.json`` holds a ``Job``'s fields. Every process loads the models itself (the teacher before the accelerator
exists, so that no ZeRO-3 context partitions it: it stays a full, frozen copy per process) and reads the data from
the run folder; rank 0 writes ``<out_dir>/training_history.json``, which the notebook then reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fslib.core.fsio import REPO_ROOT, write_json


@dataclass
class Job:
    """Everything one training needs, as plain values (JSON round-trips it to launched processes)."""

    label: str
    out_dir: str
    student_path: str
    data_dir: str
    teacher_path: str | None = None  # None: labels alone (alpha 0)
    cache_dir: str | None = None  # an offline teacher cache to use instead of the teacher
    extra_train_dirs: list = field(default_factory=list)  # dataset folders added to train (teacher-answered)
    samples_per_epoch: int | None = None  # an epoch's share of a larger train set (the same steps as the baseline)
    pixels: dict = field(default_factory=dict)
    max_length: int = 512
    batch_size: int = 8
    seed: int = 0
    student_dtype: str = "float32"
    lora: dict | None = None  # {r, alpha, dropout} or None for full fine-tuning
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    teacher_dtype: str = "float32"
    teacher_quantization: str = "none"
    teacher_device_map: str = ""
    trust_remote_code: bool = False
    epochs: int = 1
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 3.0
    alpha: float = 0.7
    divergence: str = "forward_kl"
    beta: float = 0.5
    kd_impl: str = "full"
    kd_chunk_size: int = 1024
    save_every: int = 0
    resume: bool = False
    report_to: str = "none"
    onpolicy: dict | None = None  # {lambda, max_new_tokens, temperature}
    vision_memo_gb: float = 2.0  # reuse of frozen vision towers' features (fslib.engine.visionmemo); 0 recomputes them

    def but(self, **changes) -> Job:
        return dataclasses.replace(self, **changes)


def _records(job: Job) -> tuple[list[dict], list[dict]]:
    from fslib.data import store
    from fslib.training import seqkd

    dataset = store.load_dataset_dir(job.data_dir)
    train, _ = seqkd.split_labelled(store.records_from_dataset(dataset["train"]))
    for extra in job.extra_train_dirs:
        train += store.records_from_dataset(store.load_dataset_dir(extra)["train"])
    val, _ = seqkd.split_labelled(store.records_from_dataset(dataset["val"]))
    return train, val


def _models(job: Job):
    from fslib.engine import adapters, models

    teacher = None
    if job.teacher_path and not job.cache_dir and job.alpha > 0:
        teacher = models.load_model(job.teacher_path, dtype=job.teacher_dtype, quantization=job.teacher_quantization,
                                    device_map=job.teacher_device_map or None, frozen=True,
                                    trust_remote_code=job.trust_remote_code)
    model = models.load_model(job.student_path, dtype=job.student_dtype, trust_remote_code=job.trust_remote_code)
    lora = job.lora or {}
    model = adapters.prepare(model, lora=bool(job.lora), lora_r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32),
                            lora_dropout=lora.get("dropout", 0.05), freeze_vision=job.freeze_vision,
                            gradient_checkpointing=job.gradient_checkpointing)
    return model, teacher


def run(job: Job | dict) -> dict:
    """Run ``job`` in this process (one rank of a launched group, or the notebook's own process)."""
    import torch

    from fslib.engine import adapters, collate, models
    from fslib.training import cache, loop, sampler

    job = Job(**job) if isinstance(job, dict) else job
    torch.manual_seed(job.seed)  # the same LoRA initialisation on every process
    processor = models.load_processor(job.student_path, trust_remote_code=job.trust_remote_code)
    collator = collate.VQACollator(processor, job.pixels, max_length=job.max_length)
    train_records, val_records = _records(job)
    loaders = [sampler.make_loader(recs, collator, batch_size=job.batch_size, shuffle=shuffle, seed=job.seed,
                                 samples_per_epoch=per_epoch)
               for recs, shuffle, per_epoch in ((train_records, True, job.samples_per_epoch), (val_records, False, None))]
    model, teacher = _models(job)
    teacher_cache = cache.TeacherCache(job.cache_dir) if job.cache_dir and job.alpha > 0 else None
    onpolicy = {**job.onpolicy, "collator": collator} if job.onpolicy and job.onpolicy.get("lambda", 0) > 0 else None
    summary = {"student": {**models.describe(model), **adapters.trainable_counts(model)},
               "teacher": models.describe(teacher) if teacher is not None else None,
               "teacher_cache": teacher_cache.meta["fingerprint"] if teacher_cache else None}
    history = loop.train(model, teacher, processor, *loaders, out_dir=job.out_dir, epochs=job.epochs,
                          grad_accum=job.grad_accum, lr=job.lr, warmup_ratio=job.warmup_ratio,
                          weight_decay=job.weight_decay, max_grad_norm=job.max_grad_norm,
                          temperature=job.temperature, alpha=job.alpha, label=job.label, divergence=job.divergence,
                          beta=job.beta, kd_impl=job.kd_impl, kd_chunk_size=job.kd_chunk_size, cache=teacher_cache,
                          save_every=job.save_every, resume=job.resume, report_to=job.report_to, onpolicy=onpolicy,
                          settings=_settings(job), seed=job.seed, vision_memo_gb=job.vision_memo_gb)
    history["models"] = summary
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(Path(job.out_dir) / "training_history.json", history)  # with the summary train() does not know
    return history


def _settings(job: Job) -> dict:
    """What a resumed run must share with the interrupted one (not resume itself, nor where trackers log). Paths
    inside the run folder are kept relative to it, so a run folder can be moved (or mounted elsewhere) and resumed."""
    run_root = Path(job.out_dir).resolve().parent

    def rel(path):
        if not path:
            return path
        p = Path(path).resolve()
        return str(p.relative_to(run_root)) if p.is_relative_to(run_root) else str(path)

    speed_only = ("resume", "report_to", "out_dir", "vision_memo_gb")  # the memo changes time and memory, not results
    out = {k: v for k, v in dataclasses.asdict(job).items() if k not in speed_only}
    for key in ("student_path", "teacher_path", "data_dir", "cache_dir"):
        out[key] = rel(out[key])
    out["extra_train_dirs"] = [rel(d) for d in out["extra_train_dirs"]]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: Job, *, num_processes: int, config_file: str, timeout: int | None = None) -> dict:
    """Run ``job`` on ``num_processes`` processes with ``accelerate launch`` and return rank 0's history."""
    cfg = Path(config_file)
    cfg = cfg if cfg.exists() else REPO_ROOT / cfg
    if not cfg.exists():
        raise FileNotFoundError(f"accelerate config {config_file} not found (see configs/accelerate/)")
    spec = write_job(job)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes",
           str(num_processes), "--main_process_port", str(_free_port()), "-m", "fslib.training.jobs", str(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the notebook shows the processes' output as it comes
        print(line, end="")
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"training job {job.label!r} failed on {num_processes} processes (exit {proc.returncode}); "
                           f"command: {' '.join(cmd)}")
    return json.loads((Path(job.out_dir) / "training_history.json").read_text())


def write_job(job: Job) -> Path:
    """``<out_dir>/job.json``: what was trained, and what ``accelerate launch -m fslib.training.jobs`` takes."""
    spec = Path(job.out_dir) / "job.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    write_json(spec, dataclasses.asdict(job))
    return spec


def run_job(job: Job, *, num_processes: int = 1, config_file: str = "configs/accelerate/ddp.yaml") -> dict:
    """In this process when ``num_processes`` is 1, else launched (what 02_distill calls)."""
    if num_processes <= 1:
        write_job(job)
        return run(job)
    return launch(job, num_processes=num_processes, config_file=config_file)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", help="JOB.json: the fields of fslib.training.jobs.Job")
    args = ap.parse_args(argv)
    history = run(json.loads(Path(args.job).read_text()))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {history['label']}, best validation loss {history.get('best_val_loss')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
