"""Tables and figures of 03_evaluate, all drawn from ``metrics.json`` (and the answers in ``predictions.json``).

Nothing here computes a metric: it only shows what ``fslib.evaluation.metrics`` and ``fslib.evaluation.bench`` measured. A figure that
needs accuracy returns a one-line explanation instead when accuracy was not computed (random-weight models).
"""

from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MIB = 2 ** 20


def _done(fig):
    fig.tight_layout()
    plt.close(fig)  # the returned Figure still renders in the notebook; pyplot keeps no handle
    return fig


def _ci(value, ci, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _num(value, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value * scale)


def model_table(metrics: dict):
    """One row per measured model: size, accuracy with 95% CIs, blind control, speed (median, p90) and memory."""
    import pandas as pd

    rows = {}
    for name, m in metrics["models"].items():
        rows[name] = {
            "role": m.get("role"),
            "weights": m.get("quantization") if m.get("quantization") not in (None, "none") else m.get("dtype"),
            "params (M) vision + language": f"{m['params'] / 1e6:,.2f} = {m['params_vision'] / 1e6:,.2f} + "
                                            f"{m['params_language'] / 1e6:,.2f}",
            "exact match [95% CI]": _ci(m.get("exact_match"), m.get("exact_match_ci")),
            "F1": _num(m.get("f1"), fmt="{:.3f}"), "ROUGE-L": _num(m.get("rouge_l"), fmt="{:.3f}"),
            "BLEU": _num(m.get("bleu"), fmt="{:.1f}"),
            "blind EM": _num(m.get("blind_exact_match"), fmt="{:.3f}"),
            "agrees with teacher": _num(m.get("agreement_with_teacher"), fmt="{:.3f}"),
            "TTFT ms (p90)": f"{_num(m.get('ttft_s'), 1e3, '{:.1f}')} ({_num(m.get('ttft_p90_s'), 1e3, '{:.1f}')})",
            "decode ms/token (p90)": f"{_num(m.get('decode_s_per_token'), 1e3, '{:.2f}')} "
                                     f"({_num(m.get('decode_p90_s_per_token'), 1e3, '{:.2f}')})",
            **{f"tokens/s @{b}": f"{v:.1f}" for b, v in (m.get("throughput") or {}).items()},
            "weights MiB": _num(m.get("weights_bytes"), 1 / MIB, "{:,.1f}"),
            "peak MiB": _num(m.get("peak_bytes"), 1 / MIB, "{:,.1f}"),
        }
        if m.get("bandwidth_utilisation") is not None:
            rows[name]["bandwidth used"] = f"{m['bandwidth_utilisation']:.1%}"
    return pd.DataFrame.from_dict(rows, orient="index")


def _scored(metrics: dict) -> dict:
    return {n: m for n, m in metrics["models"].items() if m.get("exact_match") is not None}


def not_computed(metrics: dict) -> str | None:
    if not metrics.get("accuracy", {}).get("computed", True) or not _scored(metrics):
        return f"Accuracy not computed: {metrics.get('accuracy', {}).get('note', 'no model answered')}"
    return None


def accuracy_table(metrics: dict, split: str | None = None, by: str = "per_type"):
    """Exact match [95% CI] per question type (or ``by="per_media"``), one column per model, on ``split``."""
    import pandas as pd

    if not_computed(metrics):
        return not_computed(metrics)
    split = split or metrics["split"]
    cols = {}
    for name, m in _scored(metrics).items():
        if split not in m["by_split"]:
            continue  # e.g. a quantised row scored on the headline split only
        block = m["by_split"][split]
        cols[name] = {k: _ci(v["exact_match"], v["exact_match_ci"]) + f"  (n {v['n']})"
                      for k, v in block.get(by, {}).items()}
        cols[name]["all"] = _ci(block.get("exact_match"), block.get("exact_match_ci")) + f"  (n {block.get('n')})"
    return pd.DataFrame(cols)


def choice_view(metrics: dict):
    """03's choice of the student to trust (``metrics["choice"]``): the reason in words and every student's
    validation exact match; a note when there is no choice (no validation split, or no trained student)."""
    import html

    from IPython.display import HTML

    c = metrics.get("choice")
    if not c:
        return HTML('<p class="fs-note">No student was chosen: no trained student was scored on a validation '
                    "split. 04 publishes the KD student unless publish_model names another.</p>")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in c["scores"].items())
    cls = "fs-ok" if c["distilled"] and (c["verdict"] or {}).get("kd_helped") else "fs-warning"
    return HTML(f'<div class="{cls} fs-choice"><b>The student to trust: <code>{html.escape(c["model"])}</code>.</b> '
                f'{html.escape(c["reason"])}</div><table class="fs-table"><thead><tr><th>student</th>'
                f'<th>exact match, {html.escape(c["split"])}</th></tr></thead><tbody>{rows}</tbody></table>')


