"""One short GPU session for every Qwen-VL family: each pair at its real size with random weights (no hub access).

    python benchmarks/gpu_check.py                      # on the GPU node: writes $OUT/gpu_check.json (or --out)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc   # the same code on CPU, tiny pairs: under 5 minutes

Pairs (``fslib.engine.presets``; ``--families`` picks some): Qwen2-VL 7B -> 2B, Qwen2.5-VL 7B -> 3B, Qwen3-VL 8B -> 2B,
Qwen3.5 9B -> 4B. Each model gets its family's real tokenizer and processor (``fslib.engine.qwentok``), so prompts
have the released token counts; inputs are synthetic egocentric scenes (``--image-size``, 448: 256 visual tokens for
Qwen2-VL / 2.5-VL, 196 for Qwen3-VL / 3.5). Per family, each section in its own try/except (an error is recorded and
the next section runs), the JSON rewritten after each:

1. ``<family>/kd_step``: the student with fp32 master weights under bf16 autocast, gradient checkpointing, frozen
   vision tower, AdamW; the bf16 teacher frozen beside it; one warm-up step then ``--train-steps`` timed steps of the
   chunked KD loss (02's ``fslib.engine.losspaths.batch_loss``). Peak memory (``torch.cuda.max_memory_allocated``)
   against the planner's prediction for the same training on this GPU (``fslib.training.plan``: same shapes, batch,
   sequence and answer tokens); the teacher's forward and the student's step, median seconds.
2. ``<family>/decode``: the student in bf16 at batch 1, ``--new-tokens`` greedy tokens, warm-up excluded
   (``fslib.evaluation.bench.measure_latency``): eager with a dynamic cache, then a static cache with
   ``torch.compile`` of the forward; decode seconds per token and the share of the memory-bandwidth roofline (bytes a
   decode step reads / time / the GPU's peak bandwidth).

``--dry-run`` runs on the CPU with the tiny pairs of every family (``tiny-<family>-teacher/student``, the small BPE as
each family's tokenizer): the real presets' shallow cuts (2 text layers, 2 vision blocks, real widths and
vocabularies: ``--presets shallow``) are 0.4 to 2.5 billion parameters each, too slow for a shared 2-core machine.
On a CPU no peak is measured and compile is skipped; every other line runs. Accuracy is never computed.
Designed to finish in under 8 minutes on one H200 (model builds dominate: about 45 GB of random bf16 weights).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = {"qwen2-vl": ("qwen2-vl-7b", "qwen2-vl-2b"), "qwen2.5-vl": ("qwen2.5-vl-7b", "qwen2.5-vl-3b"),
         "qwen3-vl": ("qwen3-vl-8b", "qwen3-vl-2b"), "qwen3.5": ("qwen3.5-9b", "qwen3.5-4b")}


def presets_of(family: str, kind: str) -> tuple[str, str]:
    """(teacher, student) presets: ``real``, ``shallow`` (2 layers, real widths) or ``tiny`` (CPU pairs)."""
    teacher, student = PAIRS[family]
    if kind == "shallow":
        return f"{teacher}-shallow", f"{student}-shallow"
    if kind == "tiny":
        if family == "qwen2-vl":
            return "tiny", "tiny"
        return f"tiny-{family}-teacher", f"tiny-{family}-student"
    return teacher, student


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny pairs, short settings, no compile")
    ap.add_argument("--presets", default=None, choices=("real", "shallow", "tiny"),
                    help="default: real (tiny with --dry-run)")
    ap.add_argument("--families", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json (default $OUT)")
    ap.add_argument("--gpu", default="h200", help="the planner's name for this GPU (fslib.training.plan.gpus)")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=2, help="the real recipes' micro-batch")
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="skip the static-cache + torch.compile decode")
    ap.add_argument("--skip", nargs="*", default=[], help="section names to skip (kd_step, decode)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.presets = "cpu", args.presets or "tiny"
        args.image_size, args.new_tokens, args.warmup, args.repeats = 112, 3, 1, 1
        args.train_steps, args.no_compile = 1, True
    args.presets = args.presets or "real"
    return args


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def section_env(args) -> dict:
    import importlib.metadata as md

    import torch

    from fslib.evaluation import bench

    name = bench.device_name(args.device)
    out = {"torch": torch.__version__, "device": name, "peak_bandwidth_bytes_per_s": bench.peak_bandwidth(name)}
    for lib in ("transformers", "bitsandbytes", "accelerate"):
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = None
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(total_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    return out


class Family:
    """One family's folders (config + real processor, no weights), scenes and collators."""

    def __init__(self, args, family: str, root: Path):
        from fslib.engine import collate, models
        from fslib.world import embedded, synth

        self.family = family
        self.teacher_preset, self.student_preset = presets_of(family, args.presets)
        self.folders = {role: embedded.resolve_model(f"random-init:{p}", root, corpus_fn=synth.corpus_text)
                        for role, p in (("teacher", self.teacher_preset), ("student", self.student_preset))}
        self.processor = models.load_processor(self.folders["student"])
        n = max(args.train_batch, 1)
        self.splits = synth.build_synthetic(seed=0, n_train=n, n_val=1, n_test=1, n_ood=1,
                                            image_size=args.image_size, video_fraction=0.0)
        side = args.image_size * args.image_size
        self.pixels = dict(image_min_pixels=min(side, 3136), image_max_pixels=side, video_min_pixels=3136,
                           video_max_pixels=side, video_total_pixels=side * 8)
        self.gen = collate.VQACollator(self.processor, self.pixels, max_length=8192, train=False)
        self.train = collate.VQACollator(self.processor, self.pixels, max_length=8192, train=True)

    def build(self, role: str, dtype, device: str):
        from transformers import AutoConfig

        from fslib.engine import randominit

        return randominit.build_model(AutoConfig.from_pretrained(self.folders[role]), dtype=dtype, device=device)


