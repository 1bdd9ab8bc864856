"""Stage 2 of the embedded pair's pre-training: the language model learns to read its frozen vision tower.

The tower is trained first (``fslib.world.pretrain.pretrain_vision``) and then frozen, so every scene maps to the same
visual tokens for the rest of the build. They are computed once, kept in memory with the tokenised prompt and answer,
and passed to the model as ``mm_encoder_outputs`` (transformers 5.x): a training step costs only the language model,
and batches can be large. What this bought, in the committed build (``embedded/build_report.json``): the previous
stage (the project's 02 loop on pixels at batch 8, learning rate 2e-3 with a cosine schedule, 54k examples) left the
teacher at EM 0.465 with held object 0.236; this one, on the same frozen tower, at 0.775 with held object 0.986 after
160k examples, its curve still rising at 96k. ``benchmarks/lm_probe.py`` found batch size, learning rate and a share of
captions making no difference per example at 12k examples: the lever is examples seen, which cached tokens make cheap.

Every ``eval_every`` steps (and at the end) the model answers a probe stream of its own (01's default scene
settings) and the per-type exact match is recorded: ``build_report.json`` keeps these curves. With ``stop_at_em`` the
stage ends at the first probe that reaches it: the student's starting weights must read images but leave room to
learn the task (at most 0.45 EM), and a stopping rule makes that hold by construction rather than by tuning steps.
"""

from __future__ import annotations

import math
import random
import time

import torch

from fslib.world import synth

PIXELS = dict(image_min_pixels=56 * 56, image_max_pixels=112 * 112, video_min_pixels=56 * 56,
              video_max_pixels=112 * 112, video_total_pixels=112 * 112 * 8)
CURVE_SCENE = dict(image_size=112, max_objects=3, clutter=2)  # 01's defaults (fslib.core.config)


@torch.no_grad()
def cache_batches(model, processor, records: list[dict], *, batch_size: int, pixels: dict = PIXELS,
                  progress: bool = True) -> list[dict]:
    """Tokenised training batches of ``records`` with the frozen tower's merged tokens in place of pixels."""
    from tqdm.auto import tqdm

    from fslib.engine import collate

    col = collate.VQACollator(processor, pixels, max_length=256, train=True)
    merge = model.config.vision_config.spatial_merge_size ** 2
    visual = model.model.visual.eval()
    out = []
    for i in tqdm(range(0, len(records), batch_size), desc="caching visual tokens", disable=not progress):
        b = col(records[i:i + batch_size])
        inputs, feats = dict(b["inputs"]), {}
        for kind, pk, gk in (("image", "pixel_values", "image_grid_thw"),
                             ("video", "pixel_values_videos", "video_grid_thw")):
            pv = inputs.pop(pk, None)
            if pv is not None:
                grid = inputs[gk]
                pooled = visual(pv, grid_thw=grid).pooler_output
                feats[kind] = tuple(pooled.split((grid.prod(-1) // merge).tolist()))
        out.append({"inputs": inputs, "feats": feats, "labels": b["labels"]})
    return out


def _step(model, batch: dict) -> torch.Tensor:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    feats = {k: BaseModelOutputWithPooling(pooler_output=v) for k, v in batch["feats"].items()}
    return model(**batch["inputs"], mm_encoder_outputs=feats, labels=batch["labels"]).loss


def curve_point(model, processor, probe: list[dict], prior: list[dict], *, step: int, examples: int,
                seconds: float) -> dict:
    """One point of the stage's curve: exact match overall and per type on the probe stream."""
    from fslib.world.probe import question_scores

    was = model.training
    model.eval()
    s = question_scores(model, processor, probe, PIXELS, prior=prior, blind=False, batch_size=64)
    model.train(was)
    model.model.visual.eval()
    return {"step": step, "examples": examples, "train_seconds": round(seconds, 1),
            "exact_match": round(s["exact_match"], 4),
            "per_type": {str(q): round(v["exact_match"], 4) for q, v in s["per_type"].items()}}


def train_language(model, processor, batches: list[dict], *, examples: int, lr: float, warmup_steps: int,
                   eval_every: int, probe: list[dict], prior: list[dict], stop_at_em: float | None = None,
                   seed: int = 0, progress: bool = True) -> dict:
    """AdamW on every language-model weight (the tower and its merger stay frozen), linear warm-up then cosine decay to
    a tenth of ``lr`` over ``examples // batch`` steps, cycling through ``batches`` in a fresh order each pass."""
    from tqdm.auto import tqdm

    batch = batches[0]["labels"].shape[0]
    steps = max(1, examples // batch)
    model.model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    rng, order, curve, losses, spent = random.Random(seed), [], [], [], 0.0
    model.train()
    model.model.visual.eval()

    def point(step):
        curve.append(curve_point(model, processor, probe, prior, step=step, examples=step * batch, seconds=spent))
        print(f"[language] step {step}/{steps}: EM {curve[-1]['exact_match']:.3f} {curve[-1]['per_type']}", flush=True)
        return stop_at_em is not None and curve[-1]["exact_match"] >= stop_at_em

    stopped = point(0)
    with tqdm(total=steps, desc="pre-training: language model", disable=not progress) as bar:
        for step in range(1, steps + 1):
            if stopped:
                break
            if not order:
                order = list(range(len(batches)))
                rng.shuffle(order)
            t = time.time()
            loss = _step(model, batches[order.pop()])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            spent += time.time() - t
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % eval_every == 0 or step == steps:
                stopped = point(step)
    model.eval()
    return {"steps": len(losses), "batch": batch, "examples_seen": len(losses) * batch,
            "stopped_early": bool(stopped and len(losses) < steps), "train_seconds": round(spent, 1),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4) if losses else None,
            "curve": curve}


def probe_streams(seed: int, n: int) -> tuple[list[dict], list[dict]]:
    """The stage's probe questions and the prior's labelled records: streams of their own, 01's scene settings."""
    probe = synth.stream_records("language-probe", n, seed=seed, video_fraction=0.25, **CURVE_SCENE)
    prior = synth.stream_records("language-prior", min(240, 4 * n), seed=seed, video_fraction=0.25, **CURVE_SCENE)
    return probe, prior


def language_stage(model, processor, records: list[dict], *, examples: int, batch_size: int = 64, lr: float = 1e-3,
                   warmup_steps: int = 100, eval_every: int = 250, probe_questions: int = 240,
                   stop_at_em: float | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Cache ``records``' visual tokens, then train the language model on them (``train_language``)."""
    t0 = time.time()
    rng = random.Random(seed)
    records = list(records)
    rng.shuffle(records)  # captions and questions mixed within every batch
    batches = cache_batches(model, processor, records, batch_size=batch_size, progress=progress)
    cached = time.time() - t0
    probe, prior = probe_streams(seed, probe_questions)
    out = train_language(model, processor, batches, examples=examples, lr=lr, warmup_steps=warmup_steps,
                         eval_every=eval_every, probe=probe, prior=prior, stop_at_em=stop_at_em, seed=seed,
                         progress=progress)
    return {"records": len(records), "cache_seconds": round(cached, 1), **out,
            "wall_seconds": round(time.time() - t0, 1)}