def split_tables(metrics: dict, ood_split: str = ""):
    """Exact match [95% CI] per question type on ``ood_split`` (when scored) and per media on the headline split."""
    import pandas as pd

    if not_computed(metrics):
        return not_computed(metrics)
    parts = {f"{metrics['split']}, by media": accuracy_table(metrics, by="per_media")}
    if ood_split and ood_split in metrics.get("splits", {}):
        parts = {f"{ood_split}, by question type": accuracy_table(metrics, ood_split), **parts}
    return pd.concat(parts).fillna("—")


def blind_table(metrics: dict):
    """Per question type: each model's exact match with real pixels and with grey pixels, and the prior baseline
    (most frequent training answer of the type). Image-dependent types should fall to about the baseline."""
    import pandas as pd

    if not_computed(metrics):
        return not_computed(metrics)
    prior = (metrics.get("blind") or {}).get("prior_baseline") or {}
    table = {}
    for name, m in _scored(metrics).items():
        if m.get("blind_exact_match") is None:
            continue
        for t, v in {**m["per_type"], "all": m}.items():
            row = table.setdefault(t, {})
            row[f"{name}"] = _num(v.get("exact_match"), fmt="{:.3f}")
            row[f"{name} blind"] = _num(v.get("blind_exact_match"), fmt="{:.3f}")
    for t, row in table.items():
        row["prior baseline"] = _num(prior.get("exact_match") if t == "all" else prior.get("per_type", {}).get(t),
                                     fmt="{:.3f}")
    return pd.DataFrame.from_dict(table, orient="index") if table else "blind control not run"


