"""Predict a run's memory per device and its time, before loading anything:

    python -m fslib.plan params/qwen2vl-7b-to-2b.yaml --gpu a100-80gb [--num-gpus N] [--json]

Plans every training 02 would run for PARAMS (the teacher's preparation, the KD student, the baselines) with the
models' real shapes (``fslib.training.plan``), and reports the one that needs the most memory: its components
(summing to its total), whether it fits, time per optimizer step and per epoch, and, when it does not fit, which
parameters to change with the total predicted after each change. ``--json`` prints
``{"total_bytes", "fits", "components", "step_seconds", "epoch_seconds", "advice"}`` plus ``training`` (which one)
and ``trainings`` (all of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GiB = 2**30


def trainings(P: dict, out: Path) -> dict:
    """02's trainings for params ``P`` (``fslib.stages.distill``), with the models' names standing for folders."""
    from fslib.stages import distill

    plan = {}
    teacher = distill.teacher_preparation(P, out, P["teacher_model"])
    if teacher is not None:
        plan["teacher"] = teacher
    cache_dir = str(out / "teacher_cache") if P["teacher_cache"] else None
    plan.update(distill.student_trainings(P, out, student_path=P["student_model"], teacher_path=P["teacher_model"],
                                          cache_dir=cache_dir, extra_train_dirs=[], n_labelled=P.get("n_train", 0)))
    return plan


def params(path: str) -> dict:
    from fslib.core import config

    return {**config.default_params(), **config.load_params(path)}


def plan_run(P: dict, *, gpu: str = "cpu", num_gpus: int | None = None, engine: str | None = None,
             seq_len: int | None = None, answer_tokens: int | None = None, tflops: float | None = None,
             memory_bytes: int | None = None) -> dict:
    """Every training's plan; the top level is the one with the largest total (``training`` names it)."""
    from fslib.training import plan as planner
    from fslib.training.plan import weights, workload

    out = Path(P["reports_dir"]) / P["run_name"]
    n = num_gpus if num_gpus is not None else P["num_processes"]
    eng = engine or weights.engine_of(P["accelerate_config"], n)
    dev = planner.device(gpu, memory_bytes=memory_bytes, tflops=tflops)
    student = planner.arch_of(P["student_model"], out / "embedded")  # the family's pixels per visual token
    work = workload.from_params(P, stats=workload.read_stats(out), answer_tokens=answer_tokens, seq_len=seq_len,
                                factor=student.patch * student.merge)
    plans = {label: planner.plan(planner.job_for(cfg, work, dev, engine=eng, processes=n, search=out / "embedded"))
             for label, cfg in trainings(P, out).items()}
    label = max(plans, key=lambda k: plans[k]["total_bytes"])
    return {**plans[label], "training": label, "trainings": plans}


def _gib(b: int | float) -> str:
    return f"{b / GiB:.2f} GiB"


def report(p: dict) -> str:
    """The plan as text: the binding training's components, fit, time and advice; one line per other training."""
    d = p["device"]
    lines = [f"{p['training']} on {d['name']} ({_gib(d['memory_bytes'])}, usable {_gib(d['usable_bytes'])}), "
             f"engine {p['engine']} x {p['processes']}: peak {_gib(p['total_bytes'])} in {p['peak_phase']} -> "
             + ("fits" if p["fits"] else "DOES NOT FIT"), f"  workload: {p['workload']['sources']}"]
    lines += [f"  {name:<20} {_gib(b):>12}" for name, b in p["components"].items() if b]
    if p["step_seconds"] is not None:
        lines.append(f"  time: {p['step_seconds']:.2f} s per optimizer step, {p['epoch_seconds'] / 60:.1f} min for the "
                     f"first epoch ({p['steps_per_epoch']} steps), {p['later_epoch_seconds'] / 60:.1f} min later")
    lines += [f"  note: {x}" for x in p["notes"]]
    for a in p["advice"]:
        change = ", ".join(f"{k}={v}" for k, v in a["params"].items())
        lines.append(f"  {'combined' if a.get('combined') else 'advice'}: {change} -> {_gib(a['total_bytes'])}"
                     + (" (fits)" if a["fits"] else ""))
    lines += [f"  other training {k}: {_gib(v['total_bytes'])} ({'fits' if v['fits'] else 'does not fit'})"
              for k, v in p["trainings"].items() if k != p["training"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", help="a params YAML (params/*.yaml)")
    ap.add_argument("--gpu", default="cpu", help="a100-40gb, a100-80gb, h100-80gb, h200, l40s, rtx4090-24gb or cpu")
    ap.add_argument("--num-gpus", type=int, default=None, help="processes (default: the params' num_processes)")
    ap.add_argument("--engine", choices=("none", "ddp", "fsdp", "zero2", "zero3"), default=None,
                    help="default: from the params' accelerate_config")
    ap.add_argument("--seq-len", type=int, default=None, help="longest sample in tokens (default: from the params)")
    ap.add_argument("--answer-tokens", type=int, default=None, help="answer tokens per sample (default 8)")
    ap.add_argument("--tflops", type=float, default=None, help="the device's peak, where it has no stated one")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)
    p = plan_run(params(args.params), gpu=args.gpu, num_gpus=args.num_gpus, engine=args.engine, seq_len=args.seq_len,
                 answer_tokens=args.answer_tokens, tflops=args.tflops)
    if args.json:
        from fslib.training.plan import summary

        print(json.dumps({**summary(p), "training": p["training"], "peak_phase": p["peak_phase"],
                          "trainings": {k: summary(v) for k, v in p["trainings"].items()}}, indent=2))
    else:
        print(report(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
