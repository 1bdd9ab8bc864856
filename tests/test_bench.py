"""The benchmark protocol: warm-up excluded, the same number of generated tokens for every model, weight bytes and
parameter splits as stored, and peak memory that is never carried from one model to the next."""

import pytest
import torch

from fslib.engine import collate, models, randominit
from fslib.evaluation import bench, isolation
from fslib.world import embedded, synth


class _Fake:
    """Just enough of a model for measure_latency: parameters() and eval()."""

    def parameters(self):
        yield torch.zeros(1)

    def eval(self):
        pass


def test_every_model_generates_the_same_number_of_tokens(teacher_path, student_path, processor, pixels, small_splits):
    inputs = collate.VQACollator(processor, pixels, train=False)(small_splits["test"][:1])["inputs"]
    for path in (teacher_path, student_path):
        model = models.load_model(path, frozen=True)
        r = bench.measure_latency(model, inputs, new_tokens=5, warmup=1, repeats=2)
        assert r["generated_tokens"] == [5] and len(r["ttft_samples"]) == 2
        assert r["ttft_s"] > 0 and r["decode_s_per_token"] >= 0


def _run(total, n, ttft=None, decode=None):
    return {"total": total, "generated": n, "ttft": total / 4 if ttft is None else ttft,
            "decode": total / 8 if decode is None else decode}


