"""Metric functions on hand-made examples, bootstrap coverage, the blind switch, and the metrics.json schema."""

import numpy as np
import pytest
import torch

from fslib.engine import collate
from fslib.evaluation import evaluate, metrics
from fslib.reporting import evalplots


def test_normalisation():
    assert metrics.normalize("  The Red, cup! ") == "red cup"
    assert metrics.normalize("An apple.") == "apple"
    assert metrics.normalize("") == "" and metrics.normalize(None) == ""


def test_exact_match_uses_aliases():
    assert metrics.exact_match("Mobile phone.", ["phone", "mobile phone"]) == 1.0
    assert metrics.exact_match("phone case", ["phone"]) == 0.0


def test_f1_partial_overlap_by_hand():
    # pred "red cup", gold "a red mug" -> normalised "red mug": 1 common token, P = 1/2, R = 1/2, F1 = 0.5
    assert metrics.token_f1("red cup", ["a red mug"]) == pytest.approx(0.5)
    # pred "red cup on table" vs "cup": P = 1/4, R = 1, F1 = 2 * 0.25 / 1.25 = 0.4
    assert metrics.token_f1("red cup on the table", ["cup"]) == pytest.approx(0.4)
    assert metrics.token_f1("red cup", ["a red mug", "red cup"]) == 1.0


def test_rouge_l_and_bleu_by_hand():
    # LCS("red cup", "red mug") = 1 token: P = R = 1/2, F = 0.5
    assert metrics.rouge_l("red cup", ["red mug"]) == pytest.approx(0.5)
    # LCS("blue cup on left", "blue left") = 2: P = 2/4, R = 2/2, F = 2 * 0.5 / 1.5 = 2/3
    assert metrics.rouge_l("blue cup on left", ["blue left"]) == pytest.approx(2 / 3)
    assert metrics.bleu("The cup.", ["cup"]) == pytest.approx(100.0)  # one word, exact: unigram BLEU 100
    assert metrics.bleu("book", ["cup", "mug"]) == 0.0
    assert 0 < metrics.bleu("red coffee cup", ["coffee cup"]) < 100


def test_empty_answer_scores_zero_everywhere():
    for fn in (metrics.exact_match, metrics.token_f1, metrics.rouge_l, metrics.bleu):
        assert fn("", ["cup"]) == 0.0, fn.__name__


def test_bootstrap_ci_covers_a_known_bernoulli_mean():
    """~95% of intervals from independent samples must contain the true p (binomial noise over 400 trials: +-2%)."""
    p, n, trials = 0.3, 100, 400
    rng = np.random.default_rng(123)
    hits = 0
    for t in range(trials):
        lo, hi = metrics.bootstrap_ci(rng.random(n) < p, n_resamples=1000, seed=t)
        hits += lo <= p <= hi
    assert 0.91 <= hits / trials <= 0.98


def test_bootstrap_ci_is_seeded_and_narrows_with_more_data():
    x = np.r_[np.ones(30), np.zeros(70)]
    assert metrics.bootstrap_ci(x, seed=0) == metrics.bootstrap_ci(x, seed=0)
    lo, hi = metrics.bootstrap_ci(x)
    lo4, hi4 = metrics.bootstrap_ci(np.tile(x, 4))
    assert lo < 0.3 < hi and hi4 - lo4 < hi - lo
    assert metrics.bootstrap_ci([]) is None
    assert metrics.bootstrap_ci([1, 1, 1]) == [1.0, 1.0]


RECORDS = [{"answer": "cup", "qtype": "held_object", "media": "image"},
           {"answer": "2", "aliases": ["two"], "qtype": "count", "media": "image"},
           {"answer": "left", "qtype": "video_hand", "media": "video"},
           {"answer": "red", "qtype": "colour", "media": "image"}]


