"""The planner on every new family's params file and every named GPU (predicted, not measured): what README's
"Other Qwen-VL pairs" section shows (``make readme`` reads the JSON; ``fslib.reporting.familyblock``).

    python benchmarks/family_plans.py      # writes benchmarks/results/family_plans.json (about a minute)

Each row is ``python -m fslib.plan PARAMS --gpu GPU --num-gpus 1``'s largest training: its predicted peak, the phase
it is in, whether it fits, time per step and per epoch at the planner's assumed 40% of the dense bf16 peak, and the
least change that fits where it does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = ("params/qwen2.5vl-7b-to-3b.yaml", "params/qwen3vl-8b-to-2b.yaml", "params/qwen3.5-9b-to-4b.yaml")
GPUS = ("h200", "h100-80gb", "a100-80gb", "l40s", "a100-40gb", "rtx4090-24gb")
OUT = ROOT / "benchmarks" / "results" / "family_plans.json"


def row(p: dict) -> dict:
    fitting = [a for a in p["advice"] if a["fits"]]
    one_gpu = [a for a in fitting if "num_processes" not in a["params"]]
    first = max(one_gpu, key=lambda a: a["total_bytes"]) if one_gpu else (fitting[0] if fitting else None)
    return {"training": p["training"], "total_bytes": p["total_bytes"], "fits": p["fits"],
            "memory_bytes": p["device"]["memory_bytes"], "peak_phase": p["peak_phase"],
            "components": {k: v for k, v in p["components"].items() if v}, "step_seconds": p["step_seconds"],
            "epoch_seconds": p["epoch_seconds"], "later_epoch_seconds": p["later_epoch_seconds"],
            "first_fitting_change": first, "workload": p["workload"]["sources"]}


def main() -> int:
    from fslib import plan as cli
    from fslib.core import fsio, provenance
    from fslib.training.plan import arch_of

    out = {"pairs": {}, "command": "python benchmarks/family_plans.py", "environment": provenance.environment()}
    for path in PARAMS:
        P = cli.params(str(ROOT / path))
        t, s = arch_of(P["teacher_model"]), arch_of(P["student_model"])
        pair = {"params": path, "teacher": P["teacher_model"], "student": P["student_model"], "family": s.family,
                "teacher_params": t.params, "student_params": s.params, "vocab": [t.vocab, s.vocab],
                "gpus": {}}
        for gpu in GPUS:
            pair["gpus"][gpu] = row(cli.plan_run(P, gpu=gpu, num_gpus=1))
            print(path, gpu, round(pair["gpus"][gpu]["total_bytes"] / 2**30, 1), flush=True)
        out["pairs"][path] = pair
    fsio.write_json(OUT, out)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
