"""The offline teacher cache's tail handling: what each choice gives the KD student, against the live teacher.

    make report && .venv/bin/python benchmarks/cache_tail.py     # reads reports/tiny; writes
                                                                  # benchmarks/results/cache_tail.json (~10 min)

The cache keeps the teacher's k largest logits per answer token; the rest of its softened distribution is one tail
bucket (``fslib.engine.kd.topk_kd_loss``). ``teacher_cache_tail: renormalise`` leaves that bucket empty (the teacher
renormalised over its k ids), ``exact`` stores the teacher's log-partition at the distillation temperature and so its
true tail mass. How much mass is at stake depends on the teacher and on T, so this script measures both:

- ``tail_mass``: the finished run's prepared teacher, on its training answer tokens: the share of softmax(z / T)
  outside its top k (cut to the student's vocabulary, as the cache is), at T = 1 and at the run's T;
- ``variants``: 02's KD student on the labelled questions (``kd_labelled_student``: its ``distill_config.json``, so the same
  data, steps, learning rate and loss) trained per seed against the live teacher, the renormalised cache and the
  exact-tail cache, each scored by greedy exact match on ``--probe`` questions of a seed stream disjoint from every
  split (the run's scene settings), with training wall seconds on this machine.

The seeds change the data order (the run's data and the pre-trained student are fixed), so the spread over seeds is
the noise a single comparison carries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fslib.core import config, fsio, provenance
from fslib.engine import collate, generate, losspaths, models
from fslib.evaluation import metrics
from fslib.training import (
    cache,
    jobs,  # noqa: E402
)
from fslib.training.config import DistillConfig
from fslib.world import synth

VARIANTS = ("live", "renormalise", "exact")
SCENE_KEYS = ("image_size", "max_objects", "clutter", "video_fraction", "video_frames")


@torch.no_grad()
def tail_mass(teacher, collator, records: list[dict], *, k: int, vocab: int, temperature: float,
              batch_size: int = 8) -> dict:
    """Share of the teacher's softmax(z / T) over the first ``vocab`` ids that falls outside its top ``k``, per answer
    token of ``records``: mean, median and max."""
    masses = []
    for start in range(0, len(records), batch_size):
        batch = collator(records[start:start + batch_size])
        keep = losspaths.answer_positions(batch["labels"])
        rows = teacher(**batch["inputs"], logits_to_keep=keep).logits[:, :vocab].float()
        probs = torch.softmax(rows / temperature, dim=-1)
        masses.append(1 - probs.topk(min(k, vocab), dim=-1).values.sum(-1))
    m = torch.cat(masses).clamp(min=0)
    return {"temperature": temperature, "tokens": m.numel(), "mean": float(m.mean()), "median": float(m.median()),
            "max": float(m.max())}


def _absolute(cfg: DistillConfig) -> DistillConfig:
    """distill_config.json's paths are relative to the directory 02 ran in (the repository root)."""
    def ab(path):
        return str(ROOT / path) if path and not Path(path).is_absolute() else path

    return cfg.but(model={"path": ab(cfg.model.path)},
                   teacher={"path": ab(cfg.teacher.path), "cache_dir": ab(cfg.teacher.cache_dir)},
                   data={"data_dir": ab(cfg.data.data_dir), "extra_train_dirs": tuple(map(ab, cfg.data.extra_train_dirs))})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "reports" / "tiny"),
                    help="a finished run folder (default reports/tiny)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--probe", type=int, default=600, help="probe questions (default 600)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache_tail.json"))
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    job_path = run / "kd_labelled_student" / "distill_config.json"
    if not job_path.exists():
        raise SystemExit(f"{job_path} not found: run `make report` first (02 writes it when it distils on the "
                         "labelled questions; this benchmark re-trains that student)")
    job = _absolute(DistillConfig.read(job_path))
    if not job.teacher.path:
        raise SystemExit(f"{job_path}: no teacher_path")
    scene = {k: fsio.read_json(run / "data_stats.json")["params"][k] for k in SCENE_KEYS}
    probe = synth.stream_records("cache-tail", args.probe, seed=77, **scene)
    processor = models.load_processor(job.model.path)
    collator = collate.VQACollator(processor, job.data.pixels, max_length=job.data.max_length)
    answer_collator = collate.VQACollator(processor, job.data.pixels, max_length=job.data.max_length, train=False)
    vocab = AutoConfig.from_pretrained(job.model.path).get_text_config().vocab_size
    k = (fsio.read_json(Path(job.teacher.cache_dir) / "meta.json")["k"] if job.teacher.cache_dir
         else config.default_params()["teacher_cache_topk"])  # the run's k, else 02's default
    train_records, val_records = jobs.records(job)
    teacher = models.load_model(job.teacher.path, frozen=True)
    masses = [tail_mass(teacher, collator, train_records, k=k, vocab=vocab, temperature=t)
              for t in sorted({1.0, float(job.loss.temperature)})]
    del teacher
    result = {"variants": {v: {"exact_match": [], "train_s": [], "per_type": []} for v in VARIANTS}}
    with tempfile.TemporaryDirectory(prefix="cache_tail_") as work:
        caches = {}
        for tail in ("renormalise", "exact"):
            caches[tail] = str(Path(work) / f"cache-{tail}")
            cache.ensure(cache.TeacherRef(job.teacher.path), collator, train_records + val_records, caches[tail],
                         k=k, vocab=vocab, batch_size=job.optim.batch_size,
                         temperature=cache.tail_temperature(tail, job.loss.temperature))
        for seed in args.seeds:
            for variant in VARIANTS:
                out_dir = Path(work) / f"{variant}-{seed}"
                t0 = time.perf_counter()
                jobs.run(job.but(out_dir=str(out_dir), teacher={"cache_dir": caches.get(variant)}, optim={"seed": seed},
                                 runtime={"resume": False}))
                seconds = time.perf_counter() - t0
                model = models.load_model(str(out_dir / "best"), frozen=True)
                answers = generate.generate_answers(model, answer_collator, probe, batch_size=32,
                                                    desc=f"{variant} seed {seed}")
                scores = metrics.summarise(answers, probe)
                row = result["variants"][variant]
                row["exact_match"].append(scores["exact_match"])
                row["train_s"].append(seconds)
                row["per_type"].append({t: s["exact_match"] for t, s in scores["per_type"].items()})
                print(f"{variant} seed {seed}: exact match {scores['exact_match']:.3f}, trained in {seconds:.0f} s",
                      flush=True)
    for row in result["variants"].values():
        row["mean"] = statistics.fmean(row["exact_match"])
        row["train_s_mean"] = statistics.fmean(row["train_s"])
    result |= {"tail_mass": {"k": k, "vocab": vocab, "by_temperature": masses}, "seeds": args.seeds,
               "probe": {"stream": "cache-tail", "seed": 77, "questions": args.probe, **scene},
               "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
               "settings": {f: getattr(job, f) for f in ("temperature", "alpha", "divergence", "epochs", "lr",
                                                         "batch_size", "grad_accum")},
               "command": "python benchmarks/cache_tail.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": provenance.environment()}
    fsio.write_json(args.out, result)
    print("; ".join(f"{v} {r['mean']:.3f}" for v, r in result["variants"].items()) + f": {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
