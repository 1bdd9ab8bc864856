"""What the embedded models' frozen vision towers carry: linear probes on their visual tokens.

    .venv/bin/python benchmarks/vision_probe.py          # writes benchmarks/results/vision_probe.json

A question about the image can only be answered when its answer is in the visual tokens the language model reads
(the merger's output, one token per 28x28-pixel cell). This script asks the built towers of the embedded teacher and
student (02 keeps both frozen) what they carry (``fslib.world.probe``): on scenes of a seed stream disjoint from every
split (01's default scene settings), a linear classifier (multinomial logistic regression, Adam) learns from 80% of the
tokens and is scored on the other 20%:

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


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fslib.core import config, fsio, provenance
from fslib.engine import models
from fslib.world import embedded, probe, synth  # noqa: E402

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
            result["models"][name] = probe.vision_probes(model, models.load_processor(path).image_processor, records)
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
