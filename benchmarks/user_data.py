"""A user's dataset through all four stages with params/tiny.yaml's settings: what a new user gets.

The data is real and public, not written here: scikit-learn's copy of the UCI handwritten digits (1,797 8x8 scans,
upscaled to 56x56 RGB), saved as a ``datasets.DatasetDict`` in TRL's messages/images format, as a user would bring it:

- ``train``: ``--labelled`` questions with answers and ``--unlabelled`` without (02's teacher answers those);
- ``validation``: ``--val``; ``test``: the rest (at most ``--test``). No ``ood`` split.
- two question types: "Which digit is this?" (0-9) and "Is this digit even or odd?".

The params are ``params/tiny.yaml`` with only ``run_name``, ``reports_dir`` and ``data_source`` changed (teacher
cache on, ``n_unlabelled`` 960 left as it is: 02 must not use it for user data). Writes
``benchmarks/results/user_data.json``: every model's test exact match [95% CI], the teacher check (validation EM,
blind, the student's start, the warning text when it fired), each training's epochs and best epoch, stage times.

    .venv/bin/pip install scikit-learn && .venv/bin/python benchmarks/user_data.py     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = (("digit", "Which digit is this?", lambda d: str(d)),
             ("parity", "Is this digit even or odd?", lambda d: "even" if d % 2 == 0 else "odd"))


def digits_datasetdict(folder: Path, *, labelled: int, unlabelled: int, val: int, test: int, seed: int = 0):
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random(seed).shuffle(order)

    def row(i, answer=True):
        qtype, question, answer_of = QUESTIONS[i % len(QUESTIONS)]
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((56, 56), Image.NEAREST).convert("RGB")
        turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if answer:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": answer_of(int(digits.target[i]))}]})
        return {"images": [image], "messages": turns}

    cut = [labelled, labelled + unlabelled, labelled + unlabelled + val, labelled + unlabelled + val + test]
    splits = {"train": [row(i) for i in order[:cut[0]]] + [row(i, False) for i in order[cut[0]:cut[1]]],
              "validation": [row(i) for i in order[cut[1]:cut[2]]], "test": [row(i) for i in order[cut[2]:cut[3]]]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return {k: len(v) for k, v in splits.items()}


def summarise(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    models = {name: {"exact_match": m["exact_match"], "exact_match_ci": m["exact_match_ci"],
                     "blind_exact_match": m.get("blind_exact_match"), "per_type": {
                         t: v["exact_match"] for t, v in m.get("per_type", {}).items()}}
              for name, m in metrics["models"].items() if m.get("variant_of") is None}
    trainings = {}
    for label in ("teacher", "kd_student", "kd_labelled_student", "sft_student"):
        h = run / label / "training_history.json"
        if h.exists():
            h = json.loads(h.read_text())
            trainings[label] = {"epochs_run": len(h["epochs"]), "best_epoch": h.get("best_epoch"),
                                "best_val_loss": h.get("best_val_loss"), "stopped_early": h.get("stopped_early")}
    stages = {}
    for nb in sorted((run / "notebooks").glob("*.ipynb")):
        stages[nb.stem] = json.loads(nb.read_text())["metadata"]["papermill"].get("duration")
    return {"models": models, "teacher_check": metrics.get("teacher_check"), "dataset": metrics["dataset"],
            "trainings": trainings, "stage_seconds": stages, "git_sha": metrics["environment"]["git_sha"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelled", type=int, default=400)
    ap.add_argument("--unlabelled", type=int, default=600)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--work", default=str(ROOT / "reports" / "user-data-bench"))
    ap.add_argument("--set", nargs="*", default=[], help="extra params as key=value (YAML values), e.g. teacher_epochs=8")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "user_data.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fslib.stages import pipeline

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = digits_datasetdict(work / "digits_vqa", labelled=args.labelled, unlabelled=args.unlabelled, val=args.val,
                               test=args.test)
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    params = {**yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text()), "run_name": "digits",
              "reports_dir": str(work), "data_source": str(work / "digits_vqa"), **extra}
    (work / "digits.yaml").write_text(yaml.safe_dump(params))
    t0 = time.time()
    pipeline.run(work / "digits.yaml")
    result = {"command": "python benchmarks/user_data.py " + " ".join(argv or sys.argv[1:]), "sizes": sizes,
              "changed_params": {k: params[k] for k in ("data_source", *extra)}, "seconds": round(time.time() - t0),
              **summarise(work / "digits")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("models", "teacher_check")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
