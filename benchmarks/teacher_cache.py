"""Student training speed with the offline teacher cache vs the live teacher, on the embedded default.

    .venv/bin/python benchmarks/teacher_cache.py            # writes benchmarks/results/teacher_cache.json

Two copies of the same student, prepared as 02 prepares it (frozen vision tower, checkpointing and LoRA as its
defaults say), train on the same batches (the 01/02 notebooks' default data settings, micro-batch size, loss and
student epochs, read from their parameter cells), one step each in turn: "live" takes the teacher's distribution from
a forward pass of the frozen teacher, "cached" from its top-k logits in the cache (no teacher loaded). Both steps go
through ``fslib.engine.losspaths.batch_loss`` (the training loop's code), then backward, clipping and an AdamW update. Frozen
vision towers' features are reused across epochs in both (``fslib.engine.visionmemo``: the teacher's and the student's, as
in training), unless ``--vision-memo-gb 0``.

samples_per_s: samples / wall time over all steps but the first (a warm-up), so the first epoch's tower passes count;
``*_median`` and ``*_best`` are per step. Alternating steps makes load from other processes on a shared machine hit
both alike; ``samples_per_cpu_s`` (per second of this process's CPU time) is less sensitive to it still. Data
collation is identical for both and not in these numbers (``data_s_per_sample``). ``cache_build_s`` is the one-off
teacher pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fslib.core import config, fsio, provenance
from fslib.engine import (
    adapters,
    collate,
    losspaths,
    models,
    visionmemo,  # noqa: E402
)
from fslib.engine.losspaths import LossConfig
from fslib.training import cache, sampler
from fslib.world import embedded, synth


def _timed_step(student, opt, batch: dict, p: dict, **source) -> tuple[float, float]:
    """One training step of ``student`` on ``batch`` (the code path of fslib.training.loop); (wall s, process CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = losspaths.batch_loss(student, batch=batch, loss=LossConfig(temperature=p["temperature"], alpha=p["alpha"], divergence=p["divergence"], beta=p["beta"], kd_impl=p["kd_impl"], kd_chunk_size=p["kd_chunk_size"]), device="cpu", **source)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), p["max_grad_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(times: list[tuple[int, float, float]]) -> dict:
    """Throughput over all timed steps, and the median and fastest step's."""
    n, wall, cpu = (sum(t[i] for t in times) for i in range(3))
    per_step = [k / w for k, w, _ in times]
    return {"samples_per_s": n / wall, "samples_per_s_median": statistics.median(per_step),
            "samples_per_s_best": max(per_step), "samples_per_cpu_s": n / cpu, "samples": n, "steps_timed": len(times)}


def _prepare(p: dict, n_train: int, work: Path):
    """The embedded pair, the default synthetic data and the cache (timed): (paths, loader, cache, build seconds)."""
    t_path = embedded.resolve_model(p["teacher_model"], work / "embedded")
    s_path = embedded.resolve_model(p["student_model"], work / "embedded")
    splits = synth.build_synthetic(seed=p["seed"], n_train=n_train, n_val=0, n_test=0, n_ood=0,
                                   image_size=p["image_size"], max_objects=p["max_objects"], clutter=p["clutter"],
                                   video_fraction=p["video_fraction"], video_frames=p["video_frames"])
    pixels = {k: p[k] for k in ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels",
                                "video_total_pixels")}
    col = collate.VQACollator(models.load_processor(s_path), pixels, max_length=p["max_length"])
    loader = sampler.make_loader(splits["train"], col, batch_size=p["batch_size"], shuffle=True, seed=p["seed"])
    vocab = models.load_model(s_path).get_output_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    tc, _ = cache.ensure(cache.TeacherRef(t_path), col, splits["train"], work / "cache",
                         k=p["teacher_cache_topk"], vocab=vocab, batch_size=p["batch_size"],
                         temperature=cache.tail_temperature(p["teacher_cache_tail"], p["temperature"]))
    return (t_path, s_path), loader, tc, time.perf_counter() - t0


def _student(s_path: str, p: dict):
    """The student as 02 trains it: the defaults' frozen vision tower, checkpointing and LoRA choices."""
    lora = {"lora": p["student_lora"], "lora_r": p["lora_r"], "lora_alpha": p["lora_alpha"],
            "lora_dropout": p["lora_dropout"]}
    return adapters.prepare(models.load_model(s_path, dtype=p["student_dtype"]), freeze_vision=p["freeze_vision"],
                           gradient_checkpointing=p["gradient_checkpointing"], **lora)


