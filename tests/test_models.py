from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)

from fslib.engine import models
from fslib.world import embedded


def test_embedded_pair_loads_with_auto_classes(teacher_path, student_path):
    for path in (teacher_path, student_path):
        model = AutoModelForImageTextToText.from_pretrained(path)
        proc = AutoProcessor.from_pretrained(path)
        assert isinstance(model, Qwen2VLForConditionalGeneration)
        assert isinstance(proc, Qwen2VLProcessor)
        assert type(proc.video_processor).__name__ == "Qwen2VLVideoProcessor"


def test_teacher_output_layer_is_padded_larger(teacher_path, student_path, processor):
    t = models.load_model(teacher_path).config.get_text_config().vocab_size
    s = models.load_model(student_path).config.get_text_config().vocab_size
    assert t > s >= len(processor.tokenizer)  # as in the real pair: 152,064 > 151,936 > tokenizer size


def test_pair_has_the_real_pairs_shape(teacher_path, student_path):
    """As Qwen2-VL-2B and -7B: one vision tower architecture and a narrower student language model; unlike them, the
    tiny student is also shallower (at this size depth is what a decoded token costs: fslib.world.embedded)."""
    t, s = (models.load_model(p).config for p in (teacher_path, student_path))
    assert t.vision_config.to_dict() | {"hidden_size": 0} == s.vision_config.to_dict() | {"hidden_size": 0}
    tt, st = t.get_text_config(), s.get_text_config()
    assert 2 * st.num_hidden_layers <= tt.num_hidden_layers and st.hidden_size < tt.hidden_size
    assert tt.hidden_size // tt.num_attention_heads == st.hidden_size // st.num_attention_heads  # same M-RoPE sections


def test_special_tokens_and_chat_template(processor):
    tok = processor.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = [tok.convert_tokens_to_ids(t) for t in models.QWEN2VL_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and min(ids) >= len(tok) - len(ids)  # appended after the BPE vocabulary
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True)
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")


def test_frozen_teacher_has_no_trainable_params(teacher_path):
    teacher = models.load_model(teacher_path, frozen=True)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_param_counts_split_vision_and_language(student_path):
    model = models.load_model(student_path)
    counts = models.param_counts(model)
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    assert counts["params_vision"] == sum(p.numel() for p in model.model.visual.parameters()) > 0
    assert counts["params_language"] == counts["params"] - counts["params_vision"]


def test_unknown_embedded_preset_is_named(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="valid: embedded:tiny-teacher"):
        embedded.resolve_model("embedded:nope", tmp_path)
