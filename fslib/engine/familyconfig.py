"""A preset's dimensions -> the family's own transformers config (``fslib.engine.randominit`` and the planner).

A preset is a dict: ``family`` (a ``fslib.engine.families`` name), text ``hidden``, ``ffn``, ``layers``, ``heads``,
``kv_heads``, ``vocab``, ``tie`` (and ``head_dim`` where it is not hidden / heads), vision ``vis_depth``, ``vis_dim``,
``vis_heads`` (and ``vis_ffn`` where the MLP is not 4 x ``vis_dim``), and per family: ``fullatt`` (Qwen2.5-VL's
full-attention vision blocks), ``deepstack`` (Qwen3-VL's vision blocks whose features enter LLM layers 0, 1, ...),
``lin_k_heads`` / ``lin_v_heads`` / ``lin_dim`` / ``layer_types`` (Qwen3.5's Gated-DeltaNet layers).
Rotary settings follow the published configs (/work/shared/reference/qwen-vl-families.md); the multimodal rope
sections are scaled to the head size so that a tiny preset keeps the real layout.
"""

from __future__ import annotations

import importlib

from fslib.engine import families


def _cls(name: str):
    return getattr(importlib.import_module("transformers"), name)


def _sections(rotary_half: int, real: list[int]) -> list[int]:
    """The real (t, h, w) split of ``sum(real)`` rotary pairs, scaled to ``rotary_half`` pairs (exact at real size)."""
    total = sum(real)
    out = [rotary_half * r // total for r in real]
    out[0] += rotary_half - sum(out)
    return out


def _text_common(p: dict, ids: dict) -> dict:
    return dict(vocab_size=p["vocab"], hidden_size=p["hidden"], intermediate_size=p["ffn"],
                num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                rms_norm_eps=1e-6, tie_word_embeddings=p["tie"], bos_token_id=ids["bos_token_id"],
                eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])


def _vision_ids(ids: dict) -> dict:
    return {k: ids[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}


def _qwen2_vl(p: dict, ids: dict) -> dict:
    head_dim = p["hidden"] // p["heads"]
    text = dict(_text_common(p, ids), max_position_embeddings=32768, rope_parameters={
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": _sections(head_dim // 2, [16, 24, 24])})
    vision = dict(depth=p["vis_depth"], embed_dim=p["vis_dim"], num_heads=p["vis_heads"], hidden_size=p["hidden"],
                  mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return dict(text_config=text, vision_config=vision)


def _qwen2_5_vl(p: dict, ids: dict) -> dict:
    head_dim = p["hidden"] // p["heads"]
    text = dict(_text_common(p, ids), max_position_embeddings=128000, rope_parameters={
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": _sections(head_dim // 2, [16, 24, 24])})
    vision = dict(depth=p["vis_depth"], hidden_size=p["vis_dim"], intermediate_size=p["vis_ffn"],
                  num_heads=p["vis_heads"], out_hidden_size=p["hidden"], patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, fullatt_block_indexes=list(p["fullatt"]),
                  tokens_per_second=2, hidden_act="silu", in_channels=3)
    return dict(text_config=text, vision_config=vision)


def _qwen3_vision(p: dict) -> dict:
    return dict(depth=p["vis_depth"], hidden_size=p["vis_dim"], intermediate_size=p["vis_ffn"],
                num_heads=p["vis_heads"], out_hidden_size=p["hidden"], patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, num_position_embeddings=2304, hidden_act="gelu_pytorch_tanh", in_channels=3)


def _qwen3_vl(p: dict, ids: dict) -> dict:
    head_dim = p.get("head_dim") or p["hidden"] // p["heads"]
    text = dict(_text_common(p, ids), head_dim=head_dim, max_position_embeddings=262144, rope_parameters={
        "rope_type": "default", "rope_theta": 5e6, "mrope_section": _sections(head_dim // 2, [24, 20, 20]),
        "mrope_interleaved": True})
    vision = dict(_qwen3_vision(p), deepstack_visual_indexes=list(p["deepstack"]))
    return dict(text_config=text, vision_config=vision)


def _qwen3_5(p: dict, ids: dict) -> dict:
    head_dim = p.get("head_dim") or p["hidden"] // p["heads"]
    rotary_half = int(head_dim * 0.25) // 2
    text = dict(_text_common(p, ids), head_dim=head_dim, max_position_embeddings=262144,
                linear_conv_kernel_dim=4, linear_key_head_dim=p["lin_dim"], linear_value_head_dim=p["lin_dim"],
                linear_num_key_heads=p["lin_k_heads"], linear_num_value_heads=p["lin_v_heads"],
                rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                 "mrope_section": _sections(rotary_half, [11, 11, 10]), "mrope_interleaved": True})
    if p.get("layer_types"):
        text["layer_types"] = list(p["layer_types"])
    else:  # the released interval: three linear-attention layers, then one full
        text["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(p["layers"])]
    return dict(text_config=text, vision_config=_qwen3_vision(p))


_BUILDERS = {"qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "qwen3_5": _qwen3_5}


def build(p: dict, ids: dict):
    """The family's config class for preset ``p`` wired to the special-token ids ``ids``."""
    fam = families.get(p.get("family", "qwen2-vl"))
    parts = _BUILDERS[fam.model_type](p, ids)
    return _cls(fam.config_class)(**parts, tie_word_embeddings=p["tie"], **_vision_ids(ids))
