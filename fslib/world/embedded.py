"""The embedded tiny Qwen2-VL pair: built once, deterministically and offline, from a recipe in code.

A name ``embedded:<preset>`` is built into ``<run_dir>/embedded/<preset>`` with the real
``Qwen2VLForConditionalGeneration`` and a real ``Qwen2VLProcessor``, and then loaded from that path like any
checkpoint (``fslib.engine.models``). ``resolve_model`` also turns ``random-init:<preset>`` names into folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from fslib.core.fsio import atomic_dir
from fslib.engine import randominit
from fslib.engine.models import QWEN2VL_CHAT_TEMPLATE, QWEN2VL_SPECIAL_TOKENS
from fslib.world import pretrain, synth

EMBEDDED_PREFIX = "embedded:"

# Tiny presets. Sizes mirror the real pair's *shape*: Qwen2-VL-2B and -7B share the vision tower's architecture (the
# same 675M-parameter ViT) and the language model's depth (28 layers), and the 7B is wider (3584 vs 1536). So here
# both have the same 3-block vision tower and 4 text layers, and the teacher's text model is twice as wide. Its
# output layer is padded 128 rows further (152,064 vs 151,936 in the real pair), so vocabulary alignment is always
# exercised. head_dim is 32 for every text model, so mrope_section sums to head_dim / 2 = 16.
# ``pretrain`` is the recipe of ``fslib.world.pretrain`` (vision tower, then alignment with the tower frozen). Both real
# models are -Instruct checkpoints, so both tiny ones are also instruction-tuned on task-style questions from their
# own scene streams, the teacher on twice as many (4,000 vs 2,000), as the 7B knows more. A student pre-trained
# without questions could not learn to count from the task's few hundred examples, with the teacher's soft labels or
# without them: it answered "1" to every count question.
EMBEDDED_PRESETS: dict[str, dict] = {
    "tiny-teacher": dict(hidden=128, layers=4, heads=4, kv_heads=2, ffn=512,
                         vis_depth=3, vis_dim=128, vis_heads=4, vocab_pad=128, seed=1,
                         pretrain={"seed": 1, "vision": {"scenes": 2048, "epochs": 8, "lr": 2e-3},
                                   "align": {"captions": 2000, "questions": 4000, "epochs": 2, "lr": 2e-3}}),
    "tiny-student": dict(hidden=64, layers=4, heads=2, kv_heads=1, ffn=256,
                         vis_depth=3, vis_dim=128, vis_heads=4, vocab_pad=0, seed=2,
                         pretrain={"seed": 2, "vision": {"scenes": 2048, "epochs": 8, "lr": 2e-3},
                                   "align": {"captions": 2000, "questions": 2000, "epochs": 2, "lr": 2e-3}}),
}
# FIRSTSIGHT_PRETRAIN=0 builds the embedded models without pre-training (random weights): the unit tests use it,
# since they exercise code paths, not accuracy. The build stamp records it, so the two kinds are never confused.
PRETRAIN_ENV = "FIRSTSIGHT_PRETRAIN"
# Finished builds are kept here, keyed by their recipe, and copied into each run folder: pre-training runs once per
# machine, not once per run. FIRSTSIGHT_CACHE moves it.
CACHE_ENV = "FIRSTSIGHT_CACHE"
TINY_PIXELS = dict(min_pixels=56 * 56, max_pixels=112 * 112)


def is_embedded(name: str) -> bool:
    return name.startswith(EMBEDDED_PREFIX)


def train_tiny_tokenizer(corpus: list[str], vocab_size: int = 320):
    """A byte-level BPE trained on the task's text with Qwen2's pre-tokenizer, plus Qwen2-VL's special tokens.

    Special tokens are appended *after* the learned vocabulary, as in the real tokenizer (ids 151643+ there).
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Start from Qwen2Tokenizer's own (empty) pipeline so training and use share one pre-tokenizer.
    empty = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    backend = Tokenizer.from_str(empty.backend_tokenizer.to_str())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The chat template's own words are part of every sample, so the tokenizer learns them too.
    template_text = ["system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 50
    backend.train_from_iterator(list(corpus) + template_text, trainer)
    state = json.loads(backend.to_str())["model"]
    vocab = {k: v for k, v in state["vocab"].items() if k not in QWEN2VL_SPECIAL_TOKENS}
    vocab = {k: i for i, k in enumerate(sorted(vocab, key=vocab.get))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None, model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": list(QWEN2VL_SPECIAL_TOKENS[1:])})
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    return tok


def build_tiny_processor(corpus: list[str], *, min_pixels: int, max_pixels: int, video_max_pixels: int | None = None):
    """A real ``Qwen2VLProcessor``: trained BPE tokenizer + Qwen2-VL image and video processors, small pixel bounds."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = train_tiny_tokenizer(corpus)
    image = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=video_max_pixels or max_pixels)
    return Qwen2VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                            chat_template=QWEN2VL_CHAT_TEMPLATE)


def tiny_config(preset: dict, tokenizer):
    """A ``Qwen2VLConfig`` for a tiny preset, wired to the tokenizer's special-token ids."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2VL_SPECIAL_TOKENS}
    # Pad the output layer to a multiple of 64 beyond the tokenizer, as the real checkpoints do.
    vocab = (len(tokenizer) + 63) // 64 * 64 + preset["vocab_pad"]
    head_dim = preset["hidden"] // preset["heads"]
    text = dict(vocab_size=vocab, hidden_size=preset["hidden"], intermediate_size=preset["ffn"],
                num_hidden_layers=preset["layers"], num_attention_heads=preset["heads"],
                num_key_value_heads=preset["kv_heads"], max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=preset["vis_depth"], embed_dim=preset["vis_dim"], num_heads=preset["vis_heads"],
                  hidden_size=preset["hidden"], mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def build_embedded(name: str, root: str | Path, corpus: list[str]) -> Path:
    """Build (once) the embedded model ``name`` into ``root/<preset>`` and return that folder.

    Deterministic: the same corpus gives the same tokenizer, and the preset's seeds the same weights and
    pre-training (``fslib.world.pretrain``; minutes on 2 CPU cores, once per machine thanks to the cache).
    """
    preset_name = name.removeprefix(EMBEDDED_PREFIX)
    if preset_name not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown embedded model {name!r}; valid: "
                         + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_PRESETS))
    out = Path(root) / preset_name
    preset = dict(EMBEDDED_PRESETS[preset_name])
    recipe_pretrain = preset.pop("pretrain", None)
    if os.environ.get(PRETRAIN_ENV, "1") == "0":
        recipe_pretrain = None
    # What the folder was built from: a changed preset, pre-training recipe, pixel bound or tokenizer corpus rebuilds
    # it, so a run folder never keeps serving a stale model under a current name.
    recipe = {"preset": preset, "pixels": TINY_PIXELS,
              "pretrain": {**recipe_pretrain, "version": pretrain.PRETRAIN_VERSION} if recipe_pretrain else None,
              "corpus_sha256": hashlib.sha256("\n".join(corpus).encode()).hexdigest()}
    stamp = out / "firstsight_embedded.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe:
        return out
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "firstsight")
    cached = cache_root / "embedded" / f"{preset_name}-{key}"
    if not (cached / stamp.name).exists():
        try:
            _build(cached, preset, recipe, corpus, stamp.name)
        except OSError:  # an unwritable cache: build straight into the run folder
            cached = _build(out.with_name(out.name + ".build"), preset, recipe, corpus, stamp.name)
    with atomic_dir(out) as tmp:  # a half-copied folder is never mistaken for a model
        shutil.copytree(cached, tmp)
    shutil.rmtree(out.with_name(out.name + ".build"), ignore_errors=True)
    return out


