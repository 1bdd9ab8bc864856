"""Which recipe teaches a language model to read a built vision tower, and how fast: measured before paying for a build.

    .venv/bin/python benchmarks/lm_probe.py                  # benchmarks/results/lm_probe.json (4 variants, 2 at a time)
    .venv/bin/python benchmarks/lm_probe.py --examples 4000 --variants batch64 --out /tmp/lm.json   # a quick look

Each variant keeps a built model's frozen vision tower (``--pair``, default the committed ``embedded/``), puts a freshly
initialised language model on it (the model's own shape, or fewer layers) and trains only that with the build's own
language stage (``fslib.world.language``: visual tokens computed once, then AdamW on the language model), on the same
number of examples, recording per-type exact match on the stage's probe stream at fixed points. The levers:

- ``v1``: the previous build's recipe on this data: batches of 8 at a learning rate of 2e-3 (its alignment stage ran the
  02 loop that way, on pixels);
- ``batch64``: batches of 64 at 1e-3, questions only (a quarter on clips);
- ``batch64+captions``: the same with a fifth of the records scene captions (they name every colour-object pair and
  say which are on the surface and which in a hand);
- ``student-2L``: the student's tower with a fresh two-layer language model of the student's width, ``batch64``.

Variants run as separate processes, ``--jobs`` at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "v1": {"model": "tiny-teacher", "batch_size": 8, "lr": 2e-3, "captions": 0},
    "batch64": {"model": "tiny-teacher", "batch_size": 64, "lr": 1e-3, "captions": 0},
    "batch64+captions": {"model": "tiny-teacher", "batch_size": 64, "lr": 1e-3, "captions": 0.2},
    "student-2L": {"model": "tiny-student", "batch_size": 64, "lr": 1e-3, "captions": 0, "layers": 2},
}


def run_variant(name: str, spec: dict, *, pair: Path, records: int, examples: int, points: int, seed: int) -> dict:
    """One variant in this process: fresh language model on the pair's tower, the language stage, its curve."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from fslib.world import language, pretrain

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    built = Qwen2VLForConditionalGeneration.from_pretrained(pair / spec["model"])
    cfg = built.config
    if spec.get("layers"):
        cfg.text_config.num_hidden_layers = spec["layers"]
        if getattr(cfg.text_config, "layer_types", None):
            cfg.text_config.layer_types = cfg.text_config.layer_types[:spec["layers"]]
    model = Qwen2VLForConditionalGeneration(cfg)
    model.model.visual.load_state_dict(built.model.visual.state_dict())
    processor = AutoProcessor.from_pretrained(pair / spec["model"])
    n_cap = int(records * spec["captions"])
    data = pretrain.alignment_records(captions=n_cap, questions=records - n_cap, seed=seed)
    steps = examples // spec["batch_size"]
    out = language.language_stage(model, processor, data, examples=examples, batch_size=spec["batch_size"],
                                  lr=spec["lr"], warmup_steps=max(1, min(100, steps // 10)),
                                  eval_every=max(1, steps // points), seed=seed, progress=False)
    lm = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    return {**spec, "language_model_parameters": lm, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--pair", default=str(ROOT / "embedded"), help="a built pair whose towers to use")
    ap.add_argument("--records", type=int, default=4000, help="distinct training records (repeated as epochs)")
    ap.add_argument("--examples", type=int, default=12000, help="examples each variant trains on")
    ap.add_argument("--points", type=int, default=4, help="curve points after the start")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_probe.json"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, write JSON to --out
    args = ap.parse_args(argv)
    kw = dict(pair=Path(args.pair), records=args.records, examples=args.examples, points=args.points, seed=args.seed)
    if args.one:
        Path(args.out).write_text(json.dumps(run_variant(args.one, VARIANTS[args.one], **kw)))
        return 0
    from fslib.core import fsio, provenance

    t0, results = time.time(), {}
    with tempfile.TemporaryDirectory(prefix="lm_probe_") as tmp:
        pending, running = list(args.variants), {}
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                out = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, __file__, "--one", name, "--out", str(out), "--pair", args.pair,
                       "--records", str(args.records), "--examples", str(args.examples), "--points", str(args.points),
                       "--seed", str(args.seed)]
                running[name] = (subprocess.Popen(cmd, cwd=ROOT), out)
            time.sleep(2)
            for name, (proc, out) in list(running.items()):
                if proc.poll() is not None:
                    if proc.returncode:
                        raise SystemExit(f"variant {name} failed with exit code {proc.returncode}")
                    results[name] = json.loads(out.read_text())
                    last = results[name]["curve"][-1]
                    print(f"{name}: EM {last['exact_match']:.3f} after {last['examples']} examples "
                          f"({results[name]['train_seconds']:.0f} s of training) {last['per_type']}", flush=True)
                    del running[name]
    fsio.write_json(args.out, {
        "settings": {k: v for k, v in vars(args).items() if k not in ("one", "out")},
        "variants": results, "wall_seconds": round(time.time() - t0, 1),
        "command": "python benchmarks/lm_probe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": provenance.environment()})
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
