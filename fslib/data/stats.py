"""Dataset statistics for 01_data: counts, answer distribution, text and visual tokens per sample."""

from __future__ import annotations

from collections import Counter

import matplotlib

# Off-screen drawing: figures are returned and shown by the notebook (fslib/__init__ renders them as PNG).
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm


def token_counts(splits: dict[str, list[dict]], collator, *, batch_size: int = 16) -> dict[str, dict]:
    """Text and visual tokens per sample, by split, measured with the real processor and chat template."""
    out = {}
    for name, records in splits.items():
        text, visual = [], []
        for i in tqdm(range(0, len(records), batch_size), desc=f"tokens {name}", leave=False):
            batch = collator(records[i:i + batch_size])
            text += batch["text_tokens"].tolist()
            visual += batch["visual_tokens"].tolist()
        out[name] = {"text_tokens": text, "visual_tokens": visual}
    return out


def summarize(splits: dict[str, list[dict]], tokens: dict[str, dict], skipped: list[dict]) -> dict:
    """Counts per split and question type, answer distribution, token ranges and the skipped records."""
    summary = {"splits": {}, "skipped": skipped, "n_skipped": len(skipped)}
    for name, records in splits.items():
        t = tokens.get(name, {})
        summary["splits"][name] = {
            "n": len(records),
            "qtypes": dict(Counter(r["qtype"] for r in records)),
            "media": dict(Counter(r.get("media", "image") for r in records)),
            "answers": dict(Counter(r["answer"] for r in records if r.get("answer") is not None).most_common()),
            "unlabelled": sum(r.get("answer") is None for r in records),
            "text_tokens_max": max(t.get("text_tokens") or [0]),
            "visual_tokens_max": max(t.get("visual_tokens") or [0]),
        }
    return summary


def counts_table(summary: dict):
    import pandas as pd

    rows = {split: s["qtypes"] for split, s in summary["splits"].items()}
    return pd.DataFrame(rows).fillna(0).astype(int)


def plot_answers(summary: dict, split: str = "train"):
    answers = summary["splits"][split]["answers"]
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.bar(list(answers), list(answers.values()))
    ax.set_title(f"answer distribution ({split})")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    return fig


def plot_tokens(tokens: dict[str, dict]):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3))
    for ax, key in zip(axes, ("visual_tokens", "text_tokens")):
        for split, t in tokens.items():
            ax.hist(t[key], bins=20, alpha=0.5, label=split)
        ax.set_title(f"{key.replace('_', ' ')} per sample")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
