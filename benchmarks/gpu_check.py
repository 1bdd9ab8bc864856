"""One short GPU session: the real-size Qwen2-VL-2B and -7B with random weights (no hub access needed).

    python benchmarks/gpu_check.py                       # on the GPU node; writes $OUT/gpu_check.json (or --out)
    python benchmarks/gpu_check.py --device cpu --preset tiny --out /tmp/gc   # CPU smoke run of the same code

Sections, each in its own try/except (an error is recorded and the next section runs), JSON rewritten after each:

1. ``env``: torch/transformers/bitsandbytes versions, device name, memory, peak bandwidth used for utilisation.
2. ``student_bf16`` / ``teacher_bf16``: the 2B and 7B built in bf16 directly on the device; time to first token,
   decode time per token, throughput at each batch size, weights and peak memory, decode bandwidth utilisation
   (``fslib.evaluation.bench.measure_loaded``: warm-up excluded, min_new_tokens == max_new_tokens, median and p90; the peak
   counter is reset per batch size and the model is freed before the next one is built).
3. ``student_train_step``: the 2B student with fp32 master weights, bf16 autocast forward + backward with gradient
   checkpointing, AdamW step; peak memory and median step time.
4. ``vision_memo``: is reusing a frozen tower's features (``fslib.engine.visionmemo``, on by default in 02) worth it here?
   The 2B's vision features of a training batch, recomputed by the bf16 tower vs served by the memo on a hit (its
   device-to-host copy and BLAKE2 digest of the pixels, the lookup and the copy back); median seconds of each.
5. ``teacher_int8``: the 7B saved once (bf16, to a temporary folder) and reloaded through bitsandbytes INT8, as the
   real checkpoint would be; batch 1 only, fewer repeats (INT8 decode is slow). Last, because it is the slowest.

Inputs are real synthetic egocentric scenes at 448x448 (256 visual tokens with the real processor bounds) through the
project's processor and chat template. Accuracy is meaningless with random weights and is not computed.
Designed to finish in under 8 minutes on an H200.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {"real": ("random-init:qwen2-vl-2b", "random-init:qwen2-vl-7b"), "tiny": ("random-init:tiny",) * 2}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--preset", default="real", choices=sorted(PRESETS), help="real: 2B and 7B; tiny: CPU smoke")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json (default $OUT)")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--int8-repeats", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=2, help="the real recipe's micro-batch")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="section names to skip")
    return ap.parse_args(argv)


def setup(args):
    """The processor (tiny tokenizer, real pixel bounds), the scenes, and collators for generation and training."""
    from fslib.engine import collate, randominit
    from fslib.world import synth
    from fslib.world.embedded import build_tiny_processor

    processor = build_tiny_processor(synth.corpus_text(), min_pixels=randominit.REAL_MIN_PIXELS,
                                     max_pixels=randominit.REAL_MAX_PIXELS)
    n = max(args.batch_sizes + [args.train_batch])
    splits = synth.build_synthetic(seed=0, n_train=n, n_val=1, n_test=n, n_ood=1, image_size=args.image_size,
                                   video_fraction=0.0)
    side = args.image_size * args.image_size
    pixels = dict(image_min_pixels=randominit.REAL_MIN_PIXELS, image_max_pixels=side, video_min_pixels=3136,
                  video_max_pixels=side, video_total_pixels=side * 8)
    gen = collate.VQACollator(processor, pixels, max_length=4096, train=False)
    train = collate.VQACollator(processor, pixels, max_length=4096, train=True)
    return processor, splits, gen, train


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def section_env(args, ctx) -> dict:
    import importlib.metadata as md

    import torch

    from fslib.evaluation import bench

    name = bench.device_name(args.device)
    out = {"torch": torch.__version__, "device": name, "peak_bandwidth_bytes_per_s": bench.peak_bandwidth(name)}
    for lib in ("transformers", "bitsandbytes", "accelerate"):
        out[lib] = md.version(lib)
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(total_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    return out


def section_generate(args, ctx, preset: str) -> dict:
    """Build ``preset`` in bf16 on the device, measure it (``fslib.evaluation.bench.measure_loaded``), free it."""
    import torch

    from fslib.engine import randominit
    from fslib.evaluation import bench

    processor, splits, gen, _ = ctx
    bench.reset_peak(args.device)
    cfg = randominit.config(preset, randominit.token_ids(processor.tokenizer))
    t0 = time.perf_counter()
    model = randominit.build_model(cfg, dtype=torch.bfloat16, device=args.device)
    build_s = time.perf_counter() - t0
    recs = splits["test"]
    batches = {b: gen(recs[:b])["inputs"] for b in args.batch_sizes}
    out = bench.measure_loaded(model, batches, device=args.device, new_tokens=args.new_tokens, warmup=args.warmup,
                               repeats=args.repeats)
    out.update(preset=preset, dtype="bfloat16", build_s=build_s, visual_tokens=int(gen(recs[:1])["visual_tokens"][0]))
    del model
    free(args.device)
    return out


def section_train_step(args, ctx, preset: str) -> dict:
    """fp32 master weights, bf16 autocast forward + backward, gradient checkpointing, AdamW: peak and step time."""
    import torch

    from fslib.engine import randominit
    from fslib.evaluation import bench

    processor, splits, _, train = ctx
    bench.reset_peak(args.device)
    model = randominit.build_model(randominit.config(preset, randominit.token_ids(processor.tokenizer)), device=args.device)
    model.requires_grad_(True)
    model.train()
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device == "cuda")
    batch = train(splits["train"][:args.train_batch])
    inputs = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
    labels = batch["labels"].to(args.device)
    times = []
    for step in range(args.train_steps + 1):  # step 0 is the warm-up (allocates the optimizer state)
        bench._sync()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        bench._sync()
        if step:
            times.append(time.perf_counter() - t0)
    out = {"preset": preset, "batch": args.train_batch, "tokens": int(inputs["attention_mask"].sum()),
           "step_s": sorted(times)[len(times) // 2], "step_samples": times, "loss": loss.item(),
           "peak_bytes": bench.peak_so_far(args.device), "params": bench.memory_split(model)["params"]}
    del model, opt, inputs, loss
    free(args.device)
    return out


def section_vision_memo(args, ctx, preset: str) -> dict:
    """The frozen bf16 tower's features of one training batch: recomputed vs a memo hit (median s of each)."""
    import torch

    from fslib.engine import randominit, visionmemo
    from fslib.evaluation import bench

    processor, splits, _, train = ctx
    model = randominit.build_model(randominit.config(preset, randominit.token_ids(processor.tokenizer)), dtype=torch.bfloat16,
                                device=args.device)
    model.requires_grad_(False)
    model.eval()
    batch = train(splits["train"][:args.train_batch])["inputs"]
    pixels = batch["pixel_values"].to(args.device, torch.bfloat16)
    grid = batch["image_grid_thw"].to(args.device)
    inner = model.model

    def median_s(fn) -> float:
        times = []
        for _ in range(args.repeats + 1):  # the first call is a warm-up (and the memo's one miss)
            bench._sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            bench._sync()
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[len(times[1:]) // 2]

    tower_s = median_s(lambda: inner.get_image_features(pixels, grid))
    memo = visionmemo.install(model, 2**30)
    hit_s = median_s(lambda: inner.get_image_features(pixels, grid))
    out = {"preset": preset, "batch": args.train_batch, "pixel_bytes": pixels.numel() * pixels.element_size(),
           "tower_s": tower_s, "memo_hit_s": hit_s, "memo": memo.stats()}
    visionmemo.remove(model)
    del model, pixels
    free(args.device)
    return out


def section_int8(args, ctx, preset: str) -> dict:
    """The teacher saved in bf16 to a temporary folder and reloaded with bitsandbytes INT8, then measured at batch 1."""
    import torch

    from fslib.engine import randominit
    from fslib.engine.models import load_model
    from fslib.evaluation import bench

    processor, splits, gen, _ = ctx
    with tempfile.TemporaryDirectory(prefix="gpu_check_int8_") as tmp:
        model = randominit.build_model(randominit.config(preset, randominit.token_ids(processor.tokenizer)),
                                    dtype=torch.bfloat16, device=args.device)
        t0 = time.perf_counter()
        model.save_pretrained(tmp)
        save_s = time.perf_counter() - t0
        del model
        free(args.device)
        bench.reset_peak(args.device)
        t0 = time.perf_counter()
        model = load_model(tmp, dtype="bfloat16", quantization="int8", frozen=True,
                           device_map=args.device if args.device == "cuda" else None)
        load_s = time.perf_counter() - t0
    out = bench.measure_loaded(model, {1: gen(splits["test"][:1])["inputs"]}, device=args.device,
                               new_tokens=args.new_tokens, warmup=1, repeats=args.int8_repeats)
    out.update(preset=preset, quantization="int8", save_s=save_s, load_s=load_s)
    del model
    free(args.device)
    return out


def run(args) -> dict:
    student, teacher = PRESETS[args.preset]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "sections": {}, "errors": {}}
    t_start = time.perf_counter()
    ctx = None
    sections = [("env", lambda: section_env(args, ctx)),
                ("student_bf16", lambda: section_generate(args, ctx, student)),
                ("teacher_bf16", lambda: section_generate(args, ctx, teacher)),
                ("student_train_step", lambda: section_train_step(args, ctx, student)),
                ("vision_memo", lambda: section_vision_memo(args, ctx, student)),
                ("teacher_int8", lambda: section_int8(args, ctx, teacher))]
    try:
        ctx = setup(args)
    except Exception:  # noqa: BLE001 — without inputs only the environment can be reported
        report["errors"]["setup"] = traceback.format_exc()
        sections = sections[:1]
    for name, fn in sections:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {**fn(), "section_s": time.perf_counter() - t0}
        except Exception:  # noqa: BLE001 — record and go on: one failure must not lose the other measurements
            report["errors"][name] = traceback.format_exc()
            free(args.device)
        report["elapsed_s"] = time.perf_counter() - t_start
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"[{report['elapsed_s']:.0f} s] {name}: {'error' if name in report['errors'] else 'ok'}", flush=True)
    return report


if __name__ == "__main__":
    result = run(parse_args())
    sys.exit(1 if result["errors"] else 0)
