"""The planner (``python -m fslib.plan``) against measured peaks: 02's KD training of params/real-shape-rehearsal.yaml
(real widths, vocabularies and tower, 2 text layers and 2 vision blocks, random weights) in variants, on this CPU.

    .venv/bin/python benchmarks/plan_vs_measured.py                 # 01 once, every variant; writes the JSON
    .venv/bin/python benchmarks/plan_vs_measured.py --plans-only    # only the real job's plans and the ms-swift check

writes benchmarks/results/plan_vs_measured.json. Each variant runs ``fslib.training.jobs.run`` (02's code path: the
models loaded by ``fslib.engine.models.load_model``, accelerate, the loop, its saves) in a fresh process. Measured:
the process's resident set (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs`` once setup is done,
so that loading's transients are not counted) minus its resident set just before the models were loaded, with glibc
mapping every block over 64 KiB on its own (``MALLOC``: freed tensors leave the resident set, as they leave a GPU's
allocated bytes) and a quantised teacher's unquantised tensors copied out of their file mapping (``_own_memory``):
``measured_step_bytes`` up to the last optimizer step, ``measured_bytes`` over the whole training (validation and
the checkpoint saves included). Predicted: the planner for the same config on this CPU (device cpu, 1 process), the
same data (01's data_stats.json), ``predicted_step_bytes`` without its checkpoint-save phase. Target: every run
within +-15%.

Other families (``FAMILY_VARIANTS``): one variant each for Qwen2.5-VL, Qwen3-VL and Qwen3.5, with their own
real-width shallow presets and real tokenizers (Qwen3.5: the 248,320-row vocabulary), each on its own 01 data (its
processor's token counts: 32 pixels per visual token side for Qwen3-VL and Qwen3.5). They train LoRA students (and
smaller teachers than the published pairs' for Qwen3-VL and Qwen3.5) so that a variant stays under about 8 GiB on a
shared 24 GiB machine; the pair each variant uses is in its ``params``.

Disk: every training writes to a temporary folder (``--workdir``, default under ``$TMPDIR``) that is deleted as soon
as the variant is measured: at most one variant's checkpoints exist at a time, the resume checkpoint (the student's
weights and AdamW state) and its final export, which the script states before each run (``disk_need_bytes``; about
2 GiB for the Qwen2-VL variants, less for the LoRA ones). The 01 data of the rehearsals stays under reports/ (tens
of MB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = ROOT / "params" / "real-shape-rehearsal.yaml"
REAL_JOB = ROOT / "params" / "qwen2vl-7b-to-2b.yaml"
OUT = ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
TARGET = 0.15
# glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB) in its heap, so by default a process's
# resident set stays near the largest it ever was plus fragmentation; with every block over 64 KiB mapped on its own,
# freed tensors leave the resident set and RSS follows the live bytes, as a GPU's allocated-bytes counter does.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
GPUS = ("a100-40gb", "a100-80gb", "h100-80gb", "h200", "l40s", "rtx4090-24gb")
# name -> 02 parameters over the rehearsal's. INT8 (bitsandbytes int8 is ~30x slower on a CPU) trains on 4 of the 8
# questions (``samples_per_epoch``), one micro-batch per step: still two optimizer steps.
VARIANTS = {
    "teacher-bf16_full_ckpt": {},
    "teacher-bf16_full_no-ckpt": {"gradient_checkpointing": False},
    "teacher-nf4_full_ckpt": {"teacher_quantization": "nf4"},
    "teacher-nf4_lora_ckpt": {"teacher_quantization": "nf4", "student_lora": True},
    "teacher-bf16_lora_no-ckpt": {"student_lora": True, "gradient_checkpointing": False},
    "teacher-int8_full_ckpt": {"teacher_quantization": "int8", "grad_accum": 1, "samples_per_epoch": 4},
}
# One variant per other family: name -> 02 parameters over the rehearsal's, with its own run (its own 01 data).
FAMILY_VARIANTS = {
    "qwen2.5-vl_teacher-bf16_lora_ckpt": {"run_name": "real-shape-rehearsal-qwen2.5-vl", "student_lora": True,
                                          "teacher_model": "random-init:qwen2.5-vl-7b-shallow",
                                          "student_model": "random-init:qwen2.5-vl-3b-shallow"},
    "qwen3-vl_teacher-bf16_lora_ckpt": {"run_name": "real-shape-rehearsal-qwen3-vl", "student_lora": True,
                                        "teacher_model": "random-init:qwen3-vl-4b-shallow",
                                        "student_model": "random-init:qwen3-vl-2b-shallow"},
    "qwen3.5_teacher-bf16_lora_ckpt": {"run_name": "real-shape-rehearsal-qwen3.5", "student_lora": True,
                                       "teacher_model": "random-init:qwen3.5-4b-shallow",
                                       "student_model": "random-init:qwen3.5-0.8b-shallow"},
}
VARIANTS.update(FAMILY_VARIANTS)
WORKDIR = None  # set by --workdir: where the variants' trainings write (deleted after each)
# ms-swift's published figure: Qwen2-VL-7B-Instruct LoRA on one GPU, batch 1, max_length 2048, about 20 GiB
MS_SWIFT = {"gib": 20.0, "source": "ms-swift's examples/train/multimodal/grounding.sh, whose header says 20GiB: "
            "Qwen2-VL-7B-Instruct, LoRA rank 8 on all-linear, freeze_vit, bf16, 1 GPU, batch 1, max_length 2048, "
            "MAX_PIXELS 1003520"}


def _status() -> dict:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon")}


def params(overrides: dict) -> dict:
    from fslib import plan as cli

    return {**cli.params(str(PARAMS)), **{k: v for k, v in overrides.items() if k != "samples_per_epoch"}}


def config_for(P: dict, name: str):
    """The KD student's ``DistillConfig`` 02 builds for ``P``, with the run's model folders."""
    from fslib.stages import distill
    from fslib.world.embedded import resolve_model

    out = ROOT / P["reports_dir"] / P["run_name"]
    teacher = resolve_model(P["teacher_model"], out / "embedded")
    student = resolve_model(P["student_model"], out / "embedded")
    cfg = distill.student_trainings(P, out, student_path=student, teacher_path=teacher, cache_dir=None,
                                    extra_train_dirs=[], n_labelled=P["n_train"])["kd_student"]
    cfg = cfg.but(label=name, out_dir=str(Path(WORKDIR or out / "plan_vs_measured") / name))
    per_epoch = VARIANTS.get(name, {}).get("samples_per_epoch")
    return cfg.but(data={"samples_per_epoch": per_epoch}) if per_epoch else cfg


def predict(P: dict, cfg, work=None) -> dict:
    """The planner's plan for ``cfg`` on this CPU; ``work`` (a ``Workload``) defaults to the run's 01 data."""
    from fslib.training import plan as planner
    from fslib.training.plan import workload

    out = ROOT / P["reports_dir"] / P["run_name"]
    student = planner.arch_of(cfg.model.path)  # the family's pixels per visual token side
    work = work or workload.from_params(P, stats=workload.read_stats(out), factor=student.patch * student.merge)
    return planner.plan(planner.job_for(cfg, work, planner.device("cpu")), with_advice=False)


def _own_memory(model) -> None:
    """Copy a quantised model's unquantised tensors out of the safetensors file they were mapped from, as loading
    onto a GPU copies them: otherwise the resident set counts only the pages touched so far (an embedding's few rows)
    and still holds the file's bf16 pages that quantisation read and no longer needs."""
    import gc

    if model is None or not getattr(model, "is_quantized", False):
        return
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if type(p) is torch_parameter():
                p.data = p.data.clone()
    gc.collect()


def torch_parameter():
    import torch

    return torch.nn.Parameter


def worker(name: str) -> dict:
    """One variant's training in this process, its peaks measured around 02's own code."""
    import torch

    torch.set_num_threads(2)
    from fslib.training import jobs, loop

    P = params(VARIANTS[name])
    cfg = config_for(P, name)
    marks, original_models, original_setup, original_step = {}, jobs._models, loop.setup, loop._optimizer_step

    def models(c):
        marks["baseline"] = _status()
        student, teacher = original_models(c)
        _own_memory(teacher)
        return student, teacher

    def setup(*a, **kw):
        run = original_setup(*a, **kw)
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: loading's transients are not counted
        marks["after_setup"] = _status()
        return run

    def step(run, group):
        t0 = time.perf_counter()
        record = original_step(run, group)
        marks.setdefault("steps", []).append({"seconds": time.perf_counter() - t0, **_status()})
        return record

    jobs._models, loop.setup, loop._optimizer_step = models, setup, step
    t0 = time.perf_counter()
    jobs.run(cfg)
    end = _status()
    base = marks["baseline"]["VmRSS"]
    return {"name": name, "params": VARIANTS[name], "seconds": time.perf_counter() - t0,
            "measured_bytes": end["VmHWM"] - base, "measured_step_bytes": marks["steps"][-1]["VmHWM"] - base,
            "weights_at_setup_bytes": marks["after_setup"]["VmRSS"] - base, "baseline_rss_bytes": base,
            "step_seconds": [s["seconds"] for s in marks["steps"]], "optimizer_steps": len(marks["steps"])}


def compare(measured: dict) -> dict:
    P = params(VARIANTS[measured["name"]])
    p = predict(P, config_for(P, measured["name"]))
    step_phases = {k: v for k, v in p["phases"].items() if k != "checkpoint_save"}
    step_peak = max(step_phases, key=step_phases.get)
    row = {**measured, "predicted_bytes": p["total_bytes"], "predicted_peak_phase": p["peak_phase"],
           "predicted_step_bytes": step_phases[step_peak], "predicted_step_phase": step_peak,
           "predicted_components": p["components"], "predicted_phases": p["phases"], "workload": p["workload"]}
    row["error"] = row["predicted_bytes"] / row["measured_bytes"] - 1
    row["step_error"] = row["predicted_step_bytes"] / row["measured_step_bytes"] - 1
    row["within_target"] = abs(row["error"]) <= TARGET and abs(row["step_error"]) <= TARGET
    return row


def disk_need(name: str) -> int:
    """Bytes a variant's checkpoints take at most: the resume checkpoint (the trained weights, and for LoRA the frozen
    base too, plus AdamW's two moments) and the final export (the merged weights)."""
    P = params(VARIANTS[name])
    p = predict(P, config_for(P, name))
    c = p["components"]
    return 2 * c["student_weights"] + c["optimizer_state"]


def ensure_data(name: str) -> None:
    """01 for the variant's run, once (its processor's token counts)."""
    import tempfile

    import yaml

    P = params(VARIANTS[name])
    if (ROOT / P["reports_dir"] / P["run_name"] / "data_stats.json").exists():
        return
    over = {k: v for k, v in VARIANTS[name].items() if k in ("run_name", "student_model", "teacher_model")
            or k.endswith("_pixels")}
    with tempfile.TemporaryDirectory() as tmp:
        pfile = Path(tmp) / "params.yaml"
        base = yaml.safe_load(PARAMS.read_text())
        pfile.write_text(yaml.safe_dump({**base, **over}))
        subprocess.run([sys.executable, "-m", "fslib.stages.pipeline", str(pfile), "--stages", "01_data"],
                       check=True, cwd=ROOT)


def run_variant(name: str, timeout: int) -> dict:
    import shutil

    ensure_data(name)
    need = disk_need(name)
    print(f"  disk: up to {need / 2**30:.1f} GiB under {WORKDIR} while it runs, deleted after", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", **MALLOC,
           "FIRSTSIGHT_PVM_WORKDIR": str(WORKDIR)}
    try:
        proc = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=ROOT)
    finally:
        shutil.rmtree(Path(WORKDIR) / name, ignore_errors=True)  # the checkpoints: measured, no longer needed
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"name": name, "error_message": (proc.stderr or proc.stdout)[-2000:]}
    return {**compare(json.loads(lines[-1][len("RESULT "):])), "disk_need_bytes": need}


