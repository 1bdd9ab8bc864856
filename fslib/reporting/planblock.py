"""README's ``plan`` block, from ``benchmarks/results/plan_vs_measured.json`` (``benchmarks/plan_vs_measured.py``
writes it): the real job's plan per named GPU (predicted), the CPU rehearsal's measured peaks against the planner's
predictions, and the ms-swift check. Reads JSON only (no torch)."""

from __future__ import annotations

from pathlib import Path

from fslib.core import fsio
from fslib.evaluation import formatting

PLAN_VS_MEASURED = fsio.REPO_ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
GiB = 2**30


def _gib(b) -> str:
    return "—" if b is None else f"{b / GiB:.1f}"


def least_change(r: dict) -> str:
    """A plan row's least params change that makes the job fit, with the peak it then predicts; "—" when it fits."""
    change = r.get("first_fitting_change")
    if r["fits"] or not change:
        return "—"
    return ", ".join(f"`{k}={v}`" for k, v in change["params"].items()) + f" → {_gib(change['total_bytes'])} GiB"


def _minutes(s) -> str:
    return "—" if s is None else f"{s / 60:.0f}"


def real_job_table(real: dict) -> str:
    rows = []
    for gpu, r in real["gpus"].items():
        fix = least_change(r)
        rows.append([f"`{gpu}`", _gib(r["memory_bytes"]), f"{_gib(r['total_bytes'])} ({r['peak_phase']})",
                     "yes" if r["fits"] else "**no**",
                     "—" if r["step_seconds"] is None else f"{r['step_seconds']:.1f}",
                     f"{_minutes(r['epoch_seconds'])} / {_minutes(r['later_epoch_seconds'])}", fix])
    return formatting.markdown_table(["GPU", "memory (GiB)", "predicted peak (GiB, phase)", "fits",
                                      "s / step", "min / epoch (1st / later)", "least change that fits"], rows)


def rehearsal_table(res: dict) -> str:
    rows = []
    for r in res.get("runs", []):
        if "run_name" in r.get("params", {}):  # another family's variant: README's families block shows it
            continue
        if "measured_bytes" not in r:
            rows.append([f"`{r['name']}`", "failed", "", "", "", ""])
            continue
        rows.append([f"`{r['name']}`", _gib(r["predicted_bytes"]), _gib(r["measured_bytes"]), f"{r['error']:+.1%}",
                     f"{_gib(r['predicted_step_bytes'])} / {_gib(r['measured_step_bytes'])} ({r['step_error']:+.1%})",
                     "yes" if r["within_target"] else "**no**"])
    return formatting.markdown_table(["variant", "predicted (GiB)", "measured (GiB)", "error",
                                      "steps only: predicted / measured", "within ±15%"], rows)


def plan_block(path: str | Path = PLAN_VS_MEASURED) -> str:
    res = fsio.read_json(path)
    real, swift = res["real_job"], res["ms_swift"]
    t = res.get("target", {})
    verdict = ("met" if t.get("met") else "**not met**") + f" ({t.get('runs_within')} of {t.get('runs')} runs)"
    s_fs, s_all = swift["fslib_loss"], swift["all_position_logits"]
    lines = [f"**Predicted** (no GPU was measured): `{real['params']}`'s largest training on each GPU, one process. "
             f"Workload: {real['workload']}.", "", real_job_table(real), "",
             "*" + "; ".join(real["notes"]) + ".*", "",
             f"**Measured against predicted**, on this CPU: `{res['params']}` (real widths, vocabularies and tower; "
             "2 text layers and 2 vision blocks), one fresh process per variant. Target: every run within ±15%: "
             f"{verdict}.", "", rehearsal_table(res), "",
             "*Measured: " + " ".join(res["measured_means"].replace("``", "`").split()) + "*", "",
             f"**ms-swift check**: {swift['source']}: {_gib(swift['published_bytes'])} GiB. Predicted for that "
             f"configuration: {_gib(s_all['predicted_bytes'])} GiB with logits at every position, as ms-swift's "
             f"(transformers') loss has them, costed with fslib's loss buffers (an estimate: "
             f"{s_all['difference']:+.0%}); {_gib(s_fs['predicted_bytes'])} GiB with fslib's "
             f"loss, which projects only the answer tokens ({s_fs['difference']:+.0%}).", "",
             f"*Read from `{_display(Path(path))}` (written by `{'`, then `'.join(res.get('commands') or [res['environment']['command']])}`; commit "
             f"`{str(res['environment'].get('git_sha', 'unknown'))[:12]}`) by `make readme`.*"]
    return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(fsio.REPO_ROOT))
    except ValueError:
        return str(path)
