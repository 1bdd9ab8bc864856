"""Build the embedded pair from its recipe: ``make embedded``, i.e. ``python -m fslib.world.build``.

    python -m fslib.world.build                         # the shipped pair into embedded/ (about an hour, 2 cores)
    python -m fslib.world.build --out /tmp/pair-s1 --build-seed 1   # a second build, for benchmarks/kd_vs_sft.py
    python -m fslib.world.build --out /tmp/pair --budget tiny       # every stage for a few steps (seconds)
    python -m fslib.world.build --only tiny-teacher & python -m fslib.world.build --only tiny-student; wait
    python -m fslib.world.build                         # on 2 cores: both models at once, then measure them

Each preset of ``fslib.world.embedded.EMBEDDED_PRESETS`` is created with random weights from its seed and pre-trained
as its recipe says (``fslib.world.pretrain``), then the build measures both models (``fslib.world.probe``): vision
probes, per-type exact match of the teacher and of the student's starting weights on a probe stream, and the
teacher's blind control. The folder gets ``recipe.json`` (``embedded.recipe()``: what a run checks the weights
against) and ``build_report.json`` (those measurements, wall time, the commit it was built at).

Interrupted builds resume: each finished model is kept under ``<out>.parts/`` with its recipe, and only the models
not yet there are built again. The finished folder replaces ``<out>`` in one step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from fslib.core import config, fsio, provenance
from fslib.world import embedded, pretrain, probe, synth

PROBE = {"scenes": 1500, "questions": 480, "prior": 320}  # probe stream sizes of a full build
TINY_PROBE = {"scenes": 24, "questions": 16, "prior": 16}


def stored_vision_key(stamp: dict) -> dict:
    """The ``pretrain.vision_key`` of a built model from its ``firstsight_embedded.json`` (builds before the key was
    stored: pre-training version 2's vision stage is today's, ``pretrain.VISION_VERSION``)."""
    if "vision_key" in stamp:
        return stamp["vision_key"]
    return {**pretrain.vision_key(stamp["recipe"]), "vision_version": stamp["pretraining"]["version"]}


def reusable_tower(source: Path | None, name: str, model_recipe: dict) -> dict | None:
    """The vision stage's result from an earlier build's ``source/name`` when its vision key equals this recipe's
    (same seed, stage recipe, tower shape and stage code); None when there is none or it differs (the stage runs)."""
    from transformers import Qwen2VLForConditionalGeneration

    stamp_path = source / name / "firstsight_embedded.json" if source else None
    if stamp_path is None or not stamp_path.exists():
        return None
    stamp = json.loads(stamp_path.read_text())
    if stored_vision_key(stamp) != pretrain.vision_key(model_recipe):
        print(f"[build] {name}: the tower in {source} was built from another vision recipe; training it", flush=True)
        return None
    old = Qwen2VLForConditionalGeneration.from_pretrained(source / name)
    print(f"[build] {name}: vision stage reused from {source / name} (same vision key)", flush=True)
    return {"state_dict": old.model.visual.state_dict(), "report": stamp["pretraining"]["vision"],
            "source": {"folder": str(source / name), "commit": stamp.get("commit")}}


def build_model(folder: Path, name: str, model_recipe: dict, processor, *, progress: bool = True,
                towers_from: Path | None = None) -> Path:
    """One preset: random init from its seed, pre-training as its recipe says, saved (safetensors) with the processor.
    With ``towers_from``, a tower of an earlier build with the same vision key is reused instead of retrained."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    stamp = folder / "firstsight_embedded.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == model_recipe:
        print(f"[build] {name}: kept from an earlier, interrupted build ({folder})", flush=True)
        return folder
    print(f"[build] {name}: random init (seed {model_recipe['preset']['seed']}), then pre-training", flush=True)
    t0 = time.time()
    torch.manual_seed(model_recipe["preset"]["seed"])
    model = Qwen2VLForConditionalGeneration(embedded.tiny_config(model_recipe["preset"], processor.tokenizer))
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id], do_sample=False)
    report = pretrain.pretrain(model, processor, model_recipe["pretrain"], progress=progress,
                               tower=reusable_tower(towers_from, name, model_recipe))
    with fsio.atomic_dir(folder) as tmp:  # a half-built folder is never mistaken for a model
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        fsio.write_json(tmp / stamp.name, {"recipe": model_recipe, "pretraining": report,
                                           "vision_key": pretrain.vision_key(model_recipe),
                                           "commit": provenance.git_sha(), "seconds": round(time.time() - t0, 1)})
    print(f"[build] {name}: done in {time.time() - t0:.0f} s", flush=True)
    return folder