def real_job_plans() -> dict:
    """params/qwen2vl-7b-to-2b.yaml planned on every named GPU (predicted, not measured)."""
    from fslib import plan as cli

    P = cli.params(str(REAL_JOB))
    rows = {}
    for gpu in GPUS:
        p = cli.plan_run(P, gpu=gpu, num_gpus=1)
        # the least drastic change that fits: on one GPU if any does (the largest total still under the memory)
        fitting = [a for a in p["advice"] if a["fits"]]
        one_gpu = [a for a in fitting if "num_processes" not in a["params"]]
        first = max(one_gpu, key=lambda a: a["total_bytes"]) if one_gpu else (fitting[0] if fitting else None)
        rows[gpu] = {"training": p["training"], "total_bytes": p["total_bytes"], "fits": p["fits"],
                     "memory_bytes": p["device"]["memory_bytes"], "usable_bytes": p["device"]["usable_bytes"],
                     "peak_phase": p["peak_phase"], "components": p["components"],
                     "step_seconds": p["step_seconds"], "epoch_seconds": p["epoch_seconds"],
                     "later_epoch_seconds": p["later_epoch_seconds"], "steps_per_epoch": p["steps_per_epoch"],
                     "advice": p["advice"], "first_fitting_change": first}
    return {"params": str(REAL_JOB.relative_to(ROOT)), "workload": p["workload"]["sources"], "gpus": rows,
            "notes": p["notes"]}


