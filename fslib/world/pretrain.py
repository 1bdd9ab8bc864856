"""Pre-training of the embedded tiny pair: what web-scale pre-training gives the real Qwen2-VL models.

``Qwen/Qwen2-VL-7B-Instruct`` and ``-2B-Instruct`` arrive with a vision tower trained on billions of images and a
language model already taught to read it. The embedded pair is built from random weights, and the few hundred
question-answer pairs of the tiny default cannot teach a random tower to see: without pre-training the tiny
teacher answers from the question text alone (its accuracy equals the blind control's). Each embedded model is
therefore pre-trained once, by ``make embedded`` (``fslib.world.build``), in two stages:

1. **Vision** (as CLIP/DFN pre-training): the vision tower and its merger learn to *label every visual token*: which
   object categories, colours and hands the 28x28-pixel cell under the token shows, and where in the image the cell
   is. The position targets matter: Qwen2-VL's tower has no absolute position embedding (2D RoPE is relative), and
   the language model's M-RoPE gives the image's width axis its lowest frequencies (under 1e-3 rad across the tiny
   pair's 4-token-wide grid), so without them a small model cannot tell "my left hand" from "my right hand".
2. **Language** (as the real pair's caption and instruction stages): with the tower frozen, the whole language model
   learns to describe scenes (``"table: red cup, blue phone. left hand: nothing. right hand: green apple."``) and
   to answer questions of the task's kinds, from cached visual tokens at large batches (``fslib.world.language``).

All scenes come from their own seed streams (``fslib.world.synth.stream_records``), disjoint from every train, val, test,
ood and unlabelled scene, and never show the default held-out colour-object pairs. Labels and captions are exact, read
from each scene's layout. The recipe is part of ``embedded/recipe.json``: a change makes the committed pair stale
until it is rebuilt.

Fine-tuning a pre-trained tower with AdamW at the tiny default's learning rate undid it: with the tower trainable,
the teacher's answers were the same with and without the image; with it frozen, colour questions were answered from
the image (Adam's normalised updates move every weight by about lr, however small its gradient). So 02 keeps vision
towers frozen by default, as the common Qwen2-VL fine-tuning recipes do (LLaMA-Factory's ``freeze_vision_tower``).
"""
from __future__ import annotations

import torch

from fslib.world import synth

# Part of the pair's recipe (fslib.world.embedded.recipe): bump it whenever a code change alters what pre-training
# computes, so the committed pair is rebuilt rather than kept from older code. Float rounding counts: which positions the loss projects
# logits at (fslib.engine.losspaths) changed the former alignment stage's rounding and so the language models' weights.
PRETRAIN_VERSION = 3
# The vision stage's own version: its code is unchanged since PRETRAIN_VERSION 2, so towers built then are reusable.
VISION_VERSION = 2
CAPTION_PROMPT = "Describe what I see."
POSITIONS = ("col_left", "col_centre", "col_right", "row_top", "row_middle", "row_bottom")
LABELS = (*synth.OBJECTS, *synth.COLOURS, "hand", *POSITIONS)
SCENE = dict(image_size=112, max_objects=4, clutter=2)


def _box(x: float, y: float, r: float) -> tuple[float, float, float, float]:
    """The normalised box an object drawn at (x, y) with radius r covers (see ``fslib.world.render._draw_object``)."""
    return x - 0.85 * r, y - 1.05 * r, x + 1.0 * r, y + 0.95 * r


