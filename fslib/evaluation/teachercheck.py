"""Is the prepared teacher worth distilling? 02 asks before it distils, on the labelled validation questions.

The rule: the teacher's greedy exact match must be at least ``margin`` above the student's starting weights on the
same questions; a teacher that does no better than the student already does has nothing to teach, and its answers to
unlabelled questions would be guesses turned into training labels. The blind control (every pixel grey) says whether
the teacher reads the image at all: a blind score near its real one means it answers from the question text alone.
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
    ahead = bool(result["n"]) and result["teacher_em"] >= result["student_start_em"] + result["margin"]
    return {**result, "ahead": ahead, "message": None if ahead else warning(result)}


def warning(result: dict) -> str:
    """The words the report shows when the teacher is not ahead."""
    if not result["n"]:
        return "The teacher could not be checked: the validation split has no labelled question. " + ADVICE
    blind = (f" Its blind score ({result['teacher_blind_em']:.3f}, every pixel grey) is close to its real one: it "
             "answers from the question text, not the image." if result["teacher_blind_em"] >= result["teacher_em"] - 0.02
             else "")
    return (f"The teacher is not worth distilling: on {result['n']} validation questions its exact match is "
            f"{result['teacher_em']:.3f}, against {result['student_start_em']:.3f} for the student's starting weights "
            f"(the check asks for at least {result['margin']:.2f} more).{blind} Its answers to unlabelled questions are "
            f"not used, and the KD student may not beat the SFT-only one. {ADVICE}")


def write(run_dir: Path, result: dict) -> Path:
    return write_json(Path(run_dir) / FILE, result)


def read(run_dir: Path) -> dict | None:
    """02's check of a run, or None when it did not run (``teacher_check: false``, or an older run)."""
    path = Path(run_dir) / FILE
    return read_json(path) if path.exists() else None
