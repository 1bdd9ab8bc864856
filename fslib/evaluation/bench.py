"""Speed and memory, measured so that models are comparable: one model per fresh process, same inputs, same number
of generated tokens, warm-up excluded, median and p90 of repeated runs.

Formulas (N = ``new_tokens``; every generate call is greedy with ``min_new_tokens == max_new_tokens``):

- ``ttft_s``: from the generate call to the first token's logits (input preparation + prefill: vision tower and
  prompt), read by a logits processor that only records the time of each step.
- ``decode_s_per_token`` = (time of token N's logits - time of token 1's logits) / (N - 1), in the same run.
- ``latency_s``: the whole call, N tokens. Medians and p90 are over ``repeats`` runs after ``warmup`` discarded ones.
- ``throughput[b].tokens_per_s`` = b * N / median t_b(N), on b distinct images (batch size b).
- ``weights_bytes`` = sum of numel * element_size over unique parameters and buffers, as stored (INT8 and packed
  4-bit weights count their real bytes).
- ``decode_bytes_per_token`` = bytes one decode step must read: the language model's layers, final norm and lm_head;
  not the vision tower (prefill only) nor the input embedding (one row per token) unless it is tied to lm_head.
- ``bandwidth_utilisation`` = decode_bytes_per_token / decode_s_per_token / peak bandwidth of the GPU (batch 1; a lower
  bound, as KV-cache reads are not counted). None on CPU or on an unknown GPU.
- ``peak_bytes`` (batch 1) and ``peak_bytes_by_batch``: on a GPU ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` (reset before each batch size); on CPU the peak resident set of the worker process
  (``getrusage(RUSAGE_SELF).ru_maxrss``), which includes the Python/torch runtime, ``baseline_bytes``, measured
  before the model is loaded. Batch sizes run in increasing order, so the running peak after batch b is its peak.

The worker (``run_isolated``, or ``python -m fslib.evaluation.bench --spec spec.json --out result.json``) loads one model,
measures it, optionally answers questions for the accuracy evaluation (after the measurements, so they cannot raise
its peak), writes JSON and exits: nothing of one model (weights, allocator caches, peak counters) reaches the next.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from fslib.data import store
from fslib.engine import collate, generate, models, randominit

# Peak memory bandwidth in bytes/s, from the vendors' data sheets; matched by substring of the device name, in order.
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
                  ("L40S", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("A10", 0.6e12), ("V100", 0.9e12),
                  ("RTX 4090", 1.008e12), ("T4", 0.32e12))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def peak_bandwidth(name: str) -> float | None:
    return next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _StepClock:
    """A logits processor that only records when each generation step's logits are ready (one call per token)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        _sync()  # on a GPU the logits are ready only once the queued kernels have run
        self.stamps.append(time.perf_counter())
        return scores