def cell_labels(scene: dict, grid_h: int, grid_w: int, min_cover: float = 0.25) -> torch.Tensor:
    """``[grid_h * grid_w, len(LABELS)]`` multi-hot, row-major like the merged visual tokens.

    A cell shows a thing when the thing's box covers at least ``min_cover`` of the cell or the cell holds at least
    ``min_cover`` of the box (so small objects count); every cell also gets its column and row third.
    """
    out = torch.zeros(grid_h, grid_w, len(LABELS))
    things = [(o["name"], o["colour"], _box(o["x"], o["y"], o["r"])) for o in scene["objects"]]
    for hand in scene["hands"]:
        things.append(("hand", None, (hand["x"] - 0.09, hand["y"] - 0.06, hand["x"] + 0.09, hand["y"] + 0.2)))
        if hand["held"]:
            h = hand["held"]
            things.append((h["name"], h["colour"], _box(hand["x"], hand["y"], h["r"])))
    ch, cw = 1.0 / grid_h, 1.0 / grid_w
    for i in range(grid_h):
        for j in range(grid_w):
            out[i, j, LABELS.index(POSITIONS[min(2, int(3 * (j + 0.5) * cw))])] = 1
            out[i, j, LABELS.index(POSITIONS[3 + min(2, int(3 * (i + 0.5) * ch))])] = 1
    for name, colour, (x0, y0, x1, y1) in things:
        area = max(1e-9, (x1 - x0) * (y1 - y0))
        for i in range(grid_h):
            for j in range(grid_w):
                ox = max(0.0, min(x1, (j + 1) * cw) - max(x0, j * cw))
                oy = max(0.0, min(y1, (i + 1) * ch) - max(y0, i * ch))
                if ox * oy >= min_cover * min(area, ch * cw):
                    out[i, j, LABELS.index(name)] = 1
                    if colour:
                        out[i, j, LABELS.index(colour)] = 1
    return out.reshape(grid_h * grid_w, len(LABELS))


def caption(scene: dict) -> str:
    """The exact description of a scene: surface objects left to right, then each hand."""
    table = ", ".join(f"{o['colour']} {o['name']}" for o in sorted(scene["objects"], key=lambda o: o["x"]))
    hands = [f"{h['side']} hand: " + (f"{h['held']['colour']} {h['held']['name']}" if h["held"] else "nothing")
             for h in scene["hands"]]
    return f"{scene['surface']}: {table or 'nothing'}. " + ". ".join(hands) + "."


def caption_corpus() -> list[str]:
    """Caption phrasings for the tokenizer's training text."""
    lines = [CAPTION_PROMPT, *(f"{side} hand: nothing." for side in synth.HANDS)]
    for surface in synth.SURFACES:
        lines += [f"{surface}: {c} {o}, {c} {o}." for c in synth.COLOURS for o in synth.OBJECTS]
    return lines