def ms_swift() -> dict:
    """ms-swift's Qwen2-VL-7B LoRA example (20 GiB) as this planner predicts it: the 7B as the student (bf16, LoRA
    r 8 on every language linear, tower frozen, checkpointing), no teacher, batch 1, a 2,048-token sample with a
    1,280-token image (MAX_PIXELS 1003520). Two loss paths: fslib's (logits at the answer tokens only) and logits at
    every position (transformers' causal-LM loss, which ms-swift uses)."""
    from fslib import plan as cli

    P = {**cli.params(str(REAL_JOB)), "student_model": "Qwen/Qwen2-VL-7B-Instruct", "student_dtype": "bfloat16",
         "student_lora": True, "lora_r": 8, "lora_alpha": 32, "alpha": 0.0, "batch_size": 1, "grad_accum": 16,
         "gradient_checkpointing": True, "freeze_vision": True, "kd_impl": "full", "prepare_teacher": False,
         "train_sft_baseline": False, "image_size": 1120, "image_max_pixels": 1003520, "video_fraction": 0.0}
    out = {"published_bytes": int(MS_SWIFT["gib"] * 2**30), "source": MS_SWIFT["source"],
           "url": "https://github.com/modelscope/ms-swift/blob/main/examples/train/multimodal/grounding.sh",
           "how": "all_position_logits applies fslib's loss-buffer model (bf16 logits and four float32 (N, V) buffers) "
                  "to N = 2,048 positions; transformers' own cross-entropy keeps a different set, so that row is an "
                  "estimate of ms-swift's path, not a model of it"}
    for key, answers in (("fslib_loss", None), ("all_position_logits", 2048)):
        p = cli.plan_run(P, gpu="a100-80gb", num_gpus=1, seq_len=2048, answer_tokens=answers)
        out[key] = {"predicted_bytes": p["total_bytes"], "components": p["components"],
                    "peak_phase": p["peak_phase"], "workload": p["workload"]["sources"],
                    "difference": p["total_bytes"] / out["published_bytes"] - 1}
    return out