def _memoise(models_: dict, p: dict) -> dict:
    """As fslib.training.setup does on one process: every frozen tower's features reused (a trainable one's never)."""
    return {name: visionmemo.install(m, int(p["vision_memo_gb"] * 2**30)) for name, m in models_.items()}


def _alternate(paths, loader, tc, p: dict, epochs: int) -> tuple[dict, float, dict]:
    """Per-step (samples, wall, CPU) of both students, one step each on every batch; collation s per sample; the
    vision memos' counts."""
    t_path, s_path = paths
    sources = {"live": {"teacher": models.load_model(t_path, frozen=True), "cache": None},
               "cached": {"teacher": None, "cache": tc}}
    students = {name: _student(s_path, p) for name in sources}
    memos = _memoise({"teacher": sources["live"]["teacher"]} | {f"student ({n})": m for n, m in students.items()}, p)
    opts = {name: torch.optim.AdamW([w for w in m.parameters() if w.requires_grad], lr=p["learning_rate"],
                                    weight_decay=p["weight_decay"]) for name, m in students.items()}
    times, data_s, n_samples = {name: [] for name in sources}, 0.0, 0
    for epoch in range(1, epochs + 1):
        loader.batch_sampler.set_epoch(epoch)
        t_data = time.perf_counter()
        for i, batch in enumerate(loader):
            data_s, n_samples = data_s + time.perf_counter() - t_data, n_samples + len(batch["ids"])
            for name in sources:  # the same batch, one step each, alternating: outside load hits both alike
                t = _timed_step(students[name], opts[name], batch, p, **sources[name])
                if epoch > 1 or i > 0:  # the first step pays one-off costs (allocations, lazy initialisation)
                    times[name].append((len(batch["ids"]), *t))
            t_data = time.perf_counter()
    return times, data_s / n_samples, {name: m.stats() if m else None for name, m in memos.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=64, help="training samples per run (default 64)")
    ap.add_argument("--epochs", type=int, default=None, help="passes over the samples (default: 02's epochs)")
    ap.add_argument("--vision-memo-gb", type=float, default=None,
                    help="reuse of frozen towers' features (default: 02's vision_memo_gb; 0 recomputes them)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_cache.json"))
    args = ap.parse_args(argv)
    p = config.default_params()
    p["epochs"] = p["epochs"] if args.epochs is None else args.epochs
    p["vision_memo_gb"] = p["vision_memo_gb"] if args.vision_memo_gb is None else args.vision_memo_gb
    torch.manual_seed(p["seed"])
    with tempfile.TemporaryDirectory(prefix="teacher_cache_") as work:
        paths, loader, tc, build_s = _prepare(p, args.n_train, Path(work))
        load_before = os.getloadavg()[0]
        times, data_s, memo = _alternate(paths, loader, tc, p, p["epochs"])
    result = {name: _summary(ts) for name, ts in times.items()}
    result["speedup"] = result["cached"]["samples_per_s"] / result["live"]["samples_per_s"]
    result["speedup_cpu_time"] = result["cached"]["samples_per_cpu_s"] / result["live"]["samples_per_cpu_s"]
    result |= {"data_s_per_sample": data_s, "cache_build_s": build_s,  # collation: the same for both, not timed above
               "cache": {"k": tc.k, "rows": tc.meta["rows"], "records": tc.meta["records"]}, "vision_memo": memo,
               "machine_load": {"before": load_before, "after": os.getloadavg()[0]}}
    result["settings"] = {"n_train": args.n_train, "epochs": p["epochs"], "vision_memo_gb": p["vision_memo_gb"],
                          "torch_threads": torch.get_num_threads(), "micro_batches_per_step": 1,
                          **{k: p[k] for k in ("teacher_model", "student_model", "batch_size", "kd_impl",
                                               "divergence", "temperature", "alpha", "teacher_cache_topk",
                                               "teacher_cache_tail", "freeze_vision", "gradient_checkpointing",
                                               "student_lora", "student_dtype", "image_size", "video_fraction",
                                               "video_frames")}}
    result["command"] = "python benchmarks/teacher_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["environment"] = provenance.environment()
    fsio.write_json(args.out, result)
    print(f"live {result['live']['samples_per_s']:.2f} samples/s, cached {result['cached']['samples_per_s']:.2f} "
          f"samples/s: x{result['speedup']:.2f} (per CPU second x{result['speedup_cpu_time']:.2f}); {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
