"""Speed, measured so that models are comparable: same inputs, same number of generated tokens, warm-up excluded.

Time-to-first-token is the time of a generate call that produces exactly one token (prefill + one step); the
per-token decode time is ``(t(N) - t(1)) / (N - 1)`` for a call forced to produce exactly N tokens
(``min_new_tokens == max_new_tokens``), so a model that stops early cannot look faster.
"""

from __future__ import annotations

import statistics
import time

import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_generate(model, inputs: dict, n_tokens: int) -> tuple[float, int]:
    _sync()
    t0 = time.perf_counter()
    out = model.generate(**inputs, min_new_tokens=n_tokens, max_new_tokens=n_tokens, do_sample=False)
    _sync()
    return time.perf_counter() - t0, out.shape[1] - inputs["input_ids"].shape[1]


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@torch.no_grad()
def measure_latency(model, inputs: dict, *, new_tokens: int, warmup: int, repeats: int) -> dict:
    """Median and p90 of time-to-first-token and per-token decode time over ``repeats`` timed runs."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate prefill from decode")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    model.eval()
    for _ in range(warmup):  # excluded: first calls pay for allocation and kernel selection
        _timed_generate(model, inputs, new_tokens)
    ttft, full, generated = [], [], set()
    for _ in range(repeats):
        t1, _ = _timed_generate(model, inputs, 1)
        tn, n = _timed_generate(model, inputs, new_tokens)
        ttft.append(t1)
        full.append(tn)
        generated.add(n)
    if generated != {new_tokens}:
        raise RuntimeError(f"generated {generated} tokens, expected exactly {new_tokens}")
    decode = [max(tn - t1, 0.0) / (new_tokens - 1) for t1, tn in zip(ttft, full)]
    batch = inputs["input_ids"].shape[0]
    return {"ttft_s": statistics.median(ttft), "ttft_p90_s": percentile(ttft, 0.9),
            "decode_s_per_token": statistics.median(decode), "decode_p90_s_per_token": percentile(decode, 0.9),
            "latency_s": statistics.median(full), "latency_p90_s": percentile(full, 0.9),
            "tokens_per_s": batch * new_tokens / statistics.median(full), "batch_size": batch,
            "new_tokens": new_tokens, "ttft_samples": ttft, "decode_samples": decode}
