"""Student training speed with the offline teacher cache vs the live teacher, on the embedded default.

    .venv/bin/python benchmarks/teacher_cache.py            # writes benchmarks/results/teacher_cache.json

Two copies of the same student train on the same batches (the 01/02 notebooks' default data settings, micro-batch
size and loss, read from their parameter cells), one step each in turn: "live" takes the teacher's distribution from
a forward pass of the frozen teacher, "cached" from its top-k logits in the cache (no teacher loaded). Both steps go
through ``fslib.forward.batch_loss`` (the training loop's code), then backward and an AdamW update.

samples_per_s: micro-batch size / wall time of a step, median over the timed steps (the first is a warm-up);
``*_best`` is the fastest step. Alternating steps makes load from other processes on a shared machine hit both
alike; ``samples_per_cpu_s`` (per second of this process's CPU time) is less sensitive to it still. Data collation is
identical for both and not in these numbers (``data_s_per_sample``). ``cache_build_s`` is the one-off teacher pass.
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

from fslib import cache, collate, config, forward, models, synth, train  # noqa: E402


def _defaults() -> dict:
    """The notebooks' parameter defaults (papermill reports them as source text)."""
    import ast

    return {k: ast.literal_eval(v["default"]) for k, v in config.declared_params().items()}


def _timed_step(student, opt, batch: dict, p: dict, **source) -> tuple[float, float]:
    """One training step of ``student`` on ``batch`` (the code path of fslib.train); (wall s, process CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = forward.batch_loss(student, batch=batch, temperature=p["temperature"], alpha=p["alpha"], device="cpu",
                             divergence=p["divergence"], beta=p["beta"], kd_impl=p["kd_impl"], **source)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(times: list[tuple[float, float]], batch_size: int) -> dict:
    """Median over the timed steps (robust to other work on a shared machine), and the fastest step."""
    wall = [batch_size / w for w, _ in times]
    cpu = [batch_size / c for _, c in times]
    return {"samples_per_s": statistics.median(wall), "samples_per_s_best": max(wall),
            "samples_per_cpu_s": statistics.median(cpu), "steps_timed": len(times)}


def _prepare(p: dict, n_train: int, work: Path):
    """The embedded pair, the default synthetic data and the cache (timed): (paths, loader, cache, build seconds)."""
    t_path = models.resolve_model(p["teacher_model"], work / "embedded")
    s_path = models.resolve_model(p["student_model"], work / "embedded")
    splits = synth.build_synthetic(seed=p["seed"], n_train=n_train, n_val=0, n_test=0, n_ood=0,
                                   image_size=p["image_size"], max_objects=p["max_objects"], clutter=p["clutter"],
                                   video_fraction=p["video_fraction"], video_frames=p["video_frames"])
    pixels = {k: p[k] for k in ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels",
                                "video_total_pixels")}
    col = collate.VQACollator(models.load_processor(s_path), pixels, max_length=p["max_length"])
    loader = train.make_loader(splits["train"], col, batch_size=p["batch_size"], shuffle=True, seed=p["seed"])
    vocab = models.load_model(s_path).get_output_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    tc, _ = cache.ensure(cache.TeacherRef(t_path), col, splits["train"], work / "cache",
                         k=p["teacher_cache_topk"], vocab=vocab, batch_size=p["batch_size"])
    return (t_path, s_path), loader, tc, time.perf_counter() - t0


def _alternate(paths, loader, tc, p: dict, epochs: int) -> tuple[dict, float]:
    """Per-step (wall, CPU) times of both students, one step each on every batch; and collation s per sample."""
    t_path, s_path = paths
    sources = {"live": {"teacher": models.load_model(t_path, frozen=True), "cache": None},
               "cached": {"teacher": None, "cache": tc}}
    students = {name: models.load_model(s_path) for name in sources}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=p["learning_rate"]) for name, m in students.items()}
    times, data_s, n_samples = {name: [] for name in sources}, 0.0, 0
    for epoch in range(1, epochs + 1):
        loader.batch_sampler.set_epoch(epoch)
        t_data = time.perf_counter()
        for i, batch in enumerate(loader):
            data_s, n_samples = data_s + time.perf_counter() - t_data, n_samples + len(batch["ids"])
            for name in sources:  # the same batch, one step each, alternating: outside load hits both alike
                t = _timed_step(students[name], opts[name], batch, p, **sources[name])
                if epoch > 1 or i > 0:  # the first step pays one-off costs (allocations, lazy initialisation)
                    times[name].append(t)
            t_data = time.perf_counter()
    return times, data_s / n_samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=64, help="training samples per run (default 64)")
    ap.add_argument("--epochs", type=int, default=2, help="passes over the samples (default 2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_cache.json"))
    args = ap.parse_args(argv)
    p = _defaults()
    torch.manual_seed(p["seed"])
    with tempfile.TemporaryDirectory(prefix="teacher_cache_") as work:
        paths, loader, tc, build_s = _prepare(p, args.n_train, Path(work))
        load_before = os.getloadavg()[0]
        times, data_s = _alternate(paths, loader, tc, p, args.epochs)
    result = {name: _summary(ts, p["batch_size"]) for name, ts in times.items()}
    result["speedup"] = result["cached"]["samples_per_s"] / result["live"]["samples_per_s"]
    result["speedup_cpu_time"] = result["cached"]["samples_per_cpu_s"] / result["live"]["samples_per_cpu_s"]
    result |= {"data_s_per_sample": data_s, "cache_build_s": build_s,  # collation: the same for both, not timed above
               "cache": {"k": tc.k, "rows": tc.meta["rows"], "records": tc.meta["records"]},
               "machine_load": {"before": load_before, "after": os.getloadavg()[0]}}
    result["settings"] = {"n_train": args.n_train, "epochs": args.epochs, "torch_threads": torch.get_num_threads(),
                          "micro_batches_per_step": 1,
                          **{k: p[k] for k in ("teacher_model", "student_model", "batch_size", "kd_impl",
                                               "divergence", "temperature", "alpha", "teacher_cache_topk",
                                               "image_size", "video_fraction", "video_frames")}}
    result["command"] = "python benchmarks/teacher_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["environment"] = config.environment()
    config.write_json(args.out, result)
    print(f"live {result['live']['samples_per_s']:.2f} samples/s, cached {result['cached']['samples_per_s']:.2f} "
          f"samples/s: x{result['speedup']:.2f} (per CPU second x{result['speedup_cpu_time']:.2f}); {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
