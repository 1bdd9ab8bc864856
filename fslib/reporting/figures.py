"""Figures for the notebooks and the one-file HTML report that joins the four executed notebooks."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

# Off-screen drawing: figures are returned and shown by the notebook (fslib/__init__ renders them as PNG).
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _done(fig):
    """Release pyplot's handle (no "too many figures" warning across a long notebook); the Figure still renders."""
    plt.close(fig)
    return fig


def plot_training(histories: dict[str, dict]):
    """Loss curves (total, KD, CE) per trained model: train per step, validation per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for label, hist in histories.items():
        steps = hist["steps"]
        for ax, key in zip(axes, ("loss", "kd", "ce")):
            line, = ax.plot([s["step"] for s in steps], [s[key] for s in steps], alpha=0.6, label=f"{label} train")
            ax.plot([e["step"] for e in hist["epochs"]], [e[f"val_{key}"] for e in hist["epochs"]], "o--",
                    color=line.get_color(), label=f"{label} val")
    for ax, title in zip(axes, ("total loss", "KD divergence at temperature T", "cross-entropy")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _done(fig)


def plot_lr_throughput(histories: dict[str, dict]):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    for label, hist in histories.items():
        steps = [s["step"] for s in hist["steps"]]
        a.plot(steps, [s["lr"] for s in hist["steps"]], label=label)
        b.plot(steps, [s["tokens_per_s"] for s in hist["steps"]], label=label)
    a.set_title("learning rate")
    b.set_title("tokens / s (prompt + answer, incl. visual tokens)")
    for ax in (a, b):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _done(fig)


def gallery(records: list[dict], answers: dict[str, list[str]] | None = None, *, n: int = 8, cols: int = 4):
    """Images (or video frames as a strip) with the question, reference and each model's answer."""
    records = records[:n]
    rows = (len(records) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, rec) in enumerate(zip(axes.flat, records)):
        ax.imshow(_strip(rec))
        lines = [f"Q: {rec['question']}", f"ref: {rec.get('answer')}"]
        for name, preds in (answers or {}).items():
            lines.append(f"{name}: {preds[i]}")
        ax.set_title("\n".join(_wrap(x) for x in lines), fontsize=8, loc="left")
    fig.tight_layout()
    return _done(fig)


def _strip(rec: dict):
    import numpy as np

    if rec.get("media") == "video" and rec.get("video"):
        return np.concatenate([np.asarray(f.convert("RGB")) for f in rec["video"]], axis=1)
    return np.asarray(rec["image"].convert("RGB"))


def _wrap(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or ""


def render_html(executed: list[Path], out_file: Path, *, title: str) -> Path:
    """Join executed notebooks into one self-contained HTML: contents, headline metrics, the stages with code
    hidden and figures embedded, then params and environment. Nothing is fetched (see ``fslib.reporting.site``)."""
    from fslib.reporting import site

    return site.render_run(executed, out_file, title=title)


def errors_in(executed: list[Path]) -> list[str]:
    """Names of notebooks that contain an error output (the report must have none)."""
    import nbformat

    bad = []
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                bad.append(f"{path.name}: {html.escape(''.join(cell.source)[:80])}")
    return bad


def teacher_check_view(check: dict | None):
    """02's teacher check as the notebook shows it: a warning box in words when the teacher is not ahead, the numbers
    as a table when it is (IPython renders either; the HTML report keeps the box's class for its banner)."""
    import html as _html

    from IPython.display import HTML

    if check is None:
        return HTML('<p class="fs-note">teacher_check is off: the teacher was not checked before distilling.</p>')
    rows = "".join(f"<tr><th>{k}</th><td>{v if isinstance(v, int) else '—' if v is None else f'{v:.3f}'}</td></tr>"
                   for k, v in (("validation questions", check["n"]), ("teacher exact match", check["teacher_em"]),
                                ("SFT-only student (fine-tuning alone)", check.get("sft_em")),
                                ("teacher, blind (grey pixels)", check["teacher_blind_em"]),
                                ("student's starting weights", check["student_start_em"]),
                                ("required lead", check["margin"])))
    sft = "" if check.get("sft_em") is not None else " (no SFT-only student was trained: not compared with fine-tuning)"
    verdict = (f'<p class="fs-ok">The teacher leads fine-tuning, the student\'s starting weights and its own blind '
               f'score: worth distilling{sft}.</p>' if check["ahead"] else
               f'<div class="fs-warning"><b>Warning.</b> {_html.escape(check["message"])}</div>')
    return HTML(f'{verdict}<table class="fs-table">{rows}</table>')
