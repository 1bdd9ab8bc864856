"""The student to trust: 03 picks it on the validation split (never on the test split it reports), and states how the
KD student compares with the SFT-only one on the test split, with their intervals.

The rule: the trained student with the highest exact match on validation; a tie goes to the student that needs less
(the SFT-only student, then KD on the labelled questions, then the KD student), since distillation must earn its
teacher. ``metrics.json`` carries the result as ``choice``; the headline, the model card and 04 (``publish_model:
best``) read it. The verdict is on the test split: "KD above SFT" or "SFT above KD" only when the two 95% intervals
do not overlap, else "no difference shown".
"""

from __future__ import annotations

# Most to least demanding; a tie on validation goes to the later one.
CANDIDATES = ("student", "kd_labelled_student", "sft_student")
NAMES = {"student": "the KD student", "kd_labelled_student": "the KD student trained on the labelled questions only",
         "sft_student": "the SFT-only student"}
KD_KEYS = ("student", "kd_labelled_student")


def _em(model: dict, split: str) -> float | None:
    return (model.get("by_split") or {}).get(split, {}).get("exact_match")


def kd_verdict(models: dict, split: str) -> dict | None:
    """The KD student against the SFT-only student on ``split``: both exact matches with their 95% intervals, the
    difference and the verdict; None when either was not scored."""
    kd, sft = models.get("student", {}), models.get("sft_student", {})
    blocks = [(m.get("by_split") or {}).get(split) or {} for m in (kd, sft)]
    if any(b.get("exact_match") is None or not b.get("exact_match_ci") for b in blocks):
        return None
    (k, k_ci), (s, s_ci) = [(b["exact_match"], b["exact_match_ci"]) for b in blocks]
    verdict = ("KD above SFT" if k_ci[0] > s_ci[1] else "SFT above KD" if s_ci[0] > k_ci[1]
               else "no difference shown")
    return {"split": split, "kd": k, "kd_ci": k_ci, "sft": s, "sft_ci": s_ci, "difference": k - s, "verdict": verdict,
            "kd_helped": verdict == "KD above SFT"}


def choose(models: dict, *, select_split: str | None, report_split: str) -> dict | None:
    """``{model, name, split, scores, verdict, reason}``: the student with the best exact match on ``select_split``
    (ties to the one that needs less); None when no student was scored there."""
    scores = {k: _em(models[k], select_split) for k in CANDIDATES if k in models and select_split}
    scores = {k: v for k, v in scores.items() if v is not None}
    if not scores:
        return None
    best = max(scores.values())
    model = [k for k in CANDIDATES if scores.get(k) == best][-1]
    verdict = kd_verdict(models, report_split)
    return {"model": model, "name": NAMES[model], "split": select_split, "scores": scores, "verdict": verdict,
            "distilled": model in KD_KEYS, "reason": reason(model, scores, select_split, verdict)}


def reason(model: str, scores: dict, split: str, verdict: dict | None) -> str:
    """Why this student, in words: its validation score beside the others', then the test verdict."""
    others = ", ".join(f"{NAMES[k]} {v:.3f}" for k, v in scores.items() if k != model)
    tied = [k for k, v in scores.items() if k != model and v == scores[model]]
    text = (f"{NAMES[model][0].upper()}{NAMES[model][1:]} has the best exact match on the {split} split "
            f"({scores[model]:.3f}" + (f"; {others}" if others else "") + ")"
            + (", tied, and it needs less" if tied else "") + ".")
    return text + (" " + verdict_text(verdict) if verdict else "")


def verdict_text(v: dict) -> str:
    """The test verdict in one sentence, with both intervals."""
    ci = lambda c: f"[{c[0]:.3f}, {c[1]:.3f}]"  # noqa: E731
    said = {"KD above SFT": "distillation helped: the intervals do not overlap",
            "SFT above KD": "distillation did not help: fine-tuning alone did better, and the intervals do not overlap",
            "no difference shown": "distillation was not shown to help: the intervals overlap"}[v["verdict"]]
    return (f"On the {v['split']} split the KD student scores {v['kd']:.3f} {ci(v['kd_ci'])} and the SFT-only student "
            f"{v['sft']:.3f} {ci(v['sft_ci'])}: {said}.")
