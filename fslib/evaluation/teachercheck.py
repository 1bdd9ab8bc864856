"""Is the prepared teacher worth distilling? 02 asks before it distils, on the labelled validation questions.

The rule, both parts on the same questions: the teacher's greedy exact match must be at least ``margin`` above
(1) the student's starting weights, since a teacher that does no better than the student already does has nothing
to teach, and (2) its own blind score (every pixel grey), since a teacher that scores as well without the image
answers from the question text alone: its answers to unlabelled questions would be priors turned into training
labels. (2) is what catches a teacher whose answers are the most frequent ones of each question type.
02 writes ``teacher_check.json`` (``fslib.stages.distill.check_teacher``); when the check fails, the report says so at
the top of 02 and in the headline, and 02 does not use the teacher's answers to unlabelled questions.
"""

from __future__ import annotations

from pathlib import Path

from fslib.core.fsio import read_json, write_json

FILE = "teacher_check.json"
ADVICE = ("Try: a longer or stronger teacher preparation (teacher_epochs, teacher_learning_rate), its vision tower "
          "unfrozen (teacher_freeze_vision: false) or LoRA adapters (teacher_lora: true), or a stronger "
          "teacher_model. Until then the SFT-only student is the one to trust.")


def verdict(result: dict) -> dict:
    """``result`` (n, margin, teacher_em, teacher_blind_em, student_start_em) with ``ahead`` and ``message``."""
    t, m = result["teacher_em"], result["margin"]
    ahead = bool(result["n"]) and t >= result["student_start_em"] + m and t >= result["teacher_blind_em"] + m
    return {**result, "ahead": ahead, "message": None if ahead else warning(result)}


def warning(result: dict) -> str:
    """The words the report shows when the teacher is not ahead."""
    if not result["n"]:
        return "The teacher could not be checked: the validation split has no labelled question. " + ADVICE
    t, m = result["teacher_em"], result["margin"]
    reasons = []
    if t < result["student_start_em"] + m:
        reasons.append(f"it is not {m:.2f} ahead of the student's starting weights ({result['student_start_em']:.3f})")
    if t < result["teacher_blind_em"] + m:
        reasons.append(f"with every pixel grey it scores {result['teacher_blind_em']:.3f}, within {m:.2f} of its real "
                       "score: it answers from the question text, not the image")
    return (f"The teacher is not worth distilling: on {result['n']} validation questions its exact match is {t:.3f}, "
            f"and {'; and '.join(reasons)}. Its answers to unlabelled questions are not used, and the KD student may "
            f"not beat the SFT-only one. {ADVICE}")


def write(run_dir: Path, result: dict) -> Path:
    return write_json(Path(run_dir) / FILE, result)


def read(run_dir: Path) -> dict | None:
    """02's check of a run, or None when it did not run (``teacher_check: false``, or an older run)."""
    path = Path(run_dir) / FILE
    return read_json(path) if path.exists() else None
