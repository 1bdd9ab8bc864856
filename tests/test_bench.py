import pytest

from fslib import bench, collate, models


def test_every_model_generates_the_same_number_of_tokens(teacher_path, student_path, processor, pixels, small_splits):
    inputs = collate.VQACollator(processor, pixels, train=False)(small_splits["test"][:1])["inputs"]
    for path in (teacher_path, student_path):
        model = models.load_model(path, frozen=True)
        r = bench.measure_latency(model, inputs, new_tokens=5, warmup=1, repeats=2)
        assert r["new_tokens"] == 5 and len(r["ttft_samples"]) == 2
        assert r["ttft_s"] > 0 and r["decode_s_per_token"] >= 0


def test_warmup_is_excluded(monkeypatch):
    calls = []

    def fake(model, inputs, n):
        calls.append(n)
        return (100.0 if len(calls) == 1 else 1.0 * n), n  # the first (warm-up) call is very slow

    monkeypatch.setattr(bench, "_timed_generate", fake)

    class M:
        def parameters(self):
            import torch
            yield torch.zeros(1)

        def eval(self):
            pass

    import torch
    r = bench.measure_latency(M(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, new_tokens=4, warmup=1, repeats=3)
    assert r["ttft_s"] == 1.0 and r["latency_s"] == 4.0 and r["decode_s_per_token"] == pytest.approx(1.0)


def test_short_outputs_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(bench, "_timed_generate", lambda m, i, n: (1.0, min(n, 2)))

    class M:
        def parameters(self):
            yield torch.zeros(1)

        def eval(self):
            pass

    with pytest.raises(RuntimeError, match="expected exactly 6"):
        bench.measure_latency(M(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, new_tokens=6, warmup=0, repeats=1)
