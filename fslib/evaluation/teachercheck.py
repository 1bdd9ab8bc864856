"""Is the prepared teacher worth distilling? 02 asks before it distils, on the labelled validation questions.

The rule, every part on the same questions: the teacher's greedy exact match must be

1. more than ``sft_margin`` above what fine-tuning reaches without it: the SFT-only student (trained first, on the
   same labels, steps and learning rate as the KD student). A teacher that does not lead it cannot be expected to make
   a distilled student beat fine-tuning, and its answers to unlabelled questions (wrong as often as SFT's, or more)
   would pull the student down. The SFT-only student is the student itself, so any lead counts by default (0.0);
2. at least ``margin`` above the student's starting weights, since a teacher no better than the student already is
   has nothing to teach;
3. at least ``margin`` above its own blind score (every pixel grey), since a teacher that scores as well without the
   image answers from the question text alone: its answers to unlabelled questions would be priors turned into
   training labels.

(1) is skipped, and said so, when no SFT-only student was trained (``train_sft_baseline: false``).
02 writes ``teacher_check.json`` (``fslib.stages.distill.check_teacher``); when the check fails, the report says so at
the top of 02 and in the headline, and 02 does not have the teacher answer the unlabelled questions.
"""

from __future__ import annotations

from pathlib import Path

from fslib.core.fsio import read_json, write_json

FILE = "teacher_check.json"
ADVICE = ("Try: a longer teacher preparation (raise teacher_epochs, its ceiling: teacher_patience stops it once "
          "validation loss stops falling) or a higher teacher_learning_rate, its vision tower unfrozen "
          "(teacher_freeze_vision: false) or LoRA adapters (teacher_lora: true), or a stronger teacher_model. "
          "Until then the SFT-only student is the one to trust; 03 picks the student to publish on validation.")


def verdict(result: dict) -> dict:
    """``result`` (n, margin, teacher_em, teacher_blind_em, student_start_em, and sft_em or None, sft_margin) with
    ``parts`` (which comparisons the teacher passed: sft, start, blind), ``ahead`` (all of them) and ``message``."""
    t, m, sft = result["teacher_em"], result["margin"], result.get("sft_em")
    result = {"sft_margin": 0.0, **result}
    parts = {"sft": sft is None or t - sft > result["sft_margin"] + 1e-9, "start": t >= result["student_start_em"] + m,
             "blind": t >= result["teacher_blind_em"] + m}
    ahead = bool(result["n"]) and all(parts.values())
    full = {"sft_em": None, **result, "parts": parts, "ahead": ahead}
    return {**full, "message": None if ahead else warning(full)}


def warning(result: dict) -> str:
    """The words the report shows when the teacher is not ahead: what it means, why (the scores), what to try."""
    if not result["n"]:
        return "The teacher could not be checked: the validation split has no labelled question. " + ADVICE
    t, m, n, parts = result["teacher_em"], result["margin"], result["n"], result["parts"]
    reasons = []
    if not parts["sft"]:
        lead = f"by more than {result['sft_margin']:.2f}" if result["sft_margin"] else "(score above it)"
        reasons.append(f"fine-tuning the student on your labels alone (the SFT-only student) already reaches "
                       f"{result['sft_em']:.3f}; the teacher needs to lead it {lead}")
    if not parts["start"]:
        reasons.append(f"it is not {m:.2f} ahead of the student's starting weights ({result['student_start_em']:.3f})")
    if not parts["blind"]:
        reasons.append(f"with every pixel grey it scores {result['teacher_blind_em']:.3f}, within {m:.2f} of its real "
                       "score: it answers from the question text, not the image")
    head = ("Distilling from this teacher will not beat fine-tuning on this data" if not parts["sft"] else
            "The teacher is not worth distilling")
    return (f"{head}: on {n} validation questions the prepared teacher's exact match is {t:.3f} (blind "
            f"{result['teacher_blind_em']:.3f}), and {'; and '.join(reasons)}. Its answers to unlabelled questions "
            f"are not used, and the KD student is not expected to beat the SFT-only one. {ADVICE}")


def write(run_dir: Path, result: dict) -> Path:
    return write_json(Path(run_dir) / FILE, result)


def read(run_dir: Path) -> dict | None:
    """02's check of a run, or None when it did not run (``teacher_check: false``, or an older run)."""
    path = Path(run_dir) / FILE
    return read_json(path) if path.exists() else None
