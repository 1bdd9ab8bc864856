"""One training as a script, so that it can run on several processes. 02_distill runs a training in its own
process when ``num_processes`` is 1, and otherwise launches::

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m fslib.training.jobs \
        <run>/<label>/distill_config.json
    torchrun --standalone --nproc_per_node 2 -m fslib.training.jobs <run>/<label>/distill_config.json

``distill_config.json`` is the training's whole ``DistillConfig``. Every process loads the models itself (the teacher
before the accelerator exists, so that no ZeRO-3 context partitions it: it stays a full, frozen copy per process) and
reads the data from the run folder; rank 0 writes ``<out_dir>/training_history.json``, which the notebook then reads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from fslib.core.fsio import REPO_ROOT, write_json
from fslib.data import store
from fslib.engine import adapters, collate, models
from fslib.training import cache, loop, sampler
from fslib.training.config import DistillConfig
from fslib.training.seqkd import split_labelled


def records(cfg: DistillConfig) -> tuple[list[dict], list[dict]]:
    dataset = store.load_dataset_dir(cfg.data.data_dir)
    train, _ = split_labelled(store.records_from_dataset(dataset["train"]))
    for extra in cfg.data.extra_train_dirs:
        train += store.records_from_dataset(store.load_dataset_dir(extra)["train"])
    val, _ = split_labelled(store.records_from_dataset(dataset["val"]))
    return train, val


def _models(cfg: DistillConfig):
    t, m = cfg.teacher, cfg.model
    teacher = None
    if t.path and not t.cache_dir and cfg.uses_teacher:
        teacher = models.load_model(t.path, dtype=t.dtype, quantization=t.quantization, device_map=t.device_map or None,
                                    frozen=True, trust_remote_code=m.trust_remote_code)
    model = models.load_model(m.path, dtype=m.dtype, trust_remote_code=m.trust_remote_code)
    model = adapters.prepare(model, lora=m.lora, lora_r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                             freeze_vision=m.freeze_vision, gradient_checkpointing=m.gradient_checkpointing)
    return model, teacher


def run(cfg: DistillConfig | dict) -> dict:
    """Run the training ``cfg`` in this process (one rank of a launched group, or the notebook's own process)."""
    import torch

    cfg = DistillConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    torch.manual_seed(cfg.optim.seed)  # the same LoRA initialisation on every process
    processor = models.load_processor(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    collator = collate.VQACollator(processor, cfg.data.pixels, max_length=cfg.data.max_length)
    train_records, val_records = records(cfg)
    loaders = [sampler.make_loader(recs, collator, batch_size=cfg.optim.batch_size, shuffle=shuffle,
                                   seed=cfg.optim.seed, samples_per_epoch=per_epoch)
               for recs, shuffle, per_epoch in ((train_records, True, cfg.data.samples_per_epoch),
                                                (val_records, False, None))]
    model, teacher = _models(cfg)
    teacher_cache = cache.TeacherCache(cfg.teacher.cache_dir) if cfg.teacher.cache_dir and cfg.uses_teacher else None
    summary = {"student": {**models.describe(model), **adapters.trainable_counts(model)},
               "teacher": models.describe(teacher) if teacher is not None else None,
               "teacher_cache": teacher_cache.meta["fingerprint"] if teacher_cache else None}
    history = loop.train(model, teacher, processor, *loaders, cfg, cache=teacher_cache,
                         onpolicy_collator=collator if cfg.onpolicy.onpolicy_lambda > 0 else None)
    history["models"] = summary
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(Path(cfg.out_dir) / "training_history.json", history)  # with the summary train() does not know
    return history


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: DistillConfig, *, num_processes: int, config_file: str, timeout: int | None = None,
           entry: tuple[str, ...] = ("-m", "fslib.training.jobs")) -> dict:
    """Run the training ``cfg`` on ``num_processes`` processes with ``accelerate launch``; return rank 0's history.
    ``entry`` is what every process runs, given the config's path (a test passes a script that wraps ``main``)."""
    engine = Path(config_file)
    engine = engine if engine.exists() else REPO_ROOT / engine
    if not engine.exists():
        raise FileNotFoundError(f"accelerate config {config_file} not found (see configs/accelerate/)")
    spec = cfg.write()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(engine), "--num_processes",
           str(num_processes), "--main_process_port", str(_free_port()), *entry, str(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the notebook shows the processes' output as it comes
        print(line, end="")
    if proc.wait(timeout=timeout) != 0:
        raise RuntimeError(f"training {cfg.label!r} failed on {num_processes} processes (exit {proc.returncode}); "
                           f"command: {' '.join(cmd)}")
    return json.loads((Path(cfg.out_dir) / "training_history.json").read_text())


def run_job(cfg: DistillConfig, *, num_processes: int = 1, config_file: str = "configs/accelerate/ddp.yaml") -> dict:
    """In this process when ``num_processes`` is 1, else launched (what 02_distill calls). Either way the config is
    written whole to ``<out_dir>/distill_config.json`` first."""
    if num_processes <= 1:
        cfg.write()
        return run(cfg)
    return launch(cfg, num_processes=num_processes, config_file=config_file)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="<out_dir>/distill_config.json: a fslib.training.config.DistillConfig")
    args = ap.parse_args(argv)
    history = run(DistillConfig.read(args.config))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {history['label']}, best validation loss {history.get('best_val_loss')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