def measure(folders: dict[str, Path], *, sizes: dict, build_seed: int) -> dict:
    """The build report's measurements: vision probes of both towers, per-type exact match of both models on a probe
    stream with 01's default scene settings, the teacher's blind control and the prior baseline."""
    from fslib.engine import models

    p = config.default_params()
    scene = {"image_size": p["image_size"], "max_objects": p["max_objects"], "clutter": p["clutter"]}
    seed = p["seed"] + 1000 * build_seed
    images = synth.stream_records("build-probe-vision", sizes["scenes"], seed=seed, video_fraction=0.0, **scene)
    questions = synth.stream_records("build-probe-qa", sizes["questions"], seed=seed,
                                     video_fraction=p["video_fraction"], video_frames=p["video_frames"], **scene)
    prior = synth.stream_records("build-probe-prior", sizes["prior"], seed=seed,
                                 video_fraction=p["video_fraction"], video_frames=p["video_frames"], **scene)
    pixels = {k: p[k] for k in ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels",
                                "video_total_pixels")}
    out = {"settings": {**scene, "seed": seed, **sizes, "pixels": pixels}, "models": {}}
    for name, folder in folders.items():
        model, processor = models.load_model(folder, frozen=True), models.load_processor(folder)
        print(f"[build] measuring {name}: vision probes, then {len(questions)} probe questions", flush=True)
        out["models"][name] = {
            "parameters": models.param_counts(model),
            "vision_probe": probe.vision_probes(model, processor.image_processor, images),
            "questions": probe.question_scores(model, processor, questions, pixels, prior=prior,
                                               blind=name == "tiny-teacher"),
        }
    return out


def _sizes(folder: Path) -> dict:
    return {"safetensors_bytes": sum(f.stat().st_size for f in folder.rglob("*.safetensors")),
            "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}


def build(out: str | Path, *, budget: str = "full", build_seed: int = 0, progress: bool = True,
          only: str | None = None, towers_from: str | Path | None = None) -> dict | None:
    """Build the pair into ``out`` (replaced in one step when finished) and return its build report. With ``only``,
    build just that model into ``<out>.parts/`` (no report): two such processes build the pair in parallel, and a
    plain call afterwards keeps both and measures them."""
    out = Path(out)
    t0 = time.time()
    recipe = embedded.recipe(budget=budget, build_seed=build_seed)
    parts = out.with_name(out.name + ".parts")
    processor = embedded.build_tiny_processor(embedded.default_corpus(), **recipe["pixels"])
    if only is not None:
        build_model(parts / only, only, recipe["models"][only], processor, progress=progress,
                    towers_from=towers_from and Path(towers_from))
        return None
    folders = {name: build_model(parts / name, name, r, processor, progress=progress,
                                 towers_from=towers_from and Path(towers_from))
               for name, r in recipe["models"].items()}
    report = {"recipe_budget": budget, "build_seed": build_seed, "commit": provenance.git_sha(),
              "pretraining": {n: json.loads((f / "firstsight_embedded.json").read_text()) for n, f in folders.items()},
              "measured": measure(folders, sizes=PROBE if budget == "full" else TINY_PROBE, build_seed=build_seed)}
    tmp = fsio.fresh_tmp(out)
    for name, folder in folders.items():
        shutil.copytree(folder, tmp / name)
    report["sizes"] = {name: _sizes(tmp / name) for name in folders}
    report["wall_seconds"] = round(time.time() - t0, 1)  # of this invocation: a resumed build counts its own part
    report["environment"] = provenance.environment()
    fsio.write_json(tmp / embedded.RECIPE_FILE, recipe)
    fsio.write_json(tmp / embedded.REPORT_FILE, report)
    fsio.replace_dir(tmp, out)
    shutil.rmtree(parts, ignore_errors=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(embedded.PAIR_DIR), help="where the pair goes (default: embedded/)")
    ap.add_argument("--budget", choices=("full", "tiny"), default="full",
                    help="full: the shipped recipe; tiny: every stage for a few steps (seconds), to test the command")
    ap.add_argument("--build-seed", type=int, default=0, help="moves every seed of the recipe (default 0: shipped)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--only", choices=list(embedded.EMBEDDED_PRESETS), default=None,
                    help="build only this model into <out>.parts/ (run one process per model, then once without it)")
    ap.add_argument("--towers-from", default=None,
                    help="an earlier built pair whose vision towers to reuse where their vision key (seed, vision "
                         "recipe, tower shape, stage version) equals this recipe's; the others are trained")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = build(args.out, budget=args.budget, build_seed=args.build_seed, progress=True, only=args.only,
                   towers_from=args.towers_from)
    if report is None:
        return 0
    teacher = report["measured"]["models"]["tiny-teacher"]["questions"]
    student = report["measured"]["models"]["tiny-student"]["questions"]
    print(f"[build] {args.out}: teacher EM {teacher['exact_match']:.3f} (blind {teacher['blind_exact_match']:.3f}, "
          f"prior {teacher['prior_baseline']:.3f}), student start EM {student['exact_match']:.3f}, "
          f"{report['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
