import pytest

from fslib import evaluate


def test_normalisation():
    assert evaluate.normalize("  The Red, cup! ") == "red cup"
    assert evaluate.normalize("") == ""


def test_exact_match_uses_aliases():
    assert evaluate.exact_match("Mobile phone.", ["phone", "mobile phone"]) == 1.0
    assert evaluate.exact_match("phone case", ["phone"]) == 0.0


def test_f1_partial_overlap_by_hand():
    # pred "red cup", gold "a red mug" -> normalised "red mug": 1 common token, P = 1/2, R = 1/2, F1 = 0.5
    assert evaluate.token_f1("red cup", ["a red mug"]) == pytest.approx(0.5)
    assert evaluate.token_f1("red cup", ["a red mug", "red cup"]) == 1.0


def test_empty_answer_scores_zero():
    assert evaluate.token_f1("", ["cup"]) == 0.0
    assert evaluate.exact_match("", ["cup"]) == 0.0


def test_score_per_type():
    recs = [{"answer": "cup", "qtype": "held_object"}, {"answer": "2", "aliases": ["two"], "qtype": "count"}]
    s = evaluate.score(["cup", "two"], recs)
    assert s["exact_match"] == 1.0 and s["per_type"]["count"]["n"] == 1
    s = evaluate.score(["book", "two"], recs)
    assert s["exact_match"] == 0.5 and s["per_type"]["held_object"]["exact_match"] == 0.0


def test_agreement():
    assert evaluate.agreement(["a", "B"], ["a", "b"]) == 1.0
    assert evaluate.agreement(["a", "c"], ["a", "b"]) == 0.5