def pretrain_vision(model, image_processor, *, scenes: int, epochs: int, lr: float, batch_size: int = 32,
                    seed: int = 0, progress: bool = True) -> dict:
    """Stage 1: train ``model.model.visual`` (patch embedding, blocks and merger) in place to label each token.

    Returns per-label F1 on held-out scenes and the first and last losses, which the build records.
    """
    from tqdm.auto import tqdm

    visual, merge = model.model.visual, image_processor.merge_size
    n_eval = max(64, scenes // 16)
    records = synth.stream_records("pretrain-vision", scenes + n_eval, seed=seed, video_fraction=0.0, **SCENE)
    def encode(chunk):  # per step, not all at once: 16k scenes of pixel values would hold ~5 GB
        enc = image_processor(images=[r["image"] for r in chunk], return_tensors="pt")
        grids = enc["image_grid_thw"]
        labels = torch.cat([cell_labels(r["scene"], int(g[1]) // merge, int(g[2]) // merge)
                            for r, g in zip(chunk, grids)])
        return enc["pixel_values"], grids, labels

    chunks = lambda recs: [recs[i:i + batch_size] for i in range(0, len(recs), batch_size)]  # noqa: E731
    train_b, eval_b = chunks(records[:scenes]), chunks(records[scenes:])
    head = torch.nn.Linear(model.config.vision_config.hidden_size, len(LABELS))
    visual.requires_grad_(True)
    params = [*visual.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = epochs * len(train_b)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total))
    # Positive cells are rare (an object covers 1-3 of 16): weigh them up so "nothing anywhere" is no minimum.
    stacked = torch.cat([encode(b)[2] for b in train_b[:64]])  # the label rates of the first 64 batches
    pos_weight = ((len(stacked) - stacked.sum(0)) / stacked.sum(0).clamp(min=1)).clamp(max=20.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = torch.Generator().manual_seed(seed)
    visual.train()
    losses = []
    with tqdm(total=total, desc="pre-training: vision tower", disable=not progress) as bar:
        for _ in range(epochs):
            for k in torch.randperm(len(train_b), generator=gen).tolist():
                pixels, grids, labels = encode(train_b[k])
                loss = loss_fn(head(visual(pixels, grid_thw=grids).pooler_output), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    visual.eval()
    with torch.no_grad():
        encoded = [encode(b) for b in eval_b]
        pred = torch.cat([(head(visual(p, grid_thw=g).pooler_output) > 0).float() for p, g, _ in encoded])
    truth = torch.cat([b[2] for b in encoded])
    tp = (pred * truth).sum(0)
    recall, precision = tp / truth.sum(0).clamp(min=1), tp / pred.sum(0).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-9)
    return {"eval_cells": int(truth.shape[0]), "f1": {n: round(float(v), 3) for n, v in zip(LABELS, f1)},
            "loss_first": round(losses[0], 4), "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4)}


def alignment_records(*, captions: int, questions: int, seed: int = 0, video_fraction: float = 0.25) -> list[dict]:
    """Stage 2 data: ``captions`` described scenes and ``questions`` task-style questions (``video_fraction`` on clips)."""
    caps = synth.stream_records("pretrain-caption", captions, seed=seed, video_fraction=0.0, **SCENE)
    caps = [{**r, "qtype": "caption", "question": CAPTION_PROMPT, "answer": caption(r["scene"]), "aliases": []}
            for r in caps]
    qa = (synth.stream_records("pretrain-qa", questions, seed=seed, video_fraction=video_fraction, **SCENE)
          if questions else [])
    return [{k: v for k, v in r.items() if k != "scene"} for r in caps + qa]


def vision_key(model_recipe: dict) -> dict:
    """What the vision stage's result depends on: its seed, its recipe, the tower's shape and the merger's output
    width (the language model's hidden size), and the stage's code version. Towers with equal keys are the same."""
    preset, pre = model_recipe["preset"], model_recipe["pretrain"]
    return {"vision_version": VISION_VERSION, "seed": pre.get("seed", 0), "vision": pre.get("vision"),
            **{k: preset[k] for k in ("vis_depth", "vis_dim", "vis_heads", "hidden")}}


def pretrain(model, processor, recipe: dict, *, progress: bool = True, tower: dict | None = None) -> dict:
    """Both stages as ``recipe`` says (``{"vision": {...}, "language": {...}}``; an empty stage is skipped).

    ``tower`` (``{"state_dict": ..., "report": ..., "source": ...}``) is the vision stage's result taken from an
    earlier build with the same ``vision_key``: the stage is then not run again (``fslib.world.build --towers-from``).
    """
    from fslib.world import language

    seed = recipe.get("seed", 0)
    torch.manual_seed(seed)
    out = {"version": PRETRAIN_VERSION}
    if tower is not None:
        model.model.visual.load_state_dict(tower["state_dict"])
        out["vision"] = {**tower["report"], "reused_from": tower["source"]}
    elif recipe.get("vision"):
        out["vision"] = pretrain_vision(model, processor.image_processor, seed=seed, progress=progress,
                                        **recipe["vision"])
    if lang := recipe.get("language"):
        lang = dict(lang)
        records = alignment_records(captions=lang.pop("captions"), questions=lang.pop("questions"), seed=seed,
                                    video_fraction=lang.pop("video_fraction", 0.25))
        out["language"] = language.language_stage(model, processor, records, seed=seed, progress=progress, **lang)
    model.eval()
    return out