def _median_time(fn, device: str, n: int) -> tuple[float, list[float]]:
    from fslib.evaluation import bench

    times = []
    for _ in range(n):
        bench._sync()
        t0 = time.perf_counter()
        fn()
        bench._sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def predicted_peak(args, fam: Family, batch: dict) -> dict:
    """The planner's plan for this very step: the same folders, batch, sequence, visual and answer tokens."""
    from fslib.engine import labels as lab
    from fslib.training import plan as planner
    from fslib.training.config import DataConfig, DistillConfig, LossConfig, ModelConfig, OptimConfig, TeacherConfig
    from fslib.training.plan.workload import Workload

    inputs = batch["inputs"]
    n_answer = int(lab.counted(batch["labels"]).sum())
    b, seq = inputs["input_ids"].shape
    visual = int(batch["visual_tokens"].max())
    cfg = DistillConfig(label="gpu_check", out_dir="", data=DataConfig(data_dir="", pixels=fam.pixels),
                        model=ModelConfig(path=fam.folders["student"], dtype="float32", freeze_vision=True,
                                          gradient_checkpointing=True),
                        teacher=TeacherConfig(path=fam.folders["teacher"], dtype="bfloat16"),
                        loss=LossConfig(kd_impl="chunked"), optim=OptimConfig(batch_size=b, grad_accum=1))
    work = Workload(batch=b, seq_len=seq, visual_tokens=visual, answer_tokens=max(1, round(n_answer / b)),
                    mean_seq_len=seq, mean_visual_tokens=visual, samples_per_epoch=b, memo_samples=0,
                    sources="gpu_check's batch")
    dev = planner.device(args.gpu if args.device == "cuda" else "cpu")
    p = planner.plan(planner.job_for(cfg, work, dev), with_advice=False)
    return {"predicted_bytes": p["total_bytes"], "predicted_phase": p["peak_phase"],
            "predicted_components": {k: v for k, v in p["components"].items() if v}}


