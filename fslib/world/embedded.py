"""The embedded tiny Qwen2-VL pair: built once from a recipe in code, committed, and read by every run.

``make embedded`` (``python -m fslib.world.build``) builds both presets with the real
``Qwen2VLForConditionalGeneration`` and a real ``Qwen2VLProcessor`` into ``embedded/`` at the repository root, beside
``recipe.json`` (``recipe()``) and ``build_report.json``. A name ``embedded:<preset>`` resolves to that folder, which
loads like any checkpoint (``fslib.engine.models``); nothing is trained when a run starts, so every machine reads the
same weights. ``resolve_model`` also turns ``random-init:<preset>`` names into folders.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


from fslib.core.fsio import REPO_ROOT
from fslib.engine import randominit
from fslib.engine.models import QWEN2VL_CHAT_TEMPLATE, QWEN2VL_SPECIAL_TOKENS
from fslib.world import pretrain, synth

EMBEDDED_PREFIX = "embedded:"

# Tiny presets. Sizes mirror the real pair's *shape*: Qwen2-VL-2B and -7B share the vision tower's architecture (the
# same 675M-parameter ViT) and the language model's depth (28 layers), and the 7B is wider (3584 vs 1536). So here
# both have the same 3-block vision tower and the teacher's text model is twice as wide; unlike the real pair, the
# student also has half the depth (2 text layers against 4), the only way a tiny student decodes faster (below). Its
# output layer is padded 128 rows further (152,064 vs 151,936 in the real pair), so vocabulary alignment is always
# exercised. head_dim is 32 for every text model, so mrope_section sums to head_dim / 2 = 16.
# ``pretrain`` is the recipe of ``fslib.world.pretrain``, built once by ``make embedded`` and committed: the vision
# tower first (both towers see 16,384 scenes four times: the vision probe's object-category accuracy grew with scenes,
# 0.36 at 1,024, 0.49 at 4,096, with generator 1.0's objects; 0.50 and 0.73 with generator 1.1's larger ones), then the
# language model on the frozen tower's cached tokens (``fslib.world.language``; batches of 64 at 1e-3, the levers
# measured by ``benchmarks/lm_probe.py``). Both real models are -Instruct checkpoints, so both tiny ones also learn
# task-style questions: the teacher until it answers them well (a 7B-Instruct has seen far more than our labels), the
# student only until its probe EM reaches ``stop_at_em`` (0.40), so that its starting weights read images (captions)
# and leave the task to 02. At this size a decoded token costs about a fixed overhead plus one step per layer, so the
# student has half the teacher's depth as well as half its width (decode 2.4 vs 1.1 ms/token for 4x128 vs 2x64 on one
# core, random weights, fslib.evaluation.bench.measure_latency, on a loaded machine).
_VISION = {"scenes": 16384, "epochs": 4, "lr": 2e-3}
_LANGUAGE = {"batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "probe_questions": 240, "video_fraction": 0.25}
EMBEDDED_PRESETS: dict[str, dict] = {
    "tiny-teacher": dict(hidden=128, layers=4, heads=4, kv_heads=2, ffn=512,
                         vis_depth=3, vis_dim=128, vis_heads=4, vocab_pad=128, seed=1,
                         pretrain={"seed": 1, "vision": _VISION,
                                   "language": {**_LANGUAGE, "captions": 4000, "questions": 24000,
                                                "examples": 160000, "eval_every": 250}}),
    "tiny-student": dict(hidden=64, layers=2, heads=2, kv_heads=1, ffn=256,
                         vis_depth=3, vis_dim=128, vis_heads=4, vocab_pad=0, seed=2,
                         pretrain={"seed": 2, "vision": _VISION,
                                   "language": {**_LANGUAGE, "captions": 8000, "questions": 2000,
                                                "examples": 64000, "eval_every": 50, "stop_at_em": 0.40}}),
}
# The committed pair (``make embedded`` builds it, ``fslib.world.build``): one folder per preset, the recipe it was built
# from and its build report. FIRSTSIGHT_PAIR points runs at another built pair (a second build seed, a candidate).
PAIR_DIR = REPO_ROOT / "embedded"
PAIR_ENV = "FIRSTSIGHT_PAIR"
RECIPE_FILE, REPORT_FILE = "recipe.json", "build_report.json"
BUILD_VERSION = 2
# What the ``tiny`` budget builds: every stage of the recipe for a few steps (seconds; the tests and CI use it).
TINY_BUDGET = {"vision": {"scenes": 16, "epochs": 1},
               "language": {"captions": 8, "questions": 8, "batch_size": 8, "examples": 32, "eval_every": 2,
                            "warmup_steps": 2, "probe_questions": 8}}
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


def default_corpus() -> list[str]:
    """The embedded tokenizer's training text: every question phrasing and answer, and the captions' phrasings."""
    return synth.corpus_text() + pretrain.caption_corpus()


def recipe(*, budget: str = "full", build_seed: int = 0) -> dict:
    """Everything the pair is built from: presets, pre-training recipes, pixel bounds, scene settings and the tokenizer's
    corpus. ``build_seed`` moves every seed (weights and pre-training streams); ``budget="tiny"`` shrinks every stage to
    a few steps. Stored beside the weights: a pair whose stored recipe differs from this one is stale."""
    if budget not in ("full", "tiny"):
        raise ValueError(f"budget must be 'full' or 'tiny', not {budget!r}")
    models = {}
    for name, preset in EMBEDDED_PRESETS.items():
        preset = dict(preset)
        pre = preset.pop("pretrain")
        if budget == "tiny":
            pre = {**pre, **{k: {**pre[k], **v} for k, v in TINY_BUDGET.items() if pre.get(k)}}
        shift = 1000 * build_seed
        models[name] = {"preset": {**preset, "seed": preset["seed"] + shift},
                        "pretrain": {**pre, "seed": pre["seed"] + shift}}
    return {"build_version": BUILD_VERSION, "pretrain_version": pretrain.PRETRAIN_VERSION,
            "generator_version": synth.GENERATOR_VERSION, "budget": budget, "build_seed": build_seed,
            "pixels": TINY_PIXELS, "scene": pretrain.SCENE,
            "corpus_sha256": hashlib.sha256("\n".join(default_corpus()).encode()).hexdigest(), "models": models}


class StalePairError(RuntimeError):
    """The embedded pair on disk was built from another recipe than the code's (or is missing)."""


