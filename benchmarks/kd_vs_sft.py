"""Does distillation beat plain fine-tuning? The tiny default over several seeds, KD and SFT given equal steps.

    .venv/bin/python benchmarks/kd_vs_sft.py                      # seeds 0 1 2, params/tiny.yaml (12 min, 2 cores)
    .venv/bin/python benchmarks/kd_vs_sft.py --seeds 0 --params params/tiny.yaml
    .venv/bin/python benchmarks/kd_vs_sft.py --collect                # re-read the runs of an earlier full run

For each seed it runs 01, 02 and 03 (papermill, exactly as ``make report``) into ``reports/kd-vs-sft-seed<N>`` with
``seed: N`` (a different synthetic world: train, val, test and the unlabelled pool all change), then reads each run's
``metrics.json``: the test split's exact match of the teacher, the KD student (labelled + teacher-answered questions,
the same optimizer steps as SFT), the KD student on labelled questions only, the SFT-only student and the student's
starting weights, overall and per question type. It writes ``benchmarks/results/kd_vs_sft.json`` with every seed, the
means and the two targets:
KD - SFT >= 0.03 exact match, and KD >= 0.9 x teacher.
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

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"teacher": "teacher", "kd": "student", "kd_labelled": "kd_labelled_student", "sft": "sft_student",
        "base": "base_student"}


def run_seed(params_file: Path, seed: int, reports_dir: str, *, collect: bool = False) -> dict:
    params = yaml.safe_load(params_file.read_text()) or {}
    run_name = f"kd-vs-sft-seed{seed}"
    params.update(seed=seed, run_name=run_name, reports_dir=reports_dir)
    t0 = time.time()
    if not collect:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(params, f)
        try:
            subprocess.run([sys.executable, "-m", "fslib.stages.pipeline", f.name, "--stages", "01_data", "02_distill",
                            "03_evaluate"], cwd=ROOT, check=True)
        finally:
            Path(f.name).unlink()
    return read_run(ROOT / reports_dir / run_name, seed, seconds=None if collect else round(time.time() - t0, 1))


def read_run(run_dir: Path, seed: int, *, seconds: float | None) -> dict:
    """One seed's row: overall and per-question-type exact match of each model, from the run's ``metrics.json``."""
    path = run_dir / "metrics.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run the seed first (without --collect)")
    metrics = json.loads(path.read_text())
    models = metrics["models"]
    row = {k: models.get(name, {}).get("exact_match") for k, name in ROWS.items()}
    row["teacher_blind"] = models.get("teacher", {}).get("blind_exact_match")
    per_type = {}
    for k, name in ROWS.items():
        for qtype, v in (models.get(name, {}).get("per_type") or {}).items():
            per_type.setdefault(qtype, {})[k] = v["exact_match"]
    run = str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir)
    return {"seed": seed, "run": run, "split": metrics["split"], "n_eval": metrics["n_eval"],
            "exact_match": row, "per_type": per_type, "seconds": seconds}


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reports-dir", default="reports")
    ap.add_argument("--out", default="benchmarks/results/kd_vs_sft.json")
    ap.add_argument("--collect", action="store_true",
                    help="read the seed runs already under --reports-dir (from an earlier full run of this script) "
                         "instead of running them again; their run time is not known then")
    args = ap.parse_args(argv)
    runs = [run_seed(ROOT / args.params, s, args.reports_dir, collect=args.collect) for s in args.seeds]
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
    kd, sft, teacher = means["kd"], means["sft"], means["teacher"]
    result = {
        "protocol": "test-split exact match per seed, read from each run's metrics.json (01-03 as make report); both "
                    "students start from the same weights, see the same labelled questions and take the same number "
                    "of optimizer steps; the KD student also sees the teacher's answers to unlabelled questions",
        "params": args.params, "seeds": args.seeds, "runs": runs, "mean_exact_match": means,
        "mean_per_type": per_type,
        "targets": {"kd_minus_sft": kd - sft if None not in (kd, sft) else None, "kd_minus_sft_target": 0.03,
                    "kd_over_teacher": kd / teacher if kd is not None and teacher else None,
                    "kd_over_teacher_target": 0.9,
                    "kd_labelled_minus_sft": (means["kd_labelled"] - sft
                                              if None not in (means["kd_labelled"], sft) else None)},
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "command": ran_by, **({"collected_by": command} if args.collect else {})},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"mean_exact_match": means, "targets": result["targets"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
