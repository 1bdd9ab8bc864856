"""README blocks for a user's dataset run (``benchmarks/user_data.py``): every model's test exact match overall and
per question type, the teacher check in its own words, the student 03 chose and the one 04 published, each stage's
time and 02's longest steps. Every number is read from the benchmark's JSON."""

from __future__ import annotations

from pathlib import Path

from fslib.core import fsio
from fslib.evaluation import formatting

ROLES = {"teacher": "teacher, prepared on the labels", "student": "KD student",
         "kd_labelled_student": "KD on the labelled questions only", "sft_student": "SFT-only student",
         "base_student": "student's starting weights"}


def _ci(m: dict) -> str:
    lo, hi = m["exact_match_ci"]
    return f"{m['exact_match']:.3f} [{lo:.3f}, {hi:.3f}]"


def _check(tc: dict | None) -> str:
    if not tc:
        return "The teacher check did not run."
    sft = f", the SFT-only student {tc['sft_em']:.3f}" if tc.get("sft_em") is not None else ""
    verdict = "passed" if tc["ahead"] else f"failed, and the report said: \u201c{tc['message']}\u201d"
    return (f"Teacher check on {tc['n']} validation questions: teacher {tc['teacher_em']:.3f} (blind "
            f"{tc['teacher_blind_em']:.3f}){sft}, student's starting weights {tc['student_start_em']:.3f}: {verdict}")


def _teacher(res: dict) -> str:
    t = res.get("trainings", {}).get("teacher")
    if not t:
        return ""
    ceiling = res.get("teacher_epochs")
    how = ("stopped on validation" if t.get("stopped_early") else
           "still improving at the ceiling" if t["best_epoch"] == t["epochs_run"] else "ran to the ceiling")
    return (f" Teacher preparation: {t['epochs_run']} epochs" + (f" of at most {ceiling}" if ceiling else "")
            + f", best epoch {t['best_epoch']} ({how}); validation loss per epoch "
            + ", ".join(f"{v:.3f}" for v in t.get("val_loss", [])) + ".")


def _times(res: dict) -> str:
    stages = ", ".join(f"{k[:2]} {v:.0f} s" for k, v in res.get("stage_seconds", {}).items() if v is not None)
    steps = sorted(res.get("distill_step_seconds", {}).items(), key=lambda kv: -kv[1])[:5]
    load = res.get("load_average_before")
    return (f" Time per stage: {stages}" + (f"; 02's longest steps: " + ", ".join(f"`{k}` {v:.0f} s" for k, v in steps)
                                             if steps else "")
            + (f" (load average {load[0]:.1f} on {res.get('cpus', '?')} CPUs when it started: other jobs were "
               "running)" if load and load[0] > 1.0 else "") + ".")


def user_data_block(path: str | Path) -> str:
    """The table (overall and per question type) and the run's story in one paragraph, from the benchmark JSON."""
    res = fsio.read_json(path)
    types = sorted({t for m in res["models"].values() for t in m.get("per_type", {})})
    rows = [[ROLES.get(n, n), _ci(m), formatting.fmt("exact_match", m.get("blind_exact_match")),
             *[formatting.fmt("exact_match", m.get("per_type", {}).get(t)) for t in types]]
            for n, m in res["models"].items()]
    header = ["model", "test exact match [95% CI]", "blind", *[f"`{t}`" for t in types]]
    sizes = ", ".join(f"{k} {v}" for k, v in res["sizes"].items())
    changed = ", ".join(f"`{k}: {v}`" for k, v in res.get("changed_params", {}).items() if k != "data_source")
    choice, published = res.get("choice"), res.get("published")
    chosen = (f" The student to trust (03, chosen on the {choice['split']} split): `{choice['model']}`. "
              f"{choice['reason']}" if choice else "")
    pub = f" 04 published `{published}`." if published else ""
    sha = res.get("git_sha", "unknown")
    table = [formatting.markdown_table(header, rows), ""] if rows else []
    return "\n".join([*table,
                      f"*`{res['dataset']['name']}` ({sizes} rows)" + (f", with {changed}" if changed else "")
                      + f". {_check(res.get('teacher_check'))}{_teacher(res)}{chosen}{pub}{_times(res)} Read from "
                      f"`{_display(Path(path))}` (`{res['command'].strip()}`, commit `{sha[:12]}`) by `make readme`.*"])


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(fsio.REPO_ROOT))
    except ValueError:
        return str(path)
