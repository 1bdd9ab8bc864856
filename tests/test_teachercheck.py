"""02's check that the prepared teacher is worth distilling, and where the report shows a failed one."""

import html
import json

from fslib.core import config
from fslib.engine import models
from fslib.evaluation import teachercheck
from fslib.reporting import site
from fslib.stages import distill
from fslib.training.cache import TeacherRef


def _result(teacher, student, blind=0.1, n=100, sft=None, sft_margin=0.0):
    return teachercheck.verdict({"n": n, "margin": 0.05, "teacher_em": teacher, "teacher_blind_em": blind,
                                 "student_start_em": student, "sft_em": sft, "sft_margin": sft_margin})


def test_the_teacher_must_lead_what_fine_tuning_reaches():
    # the user's digits case: a teacher far ahead of the student's start and of its blind score, below SFT
    behind = _result(0.59, 0.0, blind=0.30, sft=0.65)
    assert not behind["ahead"] and behind["parts"] == {"sft": False, "start": True, "blind": True}
    msg = behind["message"]
    assert msg.startswith("Distilling from this teacher will not beat fine-tuning on this data")
    assert "0.590" in msg and "0.650" in msg and "blind 0.300" in msg and "teacher_epochs" in msg  # why, what to try
    assert not _result(0.65, 0.0, blind=0.30, sft=0.65)["ahead"]  # level with fine-tuning is no lead
    assert _result(0.66, 0.0, blind=0.30, sft=0.65)["ahead"]  # the SFT-only student is the student: any lead counts
    assert not _result(0.66, 0.0, blind=0.30, sft=0.65, sft_margin=0.05)["ahead"]  # unless a margin is asked for
    assert "by more than 0.05" in _result(0.66, 0.0, blind=0.30, sft=0.65, sft_margin=0.05)["message"]
    assert _result(0.71, 0.0, blind=0.30)["parts"]["sft"]  # no SFT baseline trained: that part is not judged
    both = _result(0.28, 0.0, blind=0.27, sft=0.5)  # the blind part is kept beside it
    assert "answers from the question text" in both["message"] and "SFT-only student" in both["message"]


def test_the_teacher_must_lead_the_students_start_by_the_margin():
    assert _result(0.60, 0.30)["ahead"] and _result(0.60, 0.30)["message"] is None
    weak = _result(0.32, 0.30)
    assert not weak["ahead"]
    assert "is 0.320" in weak["message"] and "not 0.05 ahead of the student's starting weights (0.300)" in weak["message"]
    assert "teacher_epochs" in weak["message"] and "not used" in weak["message"]  # what to try, what 02 did
    assert "answers from the question text" not in weak["message"]
    blind = _result(0.28, 0.0, blind=0.27)  # far ahead of the student, but no better without the image
    assert not blind["ahead"] and "answers from the question text" in blind["message"]
    assert "starting weights" not in blind["message"]
    assert not _result(0.9, 0.1, n=0)["ahead"]  # nothing to check on is not a pass


def test_a_failed_check_is_in_the_headline_and_at_the_top_of_02(tmp_path):
    weak = _result(0.32, 0.30)
    assert "Teacher check failed" in site.teacher_warning_html(weak) and site.teacher_warning_html(_result(.6, .3)) == ""
    assert site.teacher_warning_html(None) == ""
    page = site.headline_html({"models": {"teacher": {"exact_match": 0.3}}, "teacher_check": weak}, "run")
    assert "Teacher check failed" in page and html.escape(weak["message"].split(".")[0]) in page


def test_answers_of_a_teacher_that_failed_its_check_are_not_used(tmp_path):
    P = {**config.default_params(), **config.load_params(config.REPO_ROOT / "params" / "tiny.yaml")}
    answered = [{"id": "u0", "answer": "2", "confidence": 0.99}]
    assert distill.keep_answers(P, tmp_path, answered, _result(0.32, 0.30)) == ([], [])


def test_check_teacher_scores_both_models_on_validation_and_writes_json(tmp_path, teacher_path, student_path,
                                                                        small_splits):
    P = {**config.default_params(), **config.load_params(config.REPO_ROOT / "params" / "tiny.yaml")}
    processor = models.load_processor(student_path)
    val = small_splits["val"] + [{**small_splits["val"][0], "id": "unlabelled", "answer": None}]
    result = distill.check_teacher({**P, "teacher_answer_tokens": 4}, tmp_path, TeacherRef(teacher_path), processor,
                                   student_path, val)
    assert result["n"] == len(small_splits["val"])  # the unlabelled record is not scored
    assert json.loads((tmp_path / "teacher_check.json").read_text()) == result == teachercheck.read(tmp_path)
    t, m = result["teacher_em"], result["margin"]  # the verdict follows the three measured scores
    assert result["ahead"] == (t >= result["student_start_em"] + m and t >= result["teacher_blind_em"] + m)
    assert (result["message"] is None) == result["ahead"]
    assert distill.check_teacher({**P, "teacher_check": False}, tmp_path, None, processor, student_path, val) is None