def plot_accuracy_by_type(metrics: dict, split: str | None = None):
    """Exact match per question type with 95% CI error bars; blind exact match as hollow markers, and the
    no-pixels prior baseline (most frequent training answer per type) as a black tick."""
    if not_computed(metrics):
        return not_computed(metrics)
    split = split or metrics["split"]
    models = _scored(metrics)
    blocks = {n: m["by_split"][split] for n, m in models.items() if split in m["by_split"]}
    types = sorted({t for b in blocks.values() for t in b["per_type"]})
    prior = (metrics.get("blind", {}).get("prior_baseline") or {}).get("per_type", {})
    prior = prior if split == metrics["split"] else {}
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(types)), 4))
    width = 0.8 / max(len(blocks), 1)
    x = np.arange(len(types))
    for i, (name, b) in enumerate(blocks.items()):
        em = [b["per_type"].get(t, {}).get("exact_match") or 0 for t in types]
        ci = [b["per_type"].get(t, {}).get("exact_match_ci") or [e, e] for t, e in zip(types, em)]
        err = np.array([[e - c[0] for e, c in zip(em, ci)], [c[1] - e for e, c in zip(em, ci)]])
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, em, width, yerr=np.clip(err, 0, None), capsize=2, label=name, alpha=0.85)
        blind = [b["per_type"].get(t, {}).get("blind_exact_match") for t in types]
        if any(v is not None for v in blind):
            ax.scatter(pos, [np.nan if v is None else v for v in blind], marker="o", facecolors="none",
                       edgecolors=bars.patches[0].get_facecolor(), zorder=3)
    for j, t in enumerate(types):
        if t in prior:
            ax.hlines(prior[t], j - 0.45, j + 0.45, colors="black", linewidth=1.5)
    ax.set_xticks(x, types, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact match")
    ax.set_title(f"exact match by question type ({split}); ○ blind (grey pixels), — prior baseline")
    ax.legend(fontsize=7, ncol=2)
    return _done(fig)


def plot_latency(metrics: dict):
    """Distributions of the timed repeats: time to first token and decode time per token, one box per row."""
    rows = {n: m["samples"] for n, m in metrics["models"].items() if (m.get("samples") or {}).get("ttft_s")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(rows) + 2))
    for ax, key, title in ((axes[0], "ttft_s", "time to first token (ms)"),
                           (axes[1], "decode_s_per_token", "decode time per token (ms)")):
        data = [np.asarray(r[key]) * 1e3 for r in rows.values()]
        ax.boxplot(data, orientation="horizontal", tick_labels=list(rows), showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(d, np.full(len(d), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(d)), s=8, alpha=0.6)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    p = metrics.get("protocol", {})
    note = noise_note(metrics)
    fig.suptitle(f"{p.get('repeats')} timed runs per model after {p.get('warmup')} warm-up runs, batch 1, "
                 f"{p.get('new_tokens')} generated tokens" + (f"\n{note}" if note else ""), fontsize=9)
    return _done(fig)


def noise_note(metrics: dict) -> str | None:
    """Rows with identical shapes and weights format (e.g. the KD, SFT and base students) must run equally fast:
    the spread of their medians is the measurement noise of this machine, stated so no smaller gap is over-read."""
    groups: dict[tuple, list[dict]] = {}
    for m in metrics["models"].values():
        if m.get("decode_s_per_token"):
            groups.setdefault((m["params"], m.get("dtype"), m.get("quantization")), []).append(m)
    same = max((g for g in groups.values() if len(g) > 1), key=len, default=None)
    if not same:
        return None
    spread = {k: max(m[k] for m in same) / max(min(m[k] for m in same), 1e-12) for k in ("ttft_s", "decode_s_per_token")}
    names = ", ".join(n for n, m in metrics["models"].items() if any(m is x for x in same))
    return (f"{names} have identical shapes: their medians differ by up to {spread['ttft_s']:.1f}x (TTFT) and "
            f"{spread['decode_s_per_token']:.1f}x (decode), the noise of this machine; smaller gaps mean nothing")


def plot_memory(metrics: dict):
    """Left: weight memory as stored. Right: peak memory at batch 1 and at the largest batch. On CPU the peak is the
    process's resident set, so the runtime measured before loading (Python + torch) is subtracted and stated."""
    models = metrics["models"]
    names = list(models)
    y = np.arange(len(names))
    cpu = metrics.get("protocol", {}).get("device") == "cpu"
    base = {n: (models[n].get("baseline_bytes") or 0) if cpu else 0 for n in names}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True)
    a.barh(y, [models[n]["weights_bytes"] / MIB for n in names], color="tab:orange")
    a.set_title("weights as stored (MiB)")
    largest = max((int(k) for m in models.values() for k in (m.get("peak_bytes_by_batch") or {})), default=1)
    for off, batch, colour in ((-0.2, 1, "tab:blue"), (0.2, largest, "tab:cyan")):
        vals = [((models[n].get("peak_bytes_by_batch") or {}).get(str(batch), np.nan) - base[n]) / MIB for n in names]
        b.barh(y + off, vals, 0.4, color=colour, label=f"batch {batch}")
    b.set_title("peak memory above the process's RSS before loading (MiB)" if cpu else "peak memory allocated (MiB)")
    if cpu:
        b.set_xlabel(f"runtime before loading (Python + torch): {np.median(list(base.values())) / MIB:,.0f} MiB, "
                     "not included", fontsize=8)
    a.set_yticks(y, names)
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="x")
    return _done(fig)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated by another point with lower-or-equal latency and higher-or-equal accuracy (one strictly)."""
    def dominated(lat, acc, others):
        return any(l2 <= lat and a2 >= acc and (l2 < lat or a2 > acc) for l2, a2 in others)

    return [n for n, p in points.items() if not dominated(*p, [q for m, q in points.items() if m != n])]


def plot_pareto(metrics: dict):
    """Exact match (95% CI) against decode time per token, one point per model; the Pareto front is joined."""
    if not_computed(metrics):
        return not_computed(metrics)
    models = {n: m for n, m in _scored(metrics).items() if m.get("decode_s_per_token") is not None}
    points = {n: (m["decode_s_per_token"] * 1e3, m["exact_match"]) for n, m in models.items()}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, n in enumerate(sorted(models, key=lambda n: points[n])):
        lat, acc = points[n]
        lo, hi = models[n].get("exact_match_ci") or (acc, acc)
        ax.errorbar(lat, acc, yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=3)
        # staggered labels: several rows (e.g. a student and its quantised copies) often share one accuracy
        ax.annotate(n, (lat, acc), textcoords="offset points", xytext=(6, 4 - 11 * (k % 3)), fontsize=8)
    front = sorted((points[n] for n in pareto_front(points)), key=lambda p: p[0])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", alpha=0.5, label="Pareto front")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("decode time per token (ms, median, batch 1, log scale)")
    ax.set_ylabel(f"exact match ({metrics['split']})")
    ax.set_title("accuracy against per-token latency: up and left is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _done(fig)


def failures(records: list[dict], answers: dict[str, list[str]], *, focus: str = "student", n: int = 8) -> list[int]:
    """Indices of questions the ``focus`` model got wrong, images and clips interleaved, in data order."""
    from fslib.evaluation.metrics import exact_match, references

    wrong = [i for i, r in enumerate(records) if not exact_match(answers[focus][i], references(r))]
    video = [i for i in wrong if records[i].get("media") == "video"]
    image = [i for i in wrong if records[i].get("media") != "video"]
    mixed = [i for pair in zip(image, video) for i in pair] + image[len(video):] + video[len(image):]
    return mixed[:n]


def media_strip(rec: dict) -> np.ndarray:
    """The image, or a clip's frames side by side, as one RGB array."""
    if rec.get("media") == "video" and rec.get("video"):
        return np.concatenate([np.asarray(f.convert("RGB")) for f in rec["video"]], axis=1)
    return np.asarray(rec["image"].convert("RGB"))


def failure_gallery(records: list[dict], answers: dict[str, list[str]], *, focus: str = "student", n: int = 8,
                    cols: int = 2):
    """The ``focus`` model's failures: image or frame strip, question, reference, and every model's answer."""
    import textwrap

    if focus not in answers:
        return f"no answers from {focus!r} (accuracy not computed or model absent): no failure gallery"
    idx = failures(records, answers, focus=focus, n=n)
    if not idx:
        return f"{focus} answered every question correctly: no failures to show"
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        rec = records[i]
        ax.imshow(media_strip(rec))
        lines = [f"Q: {rec['question']}", f"reference: {rec['answer']}"]
        lines += [f"{name}: {preds[i]!r}" for name, preds in answers.items()]
        ax.set_title("\n".join(textwrap.shorten(x, 90) for x in lines), fontsize=8, loc="left")
    return _done(fig)
