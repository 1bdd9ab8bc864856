"""Which metrics of ``metrics.json`` are shown, under what label, and how they are written.

One list shared by the HTML report, the runs index, the model card, ``make compare`` and the README, so the same
number is printed the same way everywhere. Every reader takes what a run has measured and skips what it has not:
``metrics.json`` grows over time, and an old run must still render.
"""

from __future__ import annotations

import math

# (key in metrics["models"][name], label, kind). The kind picks the format and the card's metric group.
# `throughput` ({batch size: tokens/s}) is not one number; 03 shows it per batch size, tokens_per_s is batch 1.
METRICS = (
    ("exact_match", "exact match", "accuracy"),
    ("f1", "token F1", "accuracy"),
    ("rouge_l", "ROUGE-L", "accuracy"),
    ("bleu", "BLEU", "bleu"),
    ("blind_exact_match", "exact match, image withheld", "accuracy"),
    ("params", "parameters", "count"),
    ("ttft_s", "time to first token (s)", "seconds"),
    ("decode_s_per_token", "decode (s / token)", "seconds"),
    ("latency_s", "latency (s)", "seconds"),
    ("tokens_per_s", "tokens / s at batch 1", "rate"),
    ("weights_bytes", "weights (MiB)", "bytes"),
    ("peak_bytes", "peak memory (MiB)", "bytes"),
)
LABELS = {key: label for key, label, _ in METRICS}
KINDS = {key: kind for key, _, kind in METRICS}
# The few columns of the report's headline table and the runs index (teacher vs students at a glance).
HEADLINE = ("exact_match", "f1", "params", "ttft_s", "decode_s_per_token", "latency_s", "weights_bytes",
            "peak_bytes")
# Card groups: which protocol a model-index result is measured under.
GROUPS = {"accuracy": "accuracy", "bleu": "accuracy", "count": "size", "seconds": "speed", "rate": "speed",
          "bytes": "memory"}


def number(value) -> float | int | None:
    """The value if it is a finite number (not a bool), else None: a dict or a missing key is not a metric."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def fmt(key: str, value) -> str:
    """How ``value`` of metric ``key`` is printed in tables; "—" when it was not measured."""
    if key.endswith("_ci"):
        lo_hi = ci_bounds(value)
        return "—" if lo_hi is None else f"[{fmt(key[:-3], lo_hi[0])}, {fmt(key[:-3], lo_hi[1])}]"
    v = number(value)
    if v is None:
        return "—"
    kind = KINDS.get(key, "")
    if kind == "count":
        return f"{int(v):,}"
    if kind == "bytes":
        return f"{v / 2**20:,.1f}"
    if kind == "accuracy":
        return f"{v:.3f}"
    if kind == "bleu":
        return f"{v:.2f}"
    return f"{v:.4g}"


def ci_bounds(ci) -> tuple[float, float] | None:
    """A confidence interval as (low, high), from ``[lo, hi]`` or ``{"low": .., "high": ..}`` (or lo/hi keys)."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = ci
    elif isinstance(ci, dict):
        lo = next((ci[k] for k in ("low", "lo", "lower") if k in ci), None)
        hi = next((ci[k] for k in ("high", "hi", "upper") if k in ci), None)
    else:
        return None
    if number(lo) is None or number(hi) is None:
        return None
    return lo, hi


def present(metrics: dict, keys=None) -> list[str]:
    """The metric keys (in display order) that at least one model of this run has measured."""
    keys = keys or [k for k, _, _ in METRICS]
    models = metrics.get("models", {}).values()
    return [k for k in keys if any(number(m.get(k)) is not None for m in models)]


def table_rows(metrics: dict, keys=HEADLINE, ci_keys=("exact_match",)) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows, one per model: name, role, then each measured metric; ``ci_keys`` also get their
    confidence interval, when the run has one."""
    cols = present(metrics, keys)
    header = ["model", "role"] + [LABELS[k] + (" [95% CI]" if k in ci_keys else "") for k in cols]
    rows = []
    for name, m in metrics.get("models", {}).items():
        cells = []
        for k in cols:
            cell = fmt(k, m.get(k))
            if k in ci_keys and ci_bounds(m.get(f"{k}_ci")) is not None:
                cell += " " + fmt(f"{k}_ci", m[f"{k}_ci"])
            cells.append(cell)
        rows.append([name, str(m.get("role", ""))] + cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731  a "|" inside a cell would split it
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def summary_line(metrics: dict, run: str) -> str:
    """One sentence: the KD student against the teacher and the SFT-only baseline, every number from metrics.json."""
    models = metrics.get("models", {})
    s, t = models.get("student", {}), models.get("teacher", {})
    if number(s.get("exact_match")) is None:
        return f"Run `{run}` has no accuracy measured for the KD student yet."
    em = lambda m: fmt("exact_match", m.get("exact_match"))  # noqa: E731
    others = [f"{label} {em(models[k])}" for k, label in (("teacher", "teacher"), ("sft_student", "SFT-only student"),
                                                         ("kd_labelled_student", "KD on labelled questions only"))
              if number(models.get(k, {}).get("exact_match")) is not None]
    line = (f"On the `{metrics.get('split', '?')}` split ({metrics.get('n_eval', '?')} questions) of run `{run}`, "
            f"the KD student's exact match is {em(s)}" + (f" ({', '.join(others)})" if others else "") + ".")
    if number(t.get("params")) and number(s.get("params")):
        line += f" It has {t['params'] / s['params']:.1f}× fewer parameters than the teacher"
        if number(t.get("decode_s_per_token")) and number(s.get("decode_s_per_token")):
            line += (f"; decode time per token {fmt('decode_s_per_token', s['decode_s_per_token'])} s against the "
                     f"teacher's {fmt('decode_s_per_token', t['decode_s_per_token'])} s")
        line += "."
    return line + (" " + choice_sentence(metrics) if metrics.get("choice") else "")


def choice_sentence(metrics: dict) -> str:
    """03's student to trust (``metrics["choice"]``, fslib.evaluation.choice) and why, in words; "" without one."""
    c = metrics.get("choice")
    return f"The student to trust, chosen on the {c['split']} split: `{c['model']}`. {c['reason']}" if c else ""
