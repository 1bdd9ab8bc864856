"""README's ``families`` block ("Other Qwen-VL pairs"), from ``benchmarks/results/family_plans.json``
(``benchmarks/family_plans.py``: the planner on each new family's params file, every named GPU) and the family rows of
``benchmarks/results/plan_vs_measured.json`` (measured on a CPU against the planner). Reads JSON only (no torch)."""

from __future__ import annotations

from pathlib import Path

from fslib.core import fsio
from fslib.evaluation import formatting
from fslib.reporting.planblock import _gib, least_change

FAMILY_PLANS = fsio.REPO_ROOT / "benchmarks" / "results" / "family_plans.json"
PLAN_VS_MEASURED = fsio.REPO_ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")


def _pair_table(pair: dict) -> str:
    rows = []
    for gpu, r in pair["gpus"].items():
        fix = least_change(r)
        epoch = "—" if r["epoch_seconds"] is None else f"{r['epoch_seconds'] / 60:.0f}"
        rows.append([f"`{gpu}`", _gib(r["memory_bytes"]), f"{_gib(r['total_bytes'])} ({r['peak_phase']})",
                     "yes" if r["fits"] else "**no**",
                     "—" if r["step_seconds"] is None else f"{r['step_seconds']:.1f}", epoch, fix])
    return formatting.markdown_table(["GPU", "memory (GiB)", "predicted peak (GiB, phase)", "fits", "s / step",
                                      "min / 1st epoch", "least change that fits"], rows)


def _measured_table(res: dict) -> str:
    rows = []
    console = res.get("console_runs", {}).get("rows", [])
    for r in res.get("runs", []) + console:
        if not r["name"].startswith(FAMILIES):
            continue
        if "measured_bytes" not in r:
            rows.append([f"`{r['name']}`", "failed", "", "", ""])
            continue
        pair = f"{r['params'].get('teacher_model', '').removeprefix('random-init:')} → " \
               f"{r['params'].get('student_model', '').removeprefix('random-init:')}"
        rows.append([f"`{r['name']}`" + (" (console)" if r in console else ""), pair, _gib(r["predicted_bytes"]),
                     _gib(r["measured_bytes"]),
                     f"{r['error']:+.1%}" + ("" if r["within_target"] else " (**outside ±15%**)")])
    if not rows:
        return "*No family variant measured yet (`python benchmarks/plan_vs_measured.py --variants ...`).*"
    return formatting.markdown_table(["variant", "pair (random-init presets)", "predicted (GiB)", "measured (GiB)",
                                      "error"], rows)


def family_block(path: str | Path = FAMILY_PLANS, measured: str | Path = PLAN_VS_MEASURED) -> str:
    res = fsio.read_json(path)
    lines = []
    for file, pair in res["pairs"].items():
        first = next(iter(pair["gpus"].values()))
        lines += [f"**`{file}`**: `{pair['teacher']}` ({pair['teacher_params'] / 1e9:.2f} B parameters, "
                  f"{pair['vocab'][0]:,} output rows) → `{pair['student']}` ({pair['student_params'] / 1e9:.2f} B, "
                  f"{pair['vocab'][1]:,} rows), `{first['training']}`, one process. Workload: {first['workload']}.",
                  "", _pair_table(pair), ""]
    lines.append("*Predicted, not measured (time at the planner's assumed 40% of the dense bf16 peak). Read from "
                 f"`{_display(Path(path))}` (`{res['command']}`, commit "
                 f"`{str(res['environment'].get('git_sha', 'unknown'))[:12]}`) by `make readme`.*")
    if Path(measured).exists():
        m = fsio.read_json(measured)
        lines += ["", "**Measured against predicted** on a CPU, one variant per family (real widths, vocabularies and "
                  "towers, 2 text layers and 2 vision blocks; LoRA students, so that each fits a shared 24 GiB "
                  "machine):", "", _measured_table(m), "",
                  f"*Read from `{_display(Path(measured))}` (`benchmarks/plan_vs_measured.py`) by `make readme`."
                  + (f" Rows marked (console): {m['console_runs']['note']}; recorded by "
                     f"`{m['console_runs']['command'].strip()}`." if m.get("console_runs") else "") + "*"]
    return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(fsio.REPO_ROOT))
    except ValueError:
        return str(path)
