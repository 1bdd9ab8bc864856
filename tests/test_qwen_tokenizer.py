"""Qwen2-VL's real tokenizer, built offline (fslib.engine.qwentok): the released ids, template and image tokens.

The expected ids are those of the released Qwen2 / Qwen2-VL tokenizer (its well-known system prompt and special
tokens), not values read back from this build.
"""

import pytest

from fslib.engine import qwentok
from fslib.engine.models import QWEN2VL_SPECIAL_TOKENS

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
SYSTEM_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]


@pytest.fixture(scope="module")
def tok():
    return qwentok.real_tokenizer()


def test_known_texts_get_the_released_ids(tok):
    assert tok(SYSTEM).input_ids == SYSTEM_IDS
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tok("<|im_start|>assistant\n").input_ids == [151644, 77091, 198]


def test_special_tokens_follow_the_bpe_vocabulary_in_the_released_order(tok):
    assert len(tok) == 151_657
    assert tok.convert_tokens_to_ids(list(QWEN2VL_SPECIAL_TOKENS)) == list(range(151_643, 151_657))
    assert [tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|video_pad|>")] == [
        151652, 151655, 151656]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == (
        "<|im_end|>", 151645, "<|endoftext|>", 151643)
    assert tok.bos_token is None and tok.unk_token is None


def test_text_round_trips_through_the_byte_level_bpe(tok):
    text = "naïve café, 日本語 and 😀 — tabs\tand\nnewlines"
    assert tok.decode(tok(text).input_ids) == text


def test_chat_template_opens_with_the_default_system_prompt(tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cups?"}]}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids[:len(SYSTEM_IDS)] == SYSTEM_IDS
    user = ids[len(SYSTEM_IDS):]
    assert user[:6] == [151644, 872, 198, 151652, 151655, 151653]  # <|im_start|>user\n<vision_start><image_pad><end>
    assert user[-3:] == [151644, 77091, 198]  # the generation prompt: <|im_start|>assistant\n


def test_a_448px_image_gives_256_image_pad_tokens():
    from PIL import Image

    processor = qwentok.real_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = processor(text=[text], images=[Image.new("RGB", (448, 448), (120, 30, 200))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 32, 32]]  # 448 / 14 = 32 patches a side
    assert out["pixel_values"].shape[0] == 1024
    assert int((out["input_ids"] == 151655).sum()) == 1024 // 4  # the 2x2 merge


def test_processor_tokenizers_are_separate_objects():
    # Collators set padding_side on their processor's tokenizer: two processors must not share one.
    a, b = qwentok.real_tokenizer(), qwentok.real_tokenizer()
    a.padding_side = "left"
    assert b.padding_side == "right"


def test_disk_cache_round_trips_and_rejects_a_truncated_file(tmp_path, monkeypatch):
    tokens, merges = qwentok.vocab_merges()
    monkeypatch.setenv(qwentok.CACHE_ENV, str(tmp_path))
    cached = qwentok._cache_file(qwentok.ranks_file())
    assert cached.is_relative_to(tmp_path)
    qwentok._write_cache(cached, list(tokens), list(merges))
    back_tokens, back_merges = qwentok._read_cache(cached)
    assert back_tokens == list(tokens) and back_merges == list(merges)
    cached.write_text(cached.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    with pytest.raises(ValueError):
        qwentok._read_cache(cached)


def test_a_second_process_reads_the_conversion_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(qwentok.CACHE_ENV, str(tmp_path))
    qwentok.vocab_merges.cache_clear()
    try:
        converted = qwentok.vocab_merges()  # converts (~1-2 s) and writes the cache under tmp_path
        assert list((tmp_path / "qwen2-tokenizer").glob("vocab-merges-*.txt"))
        qwentok.vocab_merges.cache_clear()  # as in a new process

        def no_conversion(ranks):
            raise AssertionError("converted again instead of reading the disk cache")

        monkeypatch.setattr(qwentok, "_convert", no_conversion)
        assert qwentok.vocab_merges() == converted
    finally:
        qwentok.vocab_merges.cache_clear()
