"""03's student to trust (chosen on validation), 04 publishing it, and a card that never claims distillation helped
when it did not: the decision on small cases, from metrics.json-shaped dicts."""

import pytest

from fslib.evaluation import choice, formatting
from fslib.publishing import card
from fslib.reporting import site
from fslib.stages import publish


def _block(em, ci):
    return {"exact_match": em, "exact_match_ci": list(ci), "n": 100}


def _model(test, test_ci, val, role):
    return {"role": role, "exact_match": test, "exact_match_ci": list(test_ci), "params": 10, "variant_of": None,
            "by_split": {"test": _block(test, test_ci), "val": _block(val, (val - .1, val + .1))}}


def _metrics(kd, sft, kd_val, sft_val, kd_labelled_val=None):
    """The digits case by default shape: teacher behind fine-tuning; test scores with their intervals."""
    models = {"teacher": _model(.59, (.55, .63), .60, "teacher"),
              "student": _model(kd, (kd - .04, kd + .04), kd_val, "KD student"),
              "sft_student": _model(sft, (sft - .04, sft + .04), sft_val, "SFT-only student"),
              "base_student": _model(0.0, (0.0, 0.0), 0.0, "student's starting weights")}
    if kd_labelled_val is not None:
        models["kd_labelled_student"] = _model(.5, (.46, .54), kd_labelled_val, "KD student, labelled questions only")
    metrics = {"split": "test", "n_eval": 600, "models": models, "dataset": {"type": "user", "name": "digits"}}
    metrics["choice"] = choice.choose(models, select_split="val", report_split="test")
    return metrics


TRAINED = {"teacher_model": "embedded:tiny-teacher", "student_model": "embedded:tiny-student", "embedded": True,
           "models": {"student": {"path": "/run/kd_student/best"}, "sft_student": {"path": "/run/sft_student/best"},
                      "kd_labelled_student": {"path": "/run/kd_labelled_student/best"}},
           "training_by_model": {"student": {"alpha": 0.7}, "sft_student": {"alpha": 0.0}}}


def test_sft_wins_on_validation_so_it_is_named_published_and_the_card_does_not_claim_distillation():
    metrics = _metrics(kd=.55, sft=.648, kd_val=.58, sft_val=.66)
    c = metrics["choice"]
    assert c["model"] == "sft_student" and c["split"] == "val" and not c["distilled"]
    assert c["verdict"]["verdict"] == "SFT above KD" and not c["verdict"]["kd_helped"]
    assert "0.660" in c["reason"] and "[0.510, 0.590]" in c["reason"] and "did not help" in c["reason"]
    assert "`sft_student`" in formatting.summary_line(metrics, "digits")  # the headline names it
    assert "sft_student" in site.headline_html(metrics, "digits")
    key = publish.model_to_publish(metrics, "best")  # 04's default
    assert key == "sft_student" and publish.checkpoint_of(TRAINED, key) == "/run/sft_student/best"
    text = str(card.build_card(metrics, TRAINED, model_key=key, model_name="mine"))
    assert "fine-tuned from **embedded:tiny-student** on the labelled questions alone" in text
    assert "distilled from" not in text.split("## Results")[0] and "knowledge-distillation" not in text
    assert "distillation did not help" in text and "`alpha` | `0.0`" in text  # the published model's own training


def test_publish_model_student_forces_the_kd_student_and_the_card_says_it_was_not_the_choice():
    metrics = _metrics(kd=.55, sft=.648, kd_val=.58, sft_val=.66)
    assert publish.model_to_publish(metrics, "student") == "student"
    text = str(card.build_card(metrics, TRAINED, model_key="student", model_name="mine"))
    assert "Published as asked (`publish_model: student`)" in text and "03 chose `sft_student`" in text
    assert "Distillation is not shown to have helped" in text and "distillation helped" not in text


def test_kd_wins_on_validation_and_test_so_the_card_says_distillation_helped():
    metrics = _metrics(kd=.70, sft=.55, kd_val=.72, sft_val=.50, kd_labelled_val=.60)
    c = metrics["choice"]
    assert c["model"] == "student" and c["distilled"] and c["verdict"]["kd_helped"]
    assert publish.model_to_publish(metrics, "best") == "student"
    text = str(card.build_card(metrics, TRAINED, model_key="student", model_name="mine"))
    assert "distilled from **embedded:tiny-teacher**" in text and "distillation helped" in text
    assert "knowledge-distillation" in text


def test_kd_chosen_on_validation_with_overlapping_test_intervals_is_not_called_a_help():
    metrics = _metrics(kd=.60, sft=.58, kd_val=.62, sft_val=.60)
    c = metrics["choice"]
    assert c["model"] == "student" and c["verdict"]["verdict"] == "no difference shown"
    text = str(card.build_card(metrics, TRAINED, model_key="student", model_name="mine"))
    assert "was not shown to help" in text and "distillation helped" not in text


@pytest.mark.parametrize("kd_labelled_val", [None, .66])
def test_a_tie_on_validation_goes_to_the_student_that_needs_less(kd_labelled_val):
    metrics = _metrics(kd=.60, sft=.58, kd_val=.66, sft_val=.66, kd_labelled_val=kd_labelled_val)
    assert metrics["choice"]["model"] == "sft_student" and "tied" in metrics["choice"]["reason"]


def test_the_choice_is_made_on_validation_never_on_test():
    # KD better on test, SFT better on validation: validation decides
    metrics = _metrics(kd=.70, sft=.55, kd_val=.50, sft_val=.52)
    assert metrics["choice"]["model"] == "sft_student" and metrics["choice"]["verdict"]["kd_helped"]
    assert choice.choose(metrics["models"], select_split=None, report_split="test") is None
    assert publish.model_to_publish({**metrics, "choice": None}, "best") == "student"  # no choice: the KD student