def test_summarise_per_type_media_blind_and_agreement():
    s = metrics.summarise(["cup", "two", "right", "red"], RECORDS, blind=["cup", "3", "left", "blue"],
                           teacher=["cup", "2", "left", "green"])
    assert s["n"] == 4 and s["exact_match"] == 0.75 and s["blind_exact_match"] == 0.5
    assert s["agreement_with_teacher"] == 0.25  # "two" vs "2" are different answers, even if both are right
    assert s["per_type"]["video_hand"]["exact_match"] == 0.0 and s["per_type"]["count"]["n"] == 1
    assert s["per_media"]["image"]["n"] == 3 and s["per_media"]["image"]["exact_match"] == 1.0
    assert s["per_media"]["video"]["blind_exact_match"] == 1.0
    lo, hi = s["exact_match_ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1


def test_prior_baseline_answers_the_majority_per_type():
    train = [{"qtype": "colour", "answer": "red"}, {"qtype": "colour", "answer": "red"},
             {"qtype": "colour", "answer": "blue"}, {"qtype": "count", "answer": "2"}]
    evalset = [{"qtype": "colour", "answer": "red"}, {"qtype": "colour", "answer": "blue"},
               {"qtype": "count", "answer": "2", "aliases": ["two"]}]
    b = metrics.prior_baseline(train, evalset)
    assert b["per_type"] == {"colour": 0.5, "count": 1.0} and b["exact_match"] == pytest.approx(2 / 3)


def test_blind_switch_blanks_pixels_and_keeps_the_text(processor, pixels, small_splits):
    recs = [r for r in small_splits["test"] if r["media"] == "image"][:1] + \
           [r for r in small_splits["test"] if r["media"] == "video"][:1]
    seen = collate.VQACollator(processor, pixels, train=False)(recs)["inputs"]
    blind = collate.VQACollator(processor, pixels, train=False, blind=True)(recs)["inputs"]
    assert torch.equal(seen["input_ids"], blind["input_ids"])
    for key in ("pixel_values", "pixel_values_videos"):
        assert seen[key].shape == blind[key].shape and not torch.equal(seen[key], blind[key])
        assert blind[key].std(0).max() < 1e-5 < seen[key].std(0).max()  # every patch is the same grey


def test_benchmark_rows_and_variants():
    models = {"teacher": {"path": "/t", "role": "teacher"}, "student": {"path": "/s", "role": "KD student"}}
    rows = evaluate.benchmark_rows(models, ["teacher:int8", "student:nf4", "teacher:bfloat16"], "float32")
    assert list(rows) == ["teacher", "student", "teacher_int8", "student_nf4", "teacher_bf16"]
    assert rows["teacher_int8"] == {"path": "/t", "role": "teacher, INT8", "dtype": "float32", "quantization": "int8",
                                    "variant_of": "teacher"}
    assert rows["teacher_bf16"]["dtype"] == "bfloat16" and rows["teacher_bf16"]["quantization"] == "none"
    with pytest.raises(ValueError, match="no model 'sft'"):
        evaluate.benchmark_rows(models, ["sft:int8"], "float32")


def _row(name, em_answers, variant_of=None):
    speed = {"ttft_s": 0.01, "ttft_p90_s": 0.02, "decode_s_per_token": 0.002, "decode_p90_s_per_token": 0.003,
             "latency_s": 0.03, "latency_p90_s": 0.04, "tokens_per_s": 100.0, "weights_bytes": 4e6,
             "decode_bytes_per_token": 2e6, "peak_bytes": 9e8, "peak_bytes_by_batch": {"1": 9e8}, "baseline_bytes": 8e8,
             "bandwidth_utilisation": None, "params": 10**6, "params_vision": 4 * 10**5, "params_language": 6 * 10**5,
             "generated_tokens": [8], "visual_tokens": 16, "prompt_tokens": 40, "load_s": 1.0,
             "throughput": {"1": {"tokens_per_s": 100.0}, "4": {"tokens_per_s": 300.0}},
             "ttft_samples": [0.01, 0.012], "decode_samples": [0.002, 0.0021], "device": "cpu", "device_name": "cpu",
             "image_size": [112, 112]}
    answers = {"test": {"normal": em_answers, "blind": ["x"] * len(em_answers)}} if em_answers else {}
    return {"role": name, "path": f"/{name}", "dtype": "float32", "quantization": "none" if not variant_of else "int8",
            "variant_of": variant_of, "answers": answers, **speed}


def test_metrics_schema_keeps_the_keys_04_reads():
    records = {"test": RECORDS}
    results = {"teacher": _row("teacher", ["cup", "2", "left", "red"]),
               "student": _row("student", ["cup", "3", "x", "red"]),
               "teacher_int8": _row("teacher_int8", None, variant_of="teacher")}
    scored = metrics.score_models(results, records, n_resamples=200)
    doc = evaluate.build_metrics(results, scored, split="test", records=records, train=RECORDS, params={"a": 1},
                                     protocol={"summary": "three\nlines\nhere", "new_tokens": 8}, dataset={"type": "x"},
                                     blind_splits=["test"], accuracy_note=None)
    for key in ("split", "n_eval", "params", "dataset", "environment", "protocol", "blind", "accuracy"):
        assert key in doc
    assert doc["protocol"]["summary"] and doc["protocol"]["new_tokens"] == 8
    s = doc["models"]["student"]
    for key in ("params", "params_vision", "params_language", "exact_match", "exact_match_ci", "f1", "rouge_l", "bleu",
                "blind_exact_match", "ttft_s", "decode_s_per_token", "throughput", "weights_bytes", "peak_bytes",
                "latency_s", "agreement_with_teacher"):
        assert s[key] is not None, key
    assert s["exact_match"] == 0.5 and s["agreement_with_teacher"] == 0.5
    assert s["throughput"] == {"1": 100.0, "4": 300.0}
    assert doc["models"]["teacher_int8"]["exact_match"] is None  # speed-only row: nothing invented
    assert doc["models"]["teacher"]["agreement_with_teacher"] is None
    import json
    json.dumps(doc)  # serialisable as is

    # every figure and table of 03 renders from this document
    for fn in (evalplots.model_table, evalplots.accuracy_table, evalplots.blind_table, evalplots.split_tables,
               evalplots.plot_accuracy_by_type, evalplots.plot_latency, evalplots.plot_memory, evalplots.plot_pareto):
        assert fn(doc) is not None
    doc["accuracy"] = {"computed": False, "note": "not computed: random weights"}
    assert "not computed" in evalplots.plot_pareto(doc)


def test_pareto_front_by_hand():
    pts = {"fast_bad": (1.0, 0.2), "slow_good": (5.0, 0.9), "dominated": (6.0, 0.5), "middle": (2.0, 0.6)}
    assert sorted(evalplots.pareto_front(pts)) == ["fast_bad", "middle", "slow_good"]


def test_failures_interleave_images_and_clips():
    recs = [{"answer": "cup", "media": "image"}, {"answer": "left", "media": "video"},
            {"answer": "red", "media": "image"}, {"answer": "keys", "media": "image"}]
    assert evalplots.failures(recs, {"student": ["x", "x", "red", "x"]}, n=3) == [0, 1, 3]


def test_prior_baseline_leaves_unlabelled_training_rows_out():
    # a user's train split: many unlabelled rows (answer None) must not make None the "most frequent answer"
    train = [{"qtype": "digit", "answer": "3"}] * 2 + [{"qtype": "digit", "answer": None}] * 5
    prior = metrics.prior_baseline(train, [{"qtype": "digit", "answer": "3"}, {"qtype": "digit", "answer": "4"}])
    assert prior["answers"] == {"digit": "3"} and prior["per_type"] == {"digit": 0.5}
