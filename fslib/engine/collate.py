"""Chat-template batches for the Qwen-VL families: one processor shared by teacher and student.

Images and video frames go through ``qwen_vl_utils.process_vision_info`` (the official Qwen recipe, which resizes to
the pixel bounds given here, in multiples of the family's 28 or 32 pixels) and then through the processor, whose
*whole* output reaches the model: ``input_ids``, ``attention_mask``, ``mm_token_type_ids``,
``pixel_values``/``image_grid_thw``, ``pixel_values_videos``/``video_grid_thw`` (and Qwen2.5-VL's
``second_per_grid_ts``). What differs per family (``fslib.engine.families``): ``image_patch_size``, Qwen3-VL's and
Qwen3.5's video metadata (their prompts carry each temporal patch's timestamp, ``<0.2 seconds>``), Qwen2.5-VL's fps,
and the assistant header that precedes an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fslib.engine import families
from fslib.engine.labels import IGNORE_INDEX


class ProcessorMismatchError(ValueError):
    """Teacher and student processors would tokenise or resize the same sample differently."""


def check_processors_agree(teacher_processor, student_processor) -> None:
    """Distillation compares logits token by token, so both models must see identical ids and pixels: a teacher and
    student of different families (or processors) are refused before any work, naming what differs."""
    problems = []
    t_fam, s_fam = _family_or_class(teacher_processor), _family_or_class(student_processor)
    if t_fam != s_fam:
        problems.append(f"model families differ: teacher {t_fam}, student {s_fam} (their tokenizers, patch sizes or "
                        "prompts differ; distil within one family: Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5)")
    t_tok, s_tok = teacher_processor.tokenizer, student_processor.tokenizer
    if t_tok.get_vocab() != s_tok.get_vocab():
        diff = set(t_tok.get_vocab().items()) ^ set(s_tok.get_vocab().items())
        problems.append(f"tokenizer vocabularies differ ({len(diff)} entries, e.g. {sorted(diff)[:3]})")
    for attr in ("eos_token", "pad_token", "chat_template"):
        if getattr(t_tok, attr, None) != getattr(s_tok, attr, None):
            problems.append(f"tokenizer.{attr} differs")
    for proc in ("image_processor", "video_processor"):
        t, s = getattr(teacher_processor, proc, None), getattr(student_processor, proc, None)
        for attr in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels",
                     "image_mean", "image_std"):
            tv, sv = getattr(t, attr, None), getattr(s, attr, None)
            if tv != sv:
                problems.append(f"{proc}.{attr}: teacher {tv!r} vs student {sv!r}")
    if problems:
        raise ProcessorMismatchError("teacher and student processors disagree: " + "; ".join(problems))


def _family_or_class(processor) -> str:
    try:
        return families.of_processor(processor).name
    except ValueError:
        return type(processor).__name__


def build_messages(record: dict, pixels: dict, *, with_answer: bool) -> list[dict]:
    """Qwen2-VL chat messages for one record; ``pixels`` holds the image/video bounds from params."""
    if record.get("media") == "video" and record.get("video"):
        visual = {"type": "video", "video": list(record["video"]), "min_pixels": pixels["video_min_pixels"],
                  "max_pixels": pixels["video_max_pixels"], "total_pixels": pixels["video_total_pixels"]}
    elif record.get("image") is not None:
        visual = {"type": "image", "image": record["image"], "min_pixels": pixels["image_min_pixels"],
                  "max_pixels": pixels["image_max_pixels"]}
    else:
        raise ValueError(f"record {record.get('id')!r} has neither an image nor a video")
    messages = [{"role": "user", "content": [visual, {"type": "text", "text": record["question"]}]}]
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]})
    return messages


def answer_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer,
                  assistant_header: str = "assistant\n") -> torch.Tensor:
    """Labels that keep only the last assistant turn's answer tokens and its closing ``<|im_end|>``.

    Everything else (system prompt, question, image/video pads, the family's assistant header after
    ``<|im_start|>``, e.g. ``assistant\\n``, or Qwen3.5's ``assistant\\n<think>\\n\\n</think>\\n\\n``, the newline after
    ``<|im_end|>`` and padding) is set to -100, so neither CE nor KD is computed there.
    """
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The family's header, or the plain one where a checkpoint's own template renders no reasoning block here.
    headers = [tokenizer(h, add_special_tokens=False)["input_ids"] for h in dict.fromkeys([assistant_header,
                                                                                          "assistant\n"])]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row].tolist()
        starts = [i for i, t in enumerate(ids) if t == im_start and attention_mask[row, i]]
        if not starts:
            raise ValueError("no <|im_start|> in a training sample: was the chat template applied?")
        at = starts[-1] + 1
        header = next((h for h in headers if ids[at:at + len(h)] == h), headers[-1])
        first = at + len(header)
        ends = [i for i in range(first, len(ids)) if ids[i] == im_end]
        if not ends:
            raise ValueError("answer has no closing <|im_end|>: the sample was truncated; raise max_length")
        labels[row, first:ends[0] + 1] = input_ids[row, first:ends[0] + 1]
    return labels


@dataclass
class VQACollator:
    """Turns records into model inputs. ``train=True`` appends the answer and builds labels (right padding);
    ``train=False`` ends the prompt with the assistant header for generation (left padding)."""

    processor: object
    pixels: dict
    max_length: int = 512
    train: bool = True
    blind: bool = False  # the evaluation's blind control: images and frames replaced by uniform grey
    stats: list = field(default_factory=list)

    @property
    def family(self) -> families.Family:
        return families.of_processor(self.processor)

    def __call__(self, records: list[dict]) -> dict:
        if self.blind:
            records = [blank_media(r) for r in records]
        messages = [build_messages(r, self.pixels, with_answer=self.train) for r in records]
        texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=not self.train)
                 for m in messages]
        fam = self.family
        images, videos, extra = vision_inputs(messages, fam)
        tok = self.processor.tokenizer
        tok.padding_side = "right" if self.train else "left"
        inputs = self.processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt", **extra)
        if inputs["input_ids"].shape[1] > self.max_length:
            lengths = inputs["attention_mask"].sum(1).tolist()
            bad = [(r.get("id"), n) for r, n in zip(records, lengths) if n > self.max_length]
            raise ValueError(f"samples longer than max_length={self.max_length}: {bad}; "
                             "raise max_length or lower the pixel bounds")
        mm = inputs.get("mm_token_type_ids")
        visual = (mm != 0).sum(1) if mm is not None else torch.zeros(len(records), dtype=torch.long)
        batch = {"inputs": inputs, "ids": [r.get("id") for r in records], "visual_tokens": visual,
                 "text_tokens": inputs["attention_mask"].sum(1) - visual}
        if self.train:
            batch["labels"] = answer_labels(inputs["input_ids"], inputs["attention_mask"], tok, fam.assistant_header)
        return batch


def vision_inputs(messages: list, fam: families.Family) -> tuple[list | None, list | None, dict]:
    """``process_vision_info`` with the family's patch size: (images, videos, the processor's video arguments).
    Frames were already chosen and resized there, so the video processor must neither resample nor resize them."""
    from qwen_vl_utils import process_vision_info

    images, videos, kwargs = process_vision_info(messages, **fam.vision_info_kwargs())
    if not videos:
        return images, videos, {}
    if fam.video_metadata:  # Qwen3-VL / Qwen3.5: (frames, metadata) pairs; the timestamps come from the metadata
        videos, metadata = (list(x) for x in zip(*videos))
        return images, videos, {"video_metadata": metadata, "do_sample_frames": False, "do_resize": False,
                                "cap_pixels_per_frame": True}
    extra = {"do_sample_frames": False, "cap_pixels_per_frame": True}
    if fam.video_fps:  # Qwen2.5-VL: second_per_grid_ts = temporal patch / sampled fps (one rate per call)
        if len(set(kwargs["fps"])) != 1:
            raise ValueError(f"clips of one batch were sampled at different rates {kwargs['fps']}")
        extra["fps"] = kwargs["fps"][0]
    return images, videos, extra


BLANK_GREY = (128, 128, 128)  # the blind control's uniform grey


def blank_like(image):
    """Uniform mid-grey RGB image of the same size: the "blind" control input."""
    from PIL import Image

    return Image.new("RGB", image.size, BLANK_GREY)


def blank_media(record: dict) -> dict:
    """Copy of ``record`` whose image and video frames are uniform grey of the same sizes (text untouched)."""
    out = dict(record)
    if record.get("image") is not None:
        out["image"] = blank_like(record["image"])
    if record.get("video"):
        out["video"] = [blank_like(frame) for frame in record["video"]]
    return out