def record_console(res: dict, log: Path, argv) -> int:
    """The variants a run printed before it was stopped (``{"name": ..., "measured_bytes": ...}`` lines), kept under
    ``console_runs`` with the log they came from: the printed fields only (the full rows died with the process)."""
    from fslib.core import fsio, provenance

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"name"')]
    rows = [r for r in rows if r.get("measured_bytes")]
    for r in rows:
        r["within_target"] = abs(r["error"]) <= TARGET and abs(r["step_error"]) <= TARGET
        r["params"] = VARIANTS.get(r["name"], {})
    command = "python benchmarks/plan_vs_measured.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res["console_runs"] = {"rows": rows, "log": str(log), "command": command,
                           "note": "printed by a run that was stopped before writing its JSON (the machine's other "
                                   "jobs left it a few percent of a core); predicted and measured bytes as printed",
                           "environment": provenance.environment()}
    fsio.write_json(OUT, res)
    print(f"wrote {len(rows)} console rows to {OUT}")
    return 0


def _previous() -> dict:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", help="(internal) run one variant in this process and print its measurement")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset to (re)run")
    ap.add_argument("--plans-only", action="store_true", help="only the real job's plans and the ms-swift check")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    ap.add_argument("--from-console", default=None, metavar="LOG",
                    help="record the per-variant lines a stopped run printed (LOG: its console output) under "
                         "console_runs, beside the runs, and write the JSON; nothing is run")
    ap.add_argument("--workdir", default=None, help="where the trainings write (default: a new temporary folder)")
    ap.add_argument("--repredict", action="store_true",
                    help="keep the stored measurements and recompute only the predictions (after a planner change)")
    args = ap.parse_args(argv)
    import tempfile

    global WORKDIR
    WORKDIR = args.workdir or os.environ.get("FIRSTSIGHT_PVM_WORKDIR") or tempfile.mkdtemp(prefix="plan_vs_measured_")
    if args.variant:
        print("RESULT " + json.dumps(worker(args.variant)), flush=True)
        return 0
    from fslib.core import fsio, provenance

    res = _previous()
    if args.from_console:
        return record_console(res, Path(args.from_console), argv)
    if not args.plans_only:
        if not (ROOT / "reports" / "real-shape-rehearsal" / "data" ).exists():
            subprocess.run([sys.executable, "-m", "fslib.stages.pipeline", str(PARAMS), "--stages", "01_data"],
                           check=True, cwd=ROOT)
        runs = {r["name"]: r for r in res.get("runs", [])}
        if args.repredict:
            keep = ("name", "params", "seconds", "measured_bytes", "measured_step_bytes", "weights_at_setup_bytes",
                    "baseline_rss_bytes", "step_seconds", "optimizer_steps")
            runs = {n: compare({k: r[k] for k in keep}) if "measured_bytes" in r else r for n, r in runs.items()}
        for name in [] if args.repredict else args.variants.split(","):
            print(f"variant {name} ...", flush=True)
            runs[name] = run_variant(name, args.timeout)
            print(json.dumps({k: runs[name].get(k) for k in ("name", "predicted_bytes", "measured_bytes", "error",
                                                              "step_error", "seconds", "error_message")}), flush=True)
            # each finished variant is kept at once: a run stopped later loses nothing measured so far
            partial = {**_previous(), "runs_in_progress": [runs[n] for n in VARIANTS if n in runs]}
            fsio.write_json(OUT.with_name(OUT.stem + ".partial.json"), partial)
        res["runs"] = [runs[n] for n in VARIANTS if n in runs]
        res["target"] = {"within": TARGET, "met": all(r.get("within_target") for r in res["runs"]),
                         "runs_within": sum(bool(r.get("within_target")) for r in res["runs"]),
                         "runs": len(res["runs"])}
        res["measured_means"] = __doc__.split("Measured:")[1].split("Target:")[0].strip()
        res["params"] = str(PARAMS.relative_to(ROOT))
    res["real_job"] = real_job_plans()
    res["ms_swift"] = ms_swift()
    command = ("python benchmarks/plan_vs_measured.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    res["commands"] = res.get("commands", []) + [command]  # every invocation that wrote this file, in order
    res["environment"] = {**provenance.environment(), "command": command}
    fsio.write_json(OUT, res)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