def _timed_generate(model, inputs: dict, n_tokens: int) -> dict:
    """One greedy generate forced to exactly ``n_tokens``: total time, tokens generated, TTFT and decode per token."""
    from transformers import LogitsProcessorList

    clock = _StepClock()
    _sync()
    t0 = time.perf_counter()
    out = model.generate(**inputs, min_new_tokens=n_tokens, max_new_tokens=n_tokens, do_sample=False,
                         logits_processor=LogitsProcessorList([clock]))
    _sync()
    total = time.perf_counter() - t0
    stamps = clock.stamps
    return {"total": total, "generated": out.shape[1] - inputs["input_ids"].shape[1], "ttft": stamps[0] - t0,
            "decode": (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in 0..1 (numpy's default method)."""
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _to(inputs: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def _check_lengths(runs: list[dict], new_tokens: int) -> None:
    generated = {r["generated"] for r in runs}
    if generated != {new_tokens}:
        raise RuntimeError(f"generated {sorted(generated)} tokens, expected exactly {new_tokens}")


@torch.no_grad()
def measure_latency(model, inputs: dict, *, new_tokens: int, warmup: int, repeats: int) -> dict:
    """Median and p90 of time-to-first-token and per-token decode time over ``repeats`` timed runs."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate prefill from decode")
    inputs = _to(inputs, next(model.parameters()).device)
    model.eval()
    for _ in range(warmup):  # excluded: first calls pay for allocation, kernel selection and caches
        _timed_generate(model, inputs, new_tokens)
    runs = [_timed_generate(model, inputs, new_tokens) for _ in range(repeats)]
    _check_lengths(runs, new_tokens)
    ttft, decode, full = ([r[k] for r in runs] for k in ("ttft", "decode", "total"))
    batch = inputs["input_ids"].shape[0]
    return {"ttft_s": statistics.median(ttft), "ttft_p90_s": percentile(ttft, 0.9),
            "decode_s_per_token": statistics.median(decode), "decode_p90_s_per_token": percentile(decode, 0.9),
            "latency_s": statistics.median(full), "latency_p90_s": percentile(full, 0.9),
            "tokens_per_s": batch * new_tokens / statistics.median(full), "batch_size": batch,
            "new_tokens": new_tokens, "generated_tokens": sorted({r["generated"] for r in runs}),
            "ttft_samples": ttft, "decode_samples": decode, "latency_samples": full}


def measure_throughput(model, inputs: dict, *, new_tokens: int, warmup: int, repeats: int) -> dict:
    """Generated tokens per second at the batch size of ``inputs``: b * N / median t(N)."""
    inputs = _to(inputs, next(model.parameters()).device)
    for _ in range(warmup):
        _timed_generate(model, inputs, new_tokens)
    runs = [_timed_generate(model, inputs, new_tokens) for _ in range(repeats)]
    _check_lengths(runs, new_tokens)
    times = [r["total"] for r in runs]
    b = inputs["input_ids"].shape[0]
    return {"tokens_per_s": b * new_tokens / statistics.median(times), "latency_s": statistics.median(times),
            "latency_p90_s": percentile(times, 0.9)}


def _numel(p) -> int:
    """Logical parameter count; bitsandbytes 4-bit packs two values per byte and keeps the shape in quant_state."""
    state = getattr(p, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else p.numel()


def memory_split(model) -> dict:
    """Parameter counts (vision/language, as ``sum(p.numel())``) and weight bytes as stored."""
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    vision_ids = {id(p) for p in visual.parameters()} if visual is not None else set()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    params = list(model.parameters())  # unique: a tied lm_head/embedding appears once
    bytes_of = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    total = sum(_numel(p) for p in params)
    vision = sum(_numel(p) for p in params if id(p) in vision_ids)
    decode = [p for p in params if id(p) not in vision_ids and (p is not embed or embed is head)]
    return {"params": total, "params_vision": vision, "params_language": total - vision,
            "weights_bytes": bytes_of(params) + bytes_of(model.buffers()), "decode_bytes_per_token": bytes_of(decode)}


def peak_so_far(device: str) -> int:
    """GPU: bytes allocated at peak since the last reset; CPU: peak RSS of this process (Linux reports KiB)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the CPU peak cannot be reset: that is why each model gets a process


def measure_loaded(model, batches: dict[int, dict], *, device: str, new_tokens: int, warmup: int,
                   repeats: int) -> dict:
    """Everything for one loaded model: latency at batch 1, throughput and peak memory at every batch size."""
    out = {**memory_split(model), "device_name": device_name(device), "throughput": {}, "peak_bytes_by_batch": {}}
    for b in sorted(batches):
        reset_peak(device)
        if b == 1:
            lat = measure_latency(model, batches[1], new_tokens=new_tokens, warmup=warmup, repeats=repeats)
            out.update(lat)
            out["throughput"]["1"] = {k: lat[k] for k in ("tokens_per_s", "latency_s", "latency_p90_s")}
        else:
            out["throughput"][str(b)] = measure_throughput(model, batches[b], new_tokens=new_tokens,
                                                           warmup=min(warmup, 1), repeats=repeats)
        out["peak_bytes_by_batch"][str(b)] = peak_so_far(device)
    out["peak_bytes"] = out["peak_bytes_by_batch"][str(min(batches))]
    bw = peak_bandwidth(out["device_name"]) if device == "cuda" else None
    out["peak_bandwidth_bytes_per_s"] = bw
    out["bandwidth_utilisation"] = bandwidth_utilisation(out["decode_bytes_per_token"], out.get("decode_s_per_token"),
                                                         bw)
    return out


def bandwidth_utilisation(bytes_per_token: int, s_per_token: float | None, peak: float | None) -> float | None:
    """(bytes read per decoded token / seconds per token) / peak bytes per second; None without a known peak."""
    if not peak or not s_per_token:
        return None
    return bytes_per_token / s_per_token / peak


def _load(spec: dict, device: str):
    path = spec["path"]
    if randominit.is_random_folder(path):
        if spec["quantization"] == "none":
            return randominit.load(path, dtype=spec["dtype"], device=device, seed=spec.get("seed", 0))
        path = randominit.materialise(path, spec["dtype"], device)  # bitsandbytes quantises checkpoints as it loads
    return models.load_model(path, dtype=spec["dtype"], quantization=spec["quantization"], frozen=True,
                             device_map=device if device == "cuda" else None,
                             trust_remote_code=spec.get("trust_remote_code", False))


def image_records(records: list[dict], n: int) -> list[dict]:
    """``n`` image questions, the split's first ones, cycled if it has fewer: every model and batch size sees the
    same real images."""
    images = [r for r in records if r.get("media", "image") == "image" and r.get("image") is not None]
    if not images:
        raise ValueError("the benchmark split has no image question")
    return [images[i % len(images)] for i in range(n)]


def worker(spec: dict) -> dict:
    """Runs in a fresh process: load one model, measure it, answer the questions asked for, return the results."""
    import psutil

    device = spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(spec.get("seed", 0))
    if device == "cpu" and spec.get("threads"):
        torch.set_num_threads(spec["threads"])  # one thread is far less disturbed by other load on a shared machine
    if device == "cuda":
        torch.cuda.init()
        reset_peak(device)
    ds = store.load_dataset_dir(spec["data_dir"])
    splits = {name: store.records_from_dataset(ds[name]) for name in spec.get("answer_splits", []) + [spec["split"]]}
    baseline = psutil.Process().memory_info().rss if device == "cpu" else torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    model = _load(spec, device)
    load_s = time.perf_counter() - t0
    processor = models.load_processor(spec["path"], trust_remote_code=spec.get("trust_remote_code", False))
    collator = collate.VQACollator(processor, spec["pixels"], max_length=spec["max_length"], train=False)
    sizes = sorted({1, *spec["batch_sizes"]})  # batch 1 gives the latency numbers
    recs = image_records(splits[spec["split"]], max(sizes))
    batches = {b: collator(recs[:b]) for b in sizes}
    result = measure_loaded(model, {b: x["inputs"] for b, x in batches.items()}, device=device,
                            new_tokens=spec["new_tokens"], warmup=spec["warmup"], repeats=spec["repeats"])
    first = batches[sizes[0]]
    result.update(name=spec["name"], dtype=spec["dtype"], quantization=spec["quantization"], device=device,
                  baseline_bytes=baseline, load_s=load_s, answers={}, threads=torch.get_num_threads(),
                  visual_tokens=int(first["visual_tokens"][0]),
                  prompt_tokens=int(first["inputs"]["attention_mask"][0].sum()), image_size=list(recs[0]["image"].size))
    result["measure_s"] = time.perf_counter() - t0 - load_s
    for split in spec.get("answer_splits", []):  # accuracy comes after the measurements: it cannot raise their peak
        result["answers"][split] = {}
        for mode in ("normal", "blind") if split in spec.get("blind_splits", []) else ("normal",):
            col = collate.VQACollator(processor, spec["pixels"], max_length=spec["max_length"], train=False,
                                      blind=mode == "blind")
            result["answers"][split][mode] = generate.generate_answers(
                model, col, splits[split], batch_size=spec["eval_batch_size"],
                max_new_tokens=spec["max_new_tokens"], desc=f"{spec['name']} {split} {mode}")
    result["answer_s"] = time.perf_counter() - t0 - load_s - result["measure_s"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # this process's CPU time, all threads
    return result


def protocol(results: dict, *, new_tokens: int, warmup: int, repeats: int, batch_sizes: list[int], dtype: str,
             max_new_tokens: int, n_resamples: int, seed: int) -> dict:
    """The measurement settings, written next to the numbers; ``summary`` is three lines a reader can check."""
    import importlib.metadata as md

    rows = list(results.values())
    device, name = rows[0]["device"], rows[0]["device_name"]
    threads = rows[0].get("threads")
    name = name if device == "cuda" else f"CPU, {threads} thread{'' if threads == 1 else 's'}"
    visual = sorted({r["visual_tokens"] for r in rows})
    size = "x".join(str(v) for v in rows[0]["image_size"])
    peak = ("torch.cuda.max_memory_allocated, reset per model and batch size" if device == "cuda" else
            "peak RSS (getrusage ru_maxrss) of the model's own process, Python/torch runtime included")
    summary = (
        f"1. Isolation: each model runs alone in a fresh process (load, measure, exit); peak memory = {peak}.\n"
        f"2. Same work: the same real {size} test image(s) ({'/'.join(map(str, visual))} visual tokens), batch sizes "
        f"{', '.join(map(str, batch_sizes))}; every model generates exactly {new_tokens} tokens "
        f"(min_new_tokens = max_new_tokens, greedy), weights in {dtype} unless the row says INT8/NF4, on {name}.\n"
        f"3. Statistics: {warmup} warm-up runs (1 more per larger batch) discarded, then {repeats} timed runs; median "
        f"and p90; TTFT = call to first token; decode = (time of token {new_tokens} - of token 1) / {new_tokens - 1}.")
    versions = {lib: _version(md, lib) for lib in ("torch", "transformers", "bitsandbytes", "accelerate")}
    return {"summary": summary, "new_tokens": new_tokens, "warmup": warmup, "repeats": repeats, "batch_size": 1,
            "batch_sizes": list(batch_sizes), "dtype": dtype, "device": device, "device_name": name,
            "threads": rows[0].get("threads"), "visual_tokens": visual, "image_size": rows[0]["image_size"], "statistic": "median and p90",
            "isolation": "one fresh process per model", "memory": peak, "decoding": "greedy",
            "accuracy": f"greedy, chat template, new tokens only, at most {max_new_tokens}; "
                        f"95% percentile bootstrap CIs over questions ({n_resamples} resamples, seed {seed})",
            "max_new_tokens": max_new_tokens, "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
            "versions": versions}


def _version(md, lib: str):
    try:
        return md.version(lib)
    except md.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Measure one model in this process and write JSON (see module doc).")
    ap.add_argument("--spec", required=True, help="JSON file: name, path, dtype, quantization, data_dir, split, ...")
    ap.add_argument("--out", required=True, help="where the result JSON is written")
    args = ap.parse_args(argv)
    result = worker(json.loads(Path(args.spec).read_text()))
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
