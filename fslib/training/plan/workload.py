"""What one micro-batch holds, from the run's parameters: visual tokens and vision-tower patches of its images and
clips (the Qwen resize rule, as ``qwen_vl_utils`` applies it through ``fslib.engine.collate``, with the family's
factor: 28 pixels per visual token side for Qwen2-VL and Qwen2.5-VL, 32 for Qwen3-VL and Qwen3.5), text tokens, answer
tokens, and so the sequence length of the longest sample (capped by ``max_length``, beyond which the collator
refuses a sample).

Where 01 has run, ``data_stats.json`` gives the measured longest text and visual token counts; otherwise the text is
an assumed budget (``TEXT_TOKENS``), stated in the plan. Answers are ``ANSWER_TOKENS`` unless told.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

PATCH, MERGE, TEMPORAL = 14, 2, 2  # Qwen2-VL: 14-px patches, 2x2 merge, 2 frames per temporal patch
FACTOR = PATCH * MERGE  # 28 px per visual token side (Qwen3-VL, Qwen3.5: 32, ``factor`` below)
VIDEO_FRAME_MAX_TOKENS = 768  # qwen_vl_utils.vision_process's cap on a clip frame, in visual tokens
VIDEO_FRAME_MAX_PIXELS = VIDEO_FRAME_MAX_TOKENS * FACTOR * FACTOR
TEXT_TOKENS = 64  # assumed: system prompt, template, question and answer (the synthetic world's are below 50)
ANSWER_TOKENS = 8  # assumed answer tokens per sample, <|im_end|> included (the synthetic world's are 2 to 4)


def resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """``qwen_vl_utils.smart_resize`` with the family's factor (28 by default)."""
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def image_tokens(side: int, p: dict, factor: int = FACTOR) -> int:
    h, w = resize(side, side, p["image_min_pixels"], p["image_max_pixels"], factor)
    return (h // factor) * (w // factor)


def video_tokens(side: int, frames: int, p: dict, factor: int = FACTOR) -> int:
    """A clip of ``frames`` square frames: each frame resized with the clip bounds, then the whole clip again with
    the per-frame share of ``video_total_pixels`` (as ``qwen_vl_utils.fetch_video`` does for a list of frames)."""
    n = math.ceil(frames / TEMPORAL) * TEMPORAL
    h, w = resize(side, side, p["video_min_pixels"], p["video_max_pixels"], factor)
    cap = max(min(VIDEO_FRAME_MAX_TOKENS * factor * factor, p["video_total_pixels"] / n * TEMPORAL),
              int(p["video_min_pixels"] * 1.05))
    h, w = resize(h, w, p["video_min_pixels"], min(p["video_max_pixels"], cap), factor)
    return n // TEMPORAL * (h // factor) * (w // factor)


@dataclass(frozen=True)
class Workload:
    """One micro-batch of ``batch`` samples padded to the longest, and what an epoch holds."""

    batch: int
    seq_len: int  # tokens of the longest sample (visual included): every sample of the batch is padded to it
    visual_tokens: int  # of the longest sample
    answer_tokens: int  # per sample: the positions the loss projects (N = batch x answer_tokens)
    mean_seq_len: float  # over the epoch's samples (for time per epoch)
    mean_visual_tokens: float
    samples_per_epoch: int
    memo_samples: int  # train and validation items whose visual tokens the vision memo may keep
    sources: str  # where the numbers came from

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def patches(self) -> int:
        """Vision-tower patches of the longest sample (four per visual token)."""
        return self.visual_tokens * MERGE * MERGE

    def to_dict(self) -> dict:
        return asdict(self)


def _visual(P: dict, factor: int) -> tuple[int, float, str]:
    """(visual tokens of the longest sample, mean over samples, how they were found)."""
    synthetic = P.get("data_source", "synthetic") == "synthetic"
    side = P.get("image_size") if synthetic else None
    side = side or math.isqrt(P["image_max_pixels"])  # no scene size known (user data, or 01's params absent)
    img = image_tokens(side, P, factor)
    share = P.get("video_fraction", 0.0) if synthetic else 0.0
    vid = video_tokens(side, P.get("video_frames", 4), P, factor) if share > 0 else 0
    how = (f"{side}x{side} images -> {img} visual tokens" + (f", {P.get('video_frames')}-frame clips -> {vid}"
                                                            f" ({share:.0%} of samples)" if share else ""))
    if not synthetic:
        how = f"your data: images at the image_max_pixels bound ({img} visual tokens), clips not counted"
    return max(img, vid), (1 - share) * img + share * vid, how


def from_params(P: dict, *, stats: dict | None = None, answer_tokens: int | None = None,
                seq_len: int | None = None, factor: int = FACTOR) -> Workload:
    """The workload of the run ``P`` (02's resolved parameters, with 01's data parameters beside them).
    ``stats`` is 01's ``data_stats.json`` where it exists; ``seq_len`` overrides the longest sample; ``factor`` is the
    family's pixels per visual token side (``families.Family.factor``)."""
    visual, mean_visual, how = _visual(P, factor)
    text = TEXT_TOKENS
    text_how = f"text assumed {TEXT_TOKENS} tokens"
    if stats and stats.get("splits"):
        splits = stats["splits"].values()
        text = max(s.get("text_tokens_max", 0) for s in splits)
        visual = max(s.get("visual_tokens_max", 0) for s in splits) or visual
        text_how, how = f"text {text} tokens (data_stats.json)", f"{visual} visual tokens (data_stats.json)"
    longest = visual + text
    if seq_len is not None:
        longest, text_how = seq_len, f"sequence length {seq_len} as given"
    capped = min(longest, P["max_length"])
    if capped < longest:
        text_how += f"; capped at max_length {P['max_length']} (longer samples are errors)"
    n_train = P.get("n_train") or 0
    per_epoch = n_train if n_train else 0
    return Workload(batch=P["batch_size"], seq_len=capped, visual_tokens=min(visual, capped),
                    answer_tokens=answer_tokens or ANSWER_TOKENS,
                    mean_seq_len=min(mean_visual + text, capped) if seq_len is None else capped,
                    mean_visual_tokens=mean_visual, samples_per_epoch=per_epoch,
                    memo_samples=per_epoch + (P.get("n_val") or 0),
                    sources=f"{how}; {text_how}; answers {answer_tokens or ANSWER_TOKENS} tokens"
                            + ("" if answer_tokens else " (assumed)"))


def read_stats(run_dir: str | Path) -> dict | None:
    """01's ``data_stats.json`` of a run folder, or None before 01 has run."""
    import json

    path = Path(run_dir) / "data_stats.json"
    return json.loads(path.read_text()) if path.exists() else None