def pair_dir() -> Path:
    return Path(os.environ.get(PAIR_ENV) or PAIR_DIR)


def check_pair(folder: str | Path | None = None) -> dict:
    """The stored recipe of the built pair in ``folder`` (default: ``pair_dir()``), after checking that it is what the
    code's ``recipe()`` gives for the same budget and build seed. Raises ``StalePairError`` naming what differs."""
    folder = Path(folder or pair_dir())
    path = folder / RECIPE_FILE
    if not path.exists():
        raise StalePairError(f"{path} does not exist: build the embedded pair with `make embedded`")
    stored = json.loads(path.read_text())
    code = recipe(budget=stored.get("budget", "full"), build_seed=stored.get("build_seed", 0))
    if stored != code:
        keys = sorted(k for k in code.keys() | stored.keys() if code.get(k) != stored.get(k))
        raise StalePairError(f"{path} was built from another recipe than fslib.world.embedded.recipe() (differs in: "
                             f"{', '.join(keys)}): rebuild it with `make embedded` (about an hour on 2 cores)")
    return stored


def resolve_model(name: str, embedded_root: str | Path, corpus_fn=None) -> str:
    """A hub id or folder is returned as is; ``embedded:<preset>`` is the committed pair's folder (checked against the
    code's recipe: never a stale build);
    ``random-init:<preset>`` (real-size shapes, random weights: speed and memory only) gets a folder from
    ``fslib.engine.randominit`` with the embedded tokenizer."""
    if not is_embedded(name) and not randominit.is_random_init(name):
        return name
    corpus = (corpus_fn or default_corpus)() if randominit.is_random_init(name) else None
    if randominit.is_random_init(name):
        return str(randominit.resolve(name, embedded_root, lambda **px: build_tiny_processor(corpus, **px)))
    preset = name.removeprefix(EMBEDDED_PREFIX)
    if preset not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown embedded model {name!r}; valid: "
                         + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_PRESETS))
    check_pair()
    return str(pair_dir() / preset)