def test_warmup_is_excluded(monkeypatch):
    calls = []

    def fake(model, inputs, n):
        calls.append(n)
        return _run(100.0 if len(calls) == 1 else 4.0, n)  # the first (warm-up) call is very slow

    monkeypatch.setattr(bench, "_timed_generate", fake)
    r = bench.measure_latency(_Fake(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, new_tokens=4, warmup=1,
                              repeats=3)
    assert calls == [4, 4, 4, 4]  # one warm-up, then three timed runs, every one forced to 4 tokens
    assert r["latency_s"] == 4.0 and r["ttft_s"] == 1.0 and r["decode_s_per_token"] == 0.5
    assert 100.0 not in r["latency_samples"] and len(r["ttft_samples"]) == 3


def test_median_and_p90_by_hand(monkeypatch):
    ttfts = iter([1.0, 2.0, 3.0, 4.0, 10.0])
    monkeypatch.setattr(bench, "_timed_generate", lambda m, i, n: _run(9.0, n, ttft=next(ttfts), decode=0.5))
    r = bench.measure_latency(_Fake(), {"input_ids": torch.zeros(1, 2, dtype=torch.long)}, new_tokens=5, warmup=0,
                              repeats=5)
    assert r["ttft_s"] == 3.0 and r["ttft_p90_s"] == pytest.approx(4 + 0.6 * 6)  # sorted 1,2,3,4,10
    assert r["decode_s_per_token"] == 0.5 and r["tokens_per_s"] == pytest.approx(5 / 9)


def test_short_outputs_are_refused(monkeypatch):
    monkeypatch.setattr(bench, "_timed_generate", lambda m, i, n: _run(1.0, min(n, 2)))
    with pytest.raises(RuntimeError, match="expected exactly 6"):
        bench.measure_latency(_Fake(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, new_tokens=6, warmup=0,
                              repeats=1)


def test_step_clock_times_prefill_and_decode_in_one_run(student_path, processor, pixels, small_splits):
    """TTFT precedes the end of the call; N-1 decode steps fit inside the call; every step was timed."""
    model = models.load_model(student_path, frozen=True)
    inputs = collate.VQACollator(processor, pixels, train=False)(small_splits["test"][:1])["inputs"]
    r = bench._timed_generate(model, inputs, 6)
    assert r["generated"] == 6 and 0 < r["ttft"] < r["total"]
    assert 0 < 5 * r["decode"] < r["total"] - r["ttft"] + 1e-3


def test_memory_split_by_hand(student_path):
    model = models.load_model(student_path, frozen=True)
    m = bench.memory_split(model)
    assert {k: m[k] for k in ("params", "params_vision", "params_language")} == models.param_counts(model)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert m["weights_bytes"] == 4 * m["params"] + buffers
    # decode reads the language model and lm_head, not the vision tower nor the (untied) input embedding
    embed = model.get_input_embeddings().weight.numel()
    assert m["decode_bytes_per_token"] == 4 * (m["params_language"] - embed)


def test_quantised_rows_count_real_bytes_and_logical_params(student_path):
    full = bench.memory_split(models.load_model(student_path, frozen=True))
    nf4 = bench.memory_split(models.load_model(student_path, quantization="nf4", frozen=True))
    assert nf4["params"] == full["params"]  # 4-bit packs two values per byte; the count must not halve
    assert nf4["weights_bytes"] < full["weights_bytes"]


def test_bandwidth_utilisation_formula():
    assert bench.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.peak_bandwidth("cpu") is None
    # 4.4 GB of weights per token in 1.5 ms on a 4.8 TB/s device: 4.4e9 / 1.5e-3 / 4.8e12 = 0.6111
    assert bench.bandwidth_utilisation(4.4e9, 1.5e-3, 4.8e12) == pytest.approx(0.61111, rel=1e-4)
    assert bench.bandwidth_utilisation(4.4e9, 1.5e-3, None) is None


def _spec(name, path, data_dir, pixels, **kw):
    return {"name": name, "path": str(path), "dtype": "float32", "quantization": "none", "data_dir": str(data_dir),
            "split": "test", "pixels": pixels, "max_length": 256, "new_tokens": 3, "warmup": 1, "repeats": 2,
            "batch_sizes": [1, 2], **kw}


@pytest.mark.slow
def test_peak_memory_is_not_carried_from_one_model_to_the_next(tmp_path, student_path, small_data_dir, pixels):
    """A big model (real 151,936-row vocabulary, ~320 MB of weights) measured first, then the tiny student: each in
    its own process, so the small one's peak is far below the big one's (one process would report the big peak)."""
    big = embedded.resolve_model("random-init:cpu-medium", tmp_path, corpus_fn=synth.corpus_text)
    r_big = isolation.run_isolated(_spec("big", big, small_data_dir, pixels), tmp_path / "bench")
    r_small = isolation.run_isolated(_spec("small", student_path, small_data_dir, pixels), tmp_path / "bench")
    assert r_big["weights_bytes"] > 300e6 > 10e6 > r_small["weights_bytes"]
    assert r_big["peak_bytes"] - r_big["baseline_bytes"] > 300e6
    assert r_small["peak_bytes"] < r_big["peak_bytes"] - 200e6
    assert r_big["generated_tokens"] == r_small["generated_tokens"] == [3]
    assert r_big["visual_tokens"] == r_small["visual_tokens"]  # the same image reached both
    assert set(r_small["throughput"]) == {"1", "2"} and r_small["answers"] == {}


@pytest.mark.slow
def test_worker_answers_blind_only_where_asked(tmp_path, student_path, small_data_dir, pixels):
    spec = _spec("student", student_path, small_data_dir, pixels, batch_sizes=[1], answer_splits=["test", "ood"],
                 blind_splits=["test"], eval_batch_size=4, max_new_tokens=3)
    r = isolation.run_isolated(spec, tmp_path)
    assert set(r["answers"]["test"]) == {"normal", "blind"} and set(r["answers"]["ood"]) == {"normal"}
    assert len(r["answers"]["test"]["blind"]) == 6


def test_protocol_summary_is_three_checkable_lines():
    row = {"device": "cpu", "device_name": "cpu", "visual_tokens": 16, "image_size": [112, 112]}
    p = bench.protocol({"a": row, "b": row}, new_tokens=8, warmup=2, repeats=5, batch_sizes=[1, 4], dtype="float32",
                       max_new_tokens=8, n_resamples=1000, seed=0)
    lines = p["summary"].splitlines()
    assert len(lines) == 3
    assert "fresh process" in lines[0] and "exactly 8 tokens" in lines[1] and "2 warm-up" in lines[2]
    assert p["new_tokens"] == 8 and p["versions"]["torch"]


@pytest.mark.gpu
def test_gpu_peak_is_reset_per_model():
    ids = torch.randint(0, 1000, (1, 16), device="cuda")
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    peaks = []
    for dtype in (torch.float32, torch.bfloat16):  # the same shapes, half the bytes the second time
        model = randominit.build_model(randominit.config("cpu-medium"), dtype=dtype, device="cuda")
        peaks.append(bench.measure_loaded(model, {1: inputs}, device="cuda", new_tokens=3, warmup=1,
                                          repeats=2)["peak_bytes"])
        del model
        torch.cuda.empty_cache()
    assert peaks[1] < 0.75 * peaks[0]  # carried over, the second peak would equal the first
