"""01_data's decisions: where the records come from, which samples fit the limits, and what is written."""

from __future__ import annotations

from pathlib import Path

from fslib.core.fsio import write_json
from fslib.core.provenance import environment
from fslib.data import sources, stats, store
from fslib.engine import collate, models
from fslib.training.config import pixel_bounds
from fslib.world import embedded, synth


def build_splits(P: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """The seeded synthetic world (``data_source: synthetic``) or the user's data, split; and the skipped records.
    The scene settings (n_train ... video_frames) describe the synthetic world only."""
    if P["data_source"] == "synthetic":
        splits = synth.build_synthetic(seed=P["seed"], n_train=P["n_train"], n_val=P["n_val"], n_test=P["n_test"],
                                       n_ood=P["n_ood"], image_size=P["image_size"], max_objects=P["max_objects"],
                                       clutter=P["clutter"], video_fraction=P["video_fraction"],
                                       video_frames=P["video_frames"], progress=True)
        return splits, []
    return sources.load_splits(P["data_source"], fmt=P["data_format"], on_bad_sample=P["on_bad_sample"],
                               val_fraction=P["val_fraction"], test_fraction=P["test_fraction"], seed=P["seed"])


def within_limits(P: dict, out: Path, splits: dict) -> tuple[dict, dict, list[dict]]:
    """Every sample's tokens counted with the student's real processor, then those over ``max_length`` or
    ``max_visual_tokens`` refused or skipped (``on_bad_sample``): (splits, token counts, skipped)."""
    processor = models.load_processor(embedded.resolve_model(P["student_model"], Path(out) / "embedded"),
                                      trust_remote_code=P["trust_remote_code"])
    tokens = stats.token_counts(splits, collate.VQACollator(processor, pixel_bounds(P), max_length=10**9))
    return sources.check_limits(splits, tokens, max_length=P["max_length"], max_visual_tokens=P["max_visual_tokens"],
                                on_bad_sample=P["on_bad_sample"], source=P["data_source"])


def save(P: dict, out: Path, splits: dict):
    """``data/``: the DatasetDict every later stage reads, with a dataset card naming its source."""
    card = {"generator_version": synth.GENERATOR_VERSION if P["data_source"] == "synthetic" else None,
            "seed": P["seed"], "source": P["data_source"], "params": P}
    return store.save_dataset(splits, Path(out) / "data", card=card)


def write_stats(P: dict, out: Path, splits: dict, tokens: dict, skipped: list[dict]) -> dict:
    """``data_stats.json``: counts, answers and token lengths per split, the skipped records, params and provenance."""
    summary = stats.summarize(splits, tokens, skipped)
    write_json(Path(out) / "data_stats.json", {"params": P, "seed": P["seed"], "environment": environment(), **summary})
    return summary