def _build(folder: Path, preset: dict, recipe: dict, corpus: list[str], stamp_name: str) -> Path:
    """Build one embedded model (random init, then ``fslib.world.pretrain`` as the recipe says) into ``folder``."""
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    processor = build_tiny_processor(corpus, **TINY_PIXELS)
    torch.manual_seed(preset["seed"])
    model = Qwen2VLForConditionalGeneration(tiny_config(preset, processor.tokenizer))
    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id], do_sample=False)
    report = pretrain.pretrain(model, processor, recipe["pretrain"]) if recipe["pretrain"] else None
    with atomic_dir(folder) as tmp:  # a half-built folder is never mistaken for a model
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / stamp_name).write_text(json.dumps({"recipe": recipe, "pretraining": report}, indent=2))
    return folder


def default_corpus() -> list[str]:
    """The embedded tokenizer's training text: every question phrasing and answer, and the captions' phrasings."""
    return synth.corpus_text() + pretrain.caption_corpus()


def resolve_model(name: str, embedded_root: str | Path, corpus_fn=None) -> str:
    """A hub id or folder is returned as is; ``embedded:<preset>`` is built (once) and its folder returned;
    ``random-init:<preset>`` (real-size shapes, random weights: speed and memory only) gets a folder from
    ``fslib.engine.randominit`` with the embedded tokenizer."""
    if not is_embedded(name) and not randominit.is_random_init(name):
        return name
    corpus = (corpus_fn or default_corpus)()
    if randominit.is_random_init(name):
        return str(randominit.resolve(name, embedded_root, lambda **px: build_tiny_processor(corpus, **px)))
    return str(build_embedded(name, embedded_root, corpus))
