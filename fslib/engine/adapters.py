"""The trained model's set-up: LoRA (PEFT) or full fine-tuning, a frozen vision tower, gradient checkpointing; and
its export as a plain ``from_pretrained`` folder (LoRA merged), so 03 and 04 load every checkpoint the same way.

The same set-up serves the student and the teacher's preparation (real users adapt a 7B teacher with LoRA).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fslib.engine import families

# The language-model projections LoRA adapts: the family's (``fslib.engine.families``: Qwen3.5 adds its Gated-DeltaNet
# projections), matched under ``language_model`` only, since Qwen2.5-VL's vision MLP reuses gate/up/down_proj names.
LORA_TARGETS = families.get("qwen2-vl").lora_targets
_PEFT_PREFIX = "base_model.model."


def vision_tower(model):
    """The vision encoder (``model.model.visual`` in every Qwen-VL family), through a PEFT wrapper if there is one."""
    base = model.get_base_model() if is_peft(model) else model
    inner = getattr(base, "model", base)
    visual = getattr(inner, "visual", None)
    if visual is None:
        raise ValueError(f"{type(base).__name__} has no vision tower at .model.visual")
    return visual


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def prepare(model, *, lora: bool = False, lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
            lora_targets=None, freeze_vision: bool = False, gradient_checkpointing: bool = False):
    """Return the model to train: LoRA adapters (PEFT) on ``lora_targets`` (default: the family's language-model
    projections) or all weights trainable; the vision tower frozen if asked; gradient checkpointing (non-reentrant,
    so frozen inputs need no ``requires_grad`` hack)."""
    model.train()
    if freeze_vision:
        vision_tower(model).requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        fam = families.of_model(model)
        targets = fam.lora_target_regex() if lora_targets is None else list(lora_targets)
        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                         bias="none")
        model = get_peft_model(model, cfg)  # freezes every base weight; only the adapters train
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every parameter is frozen")
    return model


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, non-reentrant; transformers renamed the method in 5.x."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with checkpointing


def is_checkpointing(model) -> bool:
    base = model.get_base_model() if is_peft(model) else model
    if hasattr(type(base), "is_activation_checkpointing"):
        return bool(base.is_activation_checkpointing)
    return bool(getattr(base, "is_gradient_checkpointing", False))


def trainable_counts(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable, "trainable_share": trainable / max(total, 1)}


def lora_scaling(model) -> float:
    """PEFT's scaling of the adapter product: lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA)."""
    cfg = model.peft_config["default"]
    return cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)


def merged_state_dict(state: dict, scaling: float) -> dict:
    """A PEFT state dict -> the base model's, with every LoRA layer folded in: W = W_0 + scaling * B @ A.

    Pure: works on a gathered state dict (FSDP, ZeRO-3) and never touches the live model, so training continues on
    exactly the same weights (an in-place merge and unmerge would change them by rounding).
    A (r, in) and B (out, r) are the keys ``<layer>.lora_A.default.weight`` / ``lora_B``; ``<layer>.base_layer.*``
    holds W_0 and its bias.
    """
    out = {}
    for key, value in state.items():
        name = key.removeprefix(_PEFT_PREFIX)
        if ".lora_" in name:
            continue
        layer = re.sub(r"\.base_layer(?=\.(weight|bias)$)", "", name)
        if layer != name and name.endswith(".weight"):
            a = state[f"{_PEFT_PREFIX}{layer[:-len('.weight')]}.lora_A.default.weight"]
            b = state[f"{_PEFT_PREFIX}{layer[:-len('.weight')]}.lora_B.default.weight"]
            value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        out[layer] = value
    return out


def save_pretrained(model, state: dict, processor, out: Path) -> None:
    """Write a plain ``from_pretrained`` folder (safetensors) from ``state`` (LoRA merged) and the processor."""
    if is_peft(model):
        state = merged_state_dict(state, lora_scaling(model))
        model = model.get_base_model()
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    processor.save_pretrained(out)


def describe_checkpoint(path: str, *, dtype: str, quantization: str = "none", trust_remote_code: bool = False) -> dict:
    """Size, vocabulary and the settings it will be loaded with, from config.json alone: the model is built on the
    ``meta`` device, so describing a 7B costs no memory and no loading time."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from fslib.engine.models import param_counts

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg, trust_remote_code=trust_remote_code)
    text = cfg.get_text_config()
    return {**param_counts(model), "hidden_size": text.hidden_size, "layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size, "dtype": dtype, "quantization": quantization}
