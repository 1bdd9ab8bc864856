"""What a model knows, measured two ways: linear probes on its visual tokens, and exact match on a question stream.

Both run on seed streams of their own (``fslib.world.synth.stream_records``), disjoint from every split and from the
pre-training streams, with 01's default scene settings. The build report (``fslib.world.build``) and
``benchmarks/vision_probe.py`` use them.

- **Visual tokens** (the merger's output, one token per 28x28-pixel cell, what the language model reads): a linear
  classifier (multinomial logistic regression, Adam) learns from 80% of the tokens and is scored on the other 20%:
  ``object_category`` and ``object_colour`` at the token of the cell under an object's centre, ``held_object`` at a
  hand's cell. Each is reported beside its majority-class accuracy: a probe near it means the tower does not see it.
- **Questions**: greedy answers' exact match, overall and per question type, with the blind control (the same
  questions with blank images and clips) and the prior baseline (each type's most frequent answer).
"""

from __future__ import annotations

import torch

from fslib.world import synth

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
    return {"accuracy": round(acc, 4), "majority": round(majority, 4), "classes": k, "train": cut, "test": n - cut}


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


def vision_probes(model, image_processor, records: list[dict]) -> dict:
    """``{task: linear_probe(...)}`` for every task the records give examples of."""
    examples = probe_examples(records, *visual_tokens(model, image_processor, records))
    return {task: linear_probe(*examples[task]) for task in TASKS if task in examples}


def question_scores(model, processor, records: list[dict], pixels: dict, *, prior: list[dict],
                    batch_size: int = 16, max_new_tokens: int = 8, blind: bool = True) -> dict:
    """Exact match overall and per question type (``fslib.evaluation.metrics.summarise``), with the blind control
    when ``blind``, and the prior baseline computed from the labelled records ``prior``."""
    from fslib.engine import collate, generate
    from fslib.evaluation import metrics

    def answers(blank: bool) -> list[str]:
        c = collate.VQACollator(processor, pixels, max_length=512, train=False, blind=blank)
        return generate.generate_answers(model, c, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                         desc="probe questions" + (" (blind)" if blank else ""))

    s = metrics.summarise(answers(False), records, blind=answers(True) if blind else None, n_resamples=200)
    keep = lambda b: {k: v for k, v in b.items() if k in ("n", "exact_match", "exact_match_ci",  # noqa: E731
                                                          "blind_exact_match")}
    return {**keep(s), "per_type": {q: keep(v) for q, v in s["per_type"].items()},
            "prior_baseline": metrics.prior_baseline(prior, records)["exact_match"]}