def section_kd_step(args, fam: Family) -> dict:
    """One KD training step of the real recipe (see the module doc): peak against the planner, step times."""
    import torch

    from fslib.engine import adapters, losspaths
    from fslib.evaluation import bench

    free(args.device)
    bench.reset_peak(args.device)
    teacher = fam.build("teacher", torch.bfloat16, args.device)  # eval mode, frozen
    student = fam.build("student", torch.float32, args.device)
    student.requires_grad_(True)
    student = adapters.prepare(student, freeze_vision=True, gradient_checkpointing=True)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5,
                            fused=args.device == "cuda")
    batch = fam.train(fam.splits["train"][:args.train_batch])
    spec = losspaths.LossConfig(kd_impl="chunked")

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            out = losspaths.batch_loss(student, teacher, batch, loss=spec, device=args.device)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    step()  # warm-up: allocates AdamW's state
    step_s, step_times = _median_time(step, args.device, args.train_steps)
    peak = bench.peak_so_far(args.device) if args.device == "cuda" else None
    inputs = losspaths.to_device(batch["inputs"], args.device)
    with torch.no_grad():
        teacher_s, _ = _median_time(lambda: teacher(**inputs, logits_to_keep=1), args.device, args.train_steps)
    out = {"teacher": fam.teacher_preset, "student": fam.student_preset, "batch": args.train_batch,
           "tokens": int(inputs["attention_mask"].sum()), "sequence": int(inputs["input_ids"].shape[1]),
           "visual_tokens": [int(v) for v in batch["visual_tokens"]], "peak_bytes": peak,
           "student_step_s": step_s, "student_step_samples": step_times, "teacher_forward_s": teacher_s}
    del teacher, student, opt, inputs
    free(args.device)
    out.update(predicted_peak(args, fam, batch))
    if peak:
        out["error"] = (out["predicted_bytes"] - peak) / peak
    return out


def section_decode(args, fam: Family) -> dict:
    """The student's batch-1 decode: eager (dynamic cache), then static cache + torch.compile (GPU)."""
    import torch

    from fslib.evaluation import bench

    free(args.device)
    model = fam.build("student", torch.bfloat16, args.device)
    inputs = fam.gen(fam.splits["test"][:1])["inputs"]
    bytes_per_token = bench.memory_split(model)["decode_bytes_per_token"]
    peak_bw = bench.peak_bandwidth(bench.device_name(args.device)) if args.device == "cuda" else None
    out = {"student": fam.student_preset, "decode_bytes_per_token": bytes_per_token,
           "prompt_tokens": int(inputs["input_ids"].shape[1])}
    modes = [("eager", False)] + ([] if args.no_compile else [("static_compiled", True)])
    for name, compiled in modes:
        if compiled:
            model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
        lat = bench.measure_latency(model, inputs, new_tokens=args.new_tokens, warmup=args.warmup + (2 if compiled
                                                                                                     else 0),
                                    repeats=args.repeats)
        out[name] = {"decode_s_per_token": lat["decode_s_per_token"], "ttft_s": lat["ttft_s"],
                     "roofline_share": bench.bandwidth_utilisation(bytes_per_token, lat["decode_s_per_token"],
                                                                   peak_bw)}
    del model
    free(args.device)
    return out


def run(args) -> dict:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "sections": {}, "errors": {}}
    t_start = time.perf_counter()

    def record(name, fn):
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {**fn(), "section_s": time.perf_counter() - t0}
        except Exception:  # noqa: BLE001 - record and go on: one failure must not lose the other measurements
            report["errors"][name] = traceback.format_exc()
            free(args.device)
        report["elapsed_s"] = time.perf_counter() - t_start
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"[{report['elapsed_s']:.0f} s] {name}: {'error' if name in report['errors'] else 'ok'}", flush=True)

    record("env", lambda: section_env(args))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for family in args.families:
            box = {}
            record(f"{family}/setup", lambda: box.setdefault("f", Family(args, family, Path(tmp))) and {
                "teacher": box["f"].teacher_preset, "student": box["f"].student_preset})
            if "f" not in box:
                continue
            for name, fn in (("kd_step", section_kd_step), ("decode", section_decode)):
                if name not in args.skip:
                    record(f"{family}/{name}", lambda fn=fn: fn(args, box["f"]))
    return report


if __name__ == "__main__":
    result = run(parse_args())
    sys.exit(1 if result["errors"] else 0)
