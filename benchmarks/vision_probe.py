"""What the embedded models' frozen vision towers carry: linear probes on their visual tokens.

    .venv/bin/python benchmarks/vision_probe.py          # writes benchmarks/results/vision_probe.json

A question about the image can only be answered when its answer is in the visual tokens the language model reads
(the merger's output, one token per 28x28-pixel cell). This script asks the built towers of the embedded teacher and
student (02 keeps both frozen) what they carry: on scenes of a seed stream disjoint from every split (01's default
scene settings), a linear classifier (multinomial logistic regression, Adam) learns from 80% of the tokens and is
scored on the other 20%:

- ``object_category`` and ``object_colour``: the token of the cell under an object's centre, 6 classes each;
- ``held_object``: the token of a hand's cell, for hands that hold something, 6 classes.

Each probe is reported beside its majority-class accuracy. A probe far above it means the tower has the answer and
the language model must learn to read it; one near it means the tower does not see it (its pre-training, the
objects' size or the resolution is then what to change). Compare the per-question-type accuracies in ``kd_vs_sft.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fslib.core import config, fsio, provenance
from fslib.engine import models
from fslib.world import (
    embedded,
    synth,  # noqa: E402
)

TASKS = ("object_category", "object_colour", "held_object")


def _cell(thing: dict, grid_h: int, grid_w: int) -> int:
    """Row-major index of the merged token whose cell holds the point (x, y) (normalised image coordinates)."""
    return min(grid_h - 1, int(thing["y"] * grid_h)) * grid_w + min(grid_w - 1, int(thing["x"] * grid_w))


def probe_examples(records: list[dict], tokens: list[torch.Tensor], grids: list[tuple[int, int]]) -> dict:
    """``{task: (features (N, D), labels (N,))}`` from each record's scene layout and its merged tokens."""
    out = {t: ([], []) for t in TASKS}
    for rec, tok, (gh, gw) in zip(records, tokens, grids):
        for obj in rec["scene"]["objects"]:
            for task, label in (("object_category", synth.OBJECTS.index(obj["name"])),
                                ("object_colour", synth.COLOURS.index(obj["colour"]))):
                out[task][0].append(tok[_cell(obj, gh, gw)])
                out[task][1].append(label)
        for hand in rec["scene"]["hands"]:
            if hand["held"]:
                out["held_object"][0].append(tok[_cell(hand, gh, gw)])
                out["held_object"][1].append(synth.OBJECTS.index(hand["held"]["name"]))
    return {t: (torch.stack(x), torch.tensor(y)) for t, (x, y) in out.items() if x}


def linear_probe(x: torch.Tensor, y: torch.Tensor, *, train_fraction: float = 0.8, steps: int = 500,
                 seed: int = 0) -> dict:
    """Held-out accuracy of a linear classifier on standardised features, and the majority class's accuracy."""
    n, k = len(x), int(y.max()) + 1
    cut = int(n * train_fraction)
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[:cut]), y[:cut]).backward()
        opt.step()
    with torch.no_grad():
        acc = (lin(x[cut:]).argmax(1) == y[cut:]).float().mean().item()
    majority = torch.bincount(y[cut:], minlength=k).max().item() / (n - cut)
    return {"accuracy": acc, "majority": majority, "classes": k, "train": cut, "test": n - cut}


@torch.no_grad()
def visual_tokens(model, image_processor, records: list[dict], batch_size: int = 64):
    """Each record's merged visual tokens (the language model's input) and its token grid (h, w)."""
    visual, merge = model.model.visual, image_processor.merge_size
    tokens, grids = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        enc = image_processor(images=[r["image"] for r in chunk], return_tensors="pt")
        pooled = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        offset = 0
        for g in enc["image_grid_thw"]:
            gh, gw = int(g[1]) // merge, int(g[2]) // merge
            tokens.append(pooled[offset:offset + gh * gw])
            grids.append((gh, gw))
            offset += gh * gw
    return tokens, grids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=3000, help="scenes to probe (default 3000)")
    ap.add_argument("--models", nargs="+", default=None, help="models (default: 02's teacher_model and student_model)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vision_probe.json"))
    args = ap.parse_args(argv)
    p = config.default_params()
    names = args.models or [p["teacher_model"], p["student_model"]]
    records = synth.stream_records("vision-probe", args.scenes, seed=p["seed"], video_fraction=0.0,
                                   image_size=p["image_size"], max_objects=p["max_objects"], clutter=p["clutter"])
    result = {"scenes": args.scenes, "models": {}}
    with tempfile.TemporaryDirectory(prefix="vision_probe_") as work:
        for name in names:
            path = embedded.resolve_model(name, Path(work) / "embedded")
            model = models.load_model(path, frozen=True)
            tokens, grids = visual_tokens(model, models.load_processor(path).image_processor, records)
            examples = probe_examples(records, tokens, grids)
            result["models"][name] = {task: linear_probe(*examples[task]) for task in TASKS if task in examples}
            print(name, {t: f"{r['accuracy']:.3f} (majority {r['majority']:.3f})"
                         for t, r in result["models"][name].items()})
    result["settings"] = {k: p[k] for k in ("seed", "image_size", "max_objects", "clutter", "image_max_pixels")}
    result["command"] = "python benchmarks/vision_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["environment"] = provenance.environment()
    fsio.write_json(args.out, result)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
