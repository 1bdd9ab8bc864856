"""A user's dataset through all four stages with params/tiny.yaml's settings: what a new user gets.

The data is real and public, not written here: scikit-learn's copy of the UCI handwritten digits (1,797 8x8 scans,
upscaled to 56x56 RGB), saved as a ``datasets.DatasetDict`` in TRL's messages/images format, as a user would bring it:

- ``train``: ``--labelled`` questions with answers and ``--unlabelled`` without (02's teacher answers those);
- ``validation``: ``--val``; ``test``: the rest (at most ``--test``). No ``ood`` split.
- two question types, named in a ``qtype`` column: "Which digit is this?" (``digit``, 0-9) and "Is this digit even or
  odd?" (``parity``); 03's per-type tables and prior baseline show both.
- ``--train-questions 2`` asks both questions of every training image (more training rows from the same images; the
  validation and test images stay apart), for a run the size of a user's (400 labelled + 2,000 unlabelled).

The params are ``params/tiny.yaml`` with only ``run_name``, ``reports_dir`` and ``data_source`` changed (teacher
cache on, ``n_unlabelled`` 960 left as it is: 02 must not use it for user data). Writes
``benchmarks/results/user_data.json``: every model's test exact match [95% CI] overall and per question type, the
teacher check (validation EM of the teacher, its blind score, the SFT-only student's and the student's start, the
warning text when it fired), 03's student to trust and the KD-vs-SFT verdict, the student 04 published (found by
comparing the published weights with each checkpoint's), each training's epochs, best epoch and validation curve,
and the time of every stage and of every long step of 02.

    .venv/bin/pip install scikit-learn && .venv/bin/python benchmarks/user_data.py     # ~10 min on 2 cores
    .venv/bin/python benchmarks/user_data.py --set teacher_epochs=16 teacher_learning_rate=0.002 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = (("digit", "Which digit is this?", lambda d: str(d)),
             ("parity", "Is this digit even or odd?", lambda d: "even" if d % 2 == 0 else "odd"))


def digits_datasetdict(folder: Path, *, labelled: int, unlabelled: int, val: int, test: int, seed: int = 0,
                       train_questions: int = 1):
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random(seed).shuffle(order)

    def row(i, answer=True, q=None):
        qtype, question, answer_of = QUESTIONS[i % len(QUESTIONS) if q is None else q]
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((56, 56), Image.NEAREST).convert("RGB")
        turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if answer:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer_of(int(digits.target[i]))}]})
        return {"images": [image], "messages": turns, "qtype": qtype}

    if train_questions == 1:
        cut = [labelled, labelled + unlabelled, labelled + unlabelled + val, labelled + unlabelled + val + test]
        splits = {"train": [row(i) for i in order[:cut[0]]] + [row(i, False) for i in order[cut[0]:cut[1]]],
                  "validation": [row(i) for i in order[cut[1]:cut[2]]], "test": [row(i) for i in order[cut[2]:cut[3]]]}
    else:  # validation and test images first, then both questions of every remaining image for train
        held, rest = order[:val + test], order[val + test:]
        pairs = [(i, q) for i in rest for q in range(len(QUESTIONS))]
        random.Random(seed + 1).shuffle(pairs)
        if labelled + unlabelled > len(pairs):
            raise SystemExit(f"{labelled} + {unlabelled} training rows need more than {len(pairs)} (image, question) pairs")
        splits = {"train": [row(i, q=q) for i, q in pairs[:labelled]]
                  + [row(i, False, q) for i, q in pairs[labelled:labelled + unlabelled]],
                  "validation": [row(i) for i in held[:val]], "test": [row(i) for i in held[val:]]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return {k: len(v) for k, v in splits.items()}


def summarise(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {
        "models": {}, "dataset": {"name": f"{run.name}_vqa"}, "environment": {"git_sha": _sha()},
        "teacher_check": json.loads((run / "teacher_check.json").read_text())
        if (run / "teacher_check.json").exists() else None}
    models = {name: {"exact_match": m["exact_match"], "exact_match_ci": m["exact_match_ci"],
                     "blind_exact_match": m.get("blind_exact_match"), "per_type": {
                         t: v["exact_match"] for t, v in m.get("per_type", {}).items()}}
              for name, m in metrics["models"].items() if m.get("variant_of") is None}
    trainings = {}
    for label in ("teacher", "kd_student", "kd_labelled_student", "sft_student"):
        h = run / label / "training_history.json"
        if h.exists():
            h = json.loads(h.read_text())
            steps = [s["seconds"] for s in h["steps"] if s.get("seconds") is not None]
            trainings[label] = {"epochs_run": len(h["epochs"]), "best_epoch": h.get("best_epoch"),
                                "best_val_loss": h.get("best_val_loss"), "stopped_early": h.get("stopped_early"),
                                "val_loss": [round(e["val_loss"], 4) for e in h["epochs"]], "steps": len(h["steps"]),
                                "median_step_seconds": sorted(steps)[len(steps) // 2] if steps else None,
                                "data_seconds": round(sum(s.get("data_seconds") or 0 for s in h["steps"]), 1)}
    stages, steps02 = {}, {}
    for nb in sorted((run / "notebooks").glob("*.ipynb")):
        doc = json.loads(nb.read_text())
        stages[nb.stem] = doc["metadata"]["papermill"].get("duration")
        if nb.stem == "02_distill":  # every cell's time, named by its papermill_description or first line
            for cell in doc["cells"]:
                took = cell.get("metadata", {}).get("papermill", {}).get("duration")
                if cell["cell_type"] == "code" and took and took >= 1:
                    src = "".join(cell["source"])
                    name = src.split("papermill_description=", 1)[1].split()[0] if "papermill_description=" in src \
                        else src.strip().splitlines()[0][:60]
                    steps02[name] = round(took, 1)
    return {"models": models, "teacher_check": metrics.get("teacher_check"), "choice": metrics.get("choice"),
            "published": published(run, metrics) if (run / "hub").exists() else None, "dataset": metrics["dataset"], "trainings": trainings,
            "stage_seconds": stages, "distill_step_seconds": steps02, "git_sha": metrics["environment"]["git_sha"]}


def _sha() -> str:
    import subprocess
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def published(run: Path, metrics: dict) -> str | None:
    """The metrics.json row whose checkpoint holds the weights 04 put in ``hub/`` (compared tensor by tensor)."""
    import torch
    from safetensors.torch import load_file

    hub = load_file(str(run / "hub" / "model.safetensors"))
    trained = json.loads((run / "training.json").read_text())["models"]
    for name, m in trained.items():
        weights = Path(m["path"]) / "model.safetensors"
        if name in metrics["models"] and weights.exists():
            own = load_file(str(weights))
            if own.keys() == hub.keys() and all(torch.equal(own[k], hub[k]) for k in own):
                return name
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelled", type=int, default=400)
    ap.add_argument("--unlabelled", type=int, default=600)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--train-questions", type=int, default=1, choices=(1, 2),
                    help="questions asked of each training image (2: both, for a larger training split)")
    ap.add_argument("--name", default="digits", help="run name under --work")
    ap.add_argument("--collect", action="store_true", help="only re-read the finished run under --work/--name")
    ap.add_argument("--stages", nargs="+", default=None, help="run only these notebooks, e.g. 01_data 02_distill")
    ap.add_argument("--work", default=str(ROOT / "reports" / "user-data-bench"))
    ap.add_argument("--set", nargs="*", default=[], help="extra params as key=value (YAML values), e.g. teacher_epochs=8")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "user_data.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fslib.stages import pipeline

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"{args.name}_vqa"
    if args.collect:
        import datasets
        sizes = {k: len(v) for k, v in datasets.load_from_disk(str(data)).items()}
    else:
        sizes = digits_datasetdict(data, labelled=args.labelled, unlabelled=args.unlabelled, val=args.val,
                                   test=args.test, train_questions=args.train_questions)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    params = {**yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text()), "run_name": args.name,
              "reports_dir": str(work), "data_source": str(data), **extra}
    t0, load = time.time(), os.getloadavg()
    if args.collect:  # the run's own record of when it ran: its stages' durations
        params = yaml.safe_load((work / f"{args.name}.yaml").read_text())
        prior = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        load, seconds = prior.get("load_average_before"), prior.get("seconds")  # not known without the first JSON
    else:
        (work / f"{args.name}.yaml").write_text(yaml.safe_dump(params))
        pipeline.run(work / f"{args.name}.yaml", **({"stages": args.stages} if args.stages else {}))
        seconds = round(time.time() - t0)
    result = {"command": "python benchmarks/user_data.py " + " ".join(argv or sys.argv[1:]), "sizes": sizes,
              "changed_params": {k: params[k] for k in ("data_source", *extra)}, "seconds": seconds,
              "teacher_epochs": params["teacher_epochs"], "load_average_before": [round(x, 2) for x in load] if load else None,
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              **summarise(work / args.name)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("teacher_check", "choice", "published", "distill_step_seconds")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
