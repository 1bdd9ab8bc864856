"""Does distillation beat plain fine-tuning? The tiny default over several seeds, KD and SFT given equal steps.

    .venv/bin/python benchmarks/kd_vs_sft.py                      # seeds 0 1 2, params/tiny.yaml (12 min, 2 cores)
    .venv/bin/python benchmarks/kd_vs_sft.py --seeds 0 --params params/tiny.yaml
    .venv/bin/python benchmarks/kd_vs_sft.py --collect                # re-read the runs of an earlier full run
    .venv/bin/python benchmarks/kd_vs_sft.py --build-pair /tmp/pair-s1   # also a second build (make embedded
                                                  # EMBEDDED_ARGS="--out /tmp/pair-s1 --build-seed 1"), same protocol

For each seed it runs 01, 02 and 03 (papermill, exactly as ``make report``) into ``reports/kd-vs-sft-seed<N>`` with
``seed: N`` (a different synthetic world: train, val, test and the unlabelled pool all change), then reads each run's
``metrics.json``: the test split's exact match of the teacher, the KD student (labelled + teacher-answered questions,
the same optimizer steps as SFT), the KD student on labelled questions only, the SFT-only student and the student's
starting weights, overall and per question type. It writes ``benchmarks/results/kd_vs_sft.json`` with every seed, the
means and the targets of the embedded default (each with whether it is met):

- the teacher's test EM >= 0.80, and >= 0.60 on every question type; its blind control <= the prior baseline + 0.05;
- KD - SFT >= 0.10 EM, with non-overlapping 95% CIs on at least 2 of the 3 seeds; KD >= 0.9 x the teacher's EM;
- the student's starting weights <= 0.45 EM;
- the KD student decodes >= 1.5x faster than the teacher (03's batch-1 median per token; the median over seeds);
- for every ``--build-pair`` (another build of the pair, ``FIRSTSIGHT_PAIR``), KD - SFT >= 0.07 on the same seeds,
  recorded under ``builds`` with its ``build_seed``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fslib.world import embedded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"teacher": "teacher", "kd": "student", "kd_labelled": "kd_labelled_student", "sft": "sft_student",
        "base": "base_student"}


def run_seed(params_file: Path, seed: int, reports_dir: str, *, collect: bool = False, pair: str | None = None,
             build_seed: int = 0) -> dict:
    params = yaml.safe_load(params_file.read_text()) or {}
    run_name = f"kd-vs-sft-seed{seed}" if pair is None else f"kd-vs-sft-build{build_seed}-seed{seed}"
    params.update(seed=seed, run_name=run_name, reports_dir=reports_dir)
    t0 = time.time()
    if not collect:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(params, f)
        try:
            subprocess.run([sys.executable, "-m", "fslib.stages.pipeline", f.name, "--stages", "01_data", "02_distill",
                            "03_evaluate"], cwd=ROOT, check=True, env=_env(pair))
        finally:
            Path(f.name).unlink()
    return read_run(ROOT / reports_dir / run_name, seed, seconds=None if collect else round(time.time() - t0, 1))


def _env(pair: str | None) -> dict:
    import os

    env = dict(os.environ)
    if pair is not None:
        env[embedded.PAIR_ENV] = str(Path(pair).resolve())
    else:
        env.pop(embedded.PAIR_ENV, None)  # the shipped pair, embedded/
    return env


def read_run(run_dir: Path, seed: int, *, seconds: float | None) -> dict:
    """One seed's row: overall and per-question-type exact match of each model, from the run's ``metrics.json``."""
    path = run_dir / "metrics.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run the seed first (without --collect)")
    metrics = json.loads(path.read_text())
    models = metrics["models"]
    row = {k: models.get(name, {}).get("exact_match") for k, name in ROWS.items()}
    ci = {k: models.get(name, {}).get("exact_match_ci") for k, name in ROWS.items()}
    row["teacher_blind"] = models.get("teacher", {}).get("blind_exact_match")
    prior = ((metrics.get("blind") or {}).get("prior_baseline") or {}).get("exact_match")
    per_type = {}
    for k, name in ROWS.items():
        for qtype, v in (models.get(name, {}).get("per_type") or {}).items():
            per_type.setdefault(qtype, {})[k] = v["exact_match"]
    run = str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)
    decode = {k: models.get(name, {}).get("decode_s_per_token") for k, name in ROWS.items()}
    return {"seed": seed, "run": run, "split": metrics["split"], "n_eval": metrics["n_eval"],
            "decode_s_per_token": decode, "exact_match": row, "exact_match_ci": ci, "prior_baseline": prior,
            "per_type": per_type,
            "seconds": seconds}


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _gap(runs: list[dict]) -> float | None:
    kd, sft = mean([r["exact_match"]["kd"] for r in runs]), mean([r["exact_match"]["sft"] for r in runs])
    return kd - sft if None not in (kd, sft) else None


def _separated(run: dict) -> bool:
    """The KD student's 95% CI lies wholly above the SFT-only student's."""
    kd, sft = run["exact_match_ci"].get("kd"), run["exact_match_ci"].get("sft")
    return bool(kd and sft and kd[0] > sft[1])


def _speedup(runs: list[dict]) -> float | None:
    """The teacher's decode time per token over the KD student's (03's batch-1 median), the median over seeds."""
    import statistics

    ratios = [r["decode_s_per_token"]["teacher"] / r["decode_s_per_token"]["kd"] for r in runs
              if (r.get("decode_s_per_token") or {}).get("teacher") and (r.get("decode_s_per_token") or {}).get("kd")]
    return statistics.median(ratios) if ratios else None


def targets(runs: list[dict], means: dict, per_type: dict, builds: list[dict]) -> dict:
    """Every target of the embedded default, each as ``{"value", "target", "met"}`` (see the module docstring)."""
    def row(value, target, op):
        return {"value": value, "target": target,
                "met": None if value is None else bool(value >= target if op == ">=" else value <= target)}
    kd, sft, teacher = means["kd"], means["sft"], means["teacher"]
    priors = [r.get("prior_baseline") for r in runs]
    prior = mean(priors)
    out = {
        "teacher_exact_match": row(teacher, 0.80, ">="),
        "teacher_worst_type": row(min((v["teacher"] for v in per_type.values() if v["teacher"] is not None),
                                      default=None), 0.60, ">="),
        "teacher_blind_minus_prior": row(means["teacher_blind"] - prior if None not in (means["teacher_blind"], prior)
                                         else None, 0.05, "<="),
        "kd_minus_sft": row(_gap(runs), 0.10, ">="),
        "seeds_with_separated_cis": row(sum(_separated(r) for r in runs), min(2, len(runs)), ">="),
        "kd_over_teacher": row(kd / teacher if kd is not None and teacher else None, 0.9, ">="),
        "base_exact_match": row(means["base"], 0.45, "<="),
        "kd_decode_speedup": row(_speedup(runs), 1.5, ">="),
        "kd_labelled_minus_sft": {"value": means["kd_labelled"] - sft if None not in (means["kd_labelled"], sft)
                                  else None, "target": None, "met": None},
    }
    for b in builds:
        out[f"build{b['build_seed']}_kd_minus_sft"] = row(b["kd_minus_sft"], 0.07, ">=")
    return out


def _runs(args, seeds: list[int], *, pair: str | None = None, build_seed: int = 0) -> list[dict]:
    go = lambda s: run_seed(ROOT / args.params, s, args.reports_dir, collect=args.collect,  # noqa: E731
                            pair=pair, build_seed=build_seed)
    if args.jobs <= 1 or args.collect:
        return [go(s) for s in seeds]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:  # each seed is its own pipeline process
        return list(pool.map(go, seeds))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reports-dir", default="reports")
    ap.add_argument("--out", default="benchmarks/results/kd_vs_sft.json")
    ap.add_argument("--build-pair", action="append", default=[], metavar="DIR",
                    help="another build of the embedded pair (python -m fslib.world.build --out DIR --build-seed N): "
                         "the same seeds are run on it and its KD - SFT recorded under 'builds'")
    ap.add_argument("--jobs", type=int, default=1, help="seed runs at a time (each a pipeline process)")
    ap.add_argument("--collect", action="store_true",
                    help="read the seed runs already under --reports-dir (from an earlier full run of this script) "
                         "instead of running them again; their run time is not known then")
    args = ap.parse_args(argv)
    runs = _runs(args, args.seeds)
    shipped = ROOT / "embedded" / embedded.RECIPE_FILE
    builds = [{"build_seed": json.loads(shipped.read_text())["build_seed"] if shipped.exists() else None,
               "pair": "embedded", "kd_minus_sft": _gap(runs), "shipped": True}]
    for pair in args.build_pair:
        bs = embedded.check_pair(pair)["build_seed"]
        other = _runs(args, args.seeds, pair=pair, build_seed=bs)
        builds.append({"build_seed": bs, "pair": pair, "kd_minus_sft": _gap(other), "shipped": False,
                       "runs": other})
    out = ROOT / args.out
    command = "python benchmarks/kd_vs_sft.py " + " ".join(argv or sys.argv[1:])
    ran_by = command
    previous = json.loads(out.read_text()) if args.collect and out.exists() else {}
    if previous.get("params") == args.params and previous.get("seeds") == args.seeds:
        # the same runs, measured by a full run: keep its command and run times
        ran_by = previous.get("environment", {}).get("command", command)
        before = {r["run"]: r.get("seconds") for r in previous.get("runs", [])}
        for r in runs:
            r["seconds"] = before.get(r["run"])
    means = {k: mean([r["exact_match"][k] for r in runs]) for k in [*ROWS, "teacher_blind"]}
    qtypes = sorted({t for r in runs for t in r["per_type"]})
    per_type = {t: {k: mean([r["per_type"].get(t, {}).get(k) for r in runs]) for k in ROWS} for t in qtypes}
    result = {
        "protocol": "test-split exact match per seed, read from each run's metrics.json (01-03 as make report); both "
                    "students start from the same weights, see the same labelled questions and take the same number "
                    "of optimizer steps; the KD student also sees the teacher's answers to unlabelled questions",
        "params": args.params, "seeds": args.seeds, "runs": runs, "mean_exact_match": means,
        "mean_per_type": per_type, "builds": builds,
        "targets": targets(runs, means, per_type, [b for b in builds if not b["shipped"]]),
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "command": ran_by, **({"collected_by": command} if args.collect else {})},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"mean_exact_match": means, "targets": result["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
