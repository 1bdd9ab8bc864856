"""Bytes that one micro-batch's forward and backward hold: the student's saved activations, the teacher's forward
working set, and the KD loss's buffers. Each count follows what autograd keeps for backward in the transformers 5.x
Qwen2-VL code (checked against ``torch.autograd.graph.saved_tensors_hooks`` in tests/test_plan.py), per token of the
micro-batch (B x L tokens, every sample padded to the longest):

decoder layer, full fine-tuning: both RMSNorms keep their input and normalised output (4h, stream dtype) and their
  rsqrt (2 floats); the linear layers keep their inputs (q/k/v share one, gate/up another: 2h; on a GPU autocast casts
  the input once per projection: 5h, bf16); SDPA keeps q, k, v, its output and the logsumexp (2h + 2kv, n_heads
  floats); the MLP keeps gate, silu(gate), up and their product (4f). With padding (B > 1) SDPA gets a mask: k and v
  are repeated to every head (+2(h - kv)) and the (B, 1, L, L) mask is kept as float per layer.
decoder layer, LoRA: norms keep only their input (frozen weights need no normalised copy), frozen projections keep
  nothing, the MLP keeps gate, silu(gate) and up (3f), and every adapted projection keeps its dropout mask (CPU: a
  float noise tensor; GPU: bool), the dropout output (or its bf16 cast) and lora_A's output (r).
gradient checkpointing: each layer keeps only its input (h); backward recomputes one layer at a time.
A frozen vision tower runs without a graph (nothing kept); a trainable one keeps ~16 x embed_dim per patch per block.

Other families (``fslib.engine.families``), on top of this:
* Qwen3-VL and Qwen3.5 normalise q and k per head (q_norm, k_norm): their inputs, normalised copies and rsqrt are kept;
  Qwen3.5's q_proj also yields a gate (its output is twice as wide) and the gated output keeps sigmoid(gate) and the
  product.
* Qwen3.5's Gated-DeltaNet layers (``linear_layers``): what the token mixer keeps is read off the transformers code
  itself, by running one ``Qwen3_5GatedDeltaNet`` of the real widths on the ``meta`` device under
  ``saved_tensors_hooks`` for the micro-batch's shape (no memory, no weights; ``linear_attention_bytes``): its
  projections' outputs, the causal convolution, and the chunked delta rule's per-chunk tensors, among them a copy of
  the recurrent state (value heads x key dim x value dim, float32) per chunk of 64 tokens. The layer's norms and MLP
  are counted as above.
* Qwen3-VL's DeepStack features (one merged-token tensor per DeepStack layer) live from the tower to the first LLM
  layers.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from fslib.training.plan.arch import Arch

PIXEL_VALUES = 3 * 2 * 14 * 14  # floats per patch in pixel_values (channels x temporal x 14 x 14; 16 x 16: Qwen3)


def pixel_values(a: Arch) -> int:
    return 3 * 2 * a.patch * a.patch


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors a trained model's forward makes."""

    stream: int  # residual stream and norms: the weights' dtype
    compute: int  # matmul outputs: bf16 under a GPU's autocast, the weights' dtype otherwise
    mask: int  # a dropout mask: a float noise tensor on a CPU, bool on a GPU
    cast_inputs: bool  # autocast casts a linear's input once per projection (GPU only)


def precision(weight_bytes: int, device: str, autocast: bool) -> Precision:
    gpu = device == "cuda"
    compute = 2 if gpu and autocast else weight_bytes
    return Precision(stream=weight_bytes, compute=compute, mask=1 if gpu else weight_bytes,
                     cast_inputs=gpu and autocast and weight_bytes != 2)


def _qk_norm(a: Arch, p: Precision) -> int:
    """Qwen3-VL / Qwen3.5 per-head q and k RMSNorms: inputs (Qwen3.5's q_proj output with its gate: twice as wide),
    normalised copies and rsqrt; Qwen3.5's output gate keeps sigmoid(gate) and the gated output."""
    if a.family not in ("qwen3-vl", "qwen3.5"):
        return 0
    q = a.heads * a.head_dim
    gate = 2 * q * p.compute if a.gated_attention else 0
    return p.compute * ((2 if a.gated_attention else 1) * q + a.kv_dim + q + a.kv_dim) + 4 * (a.heads + a.kv_heads) \
        + gate


def layer_bytes_per_token(a: Arch, p: Precision, *, lora_r: int | None, padded: bool) -> int:
    """Bytes a (full-attention) decoder layer keeps for backward per token (without the per-layer padding mask, see
    ``mask_bytes``)."""
    h, f, kv = a.hidden, a.ffn, a.kv_dim
    attention = p.compute * (2 * h + 2 * kv + (2 * (h - kv) if padded else 0)) + 4 * a.heads + _qk_norm(a, p)
    if lora_r is None:
        inputs = (5 if p.cast_inputs else 2) * h
        return p.stream * 4 * h + 8 + p.compute * (inputs + 4 * f) + attention
    fan_in, n = a.lora_inputs_per_layer()
    adapters = (p.mask + p.compute) * fan_in + p.compute * lora_r * n
    return p.stream * 2 * h + 8 + p.compute * 3 * f + attention + adapters


def linear_layer_bytes(a: Arch, p: Precision, *, batch: int, seq_len: int, lora_r: int | None, padded: bool) -> int:
    """Bytes a Gated-DeltaNet layer (Qwen3.5) keeps for backward over the micro-batch: its norms and MLP as a full
    layer's, its token mixer traced (``linear_attention_bytes``), and LoRA's adapters on its projections."""
    h, f, tokens = a.hidden, a.ffn, batch * seq_len
    mixer = linear_attention_bytes(a.text_json, batch, seq_len, p.compute, lora_r is None, padded)
    if lora_r is None:
        return tokens * (p.stream * 4 * h + 8 + p.compute * ((4 if p.cast_inputs else 1) * h + 4 * f)) + mixer
    fan_in, n = a.lora_inputs_per_layer()
    adapters = (p.mask + p.compute) * fan_in + p.compute * lora_r * n
    return tokens * (p.stream * 2 * h + 8 + p.compute * 3 * f + adapters) + mixer


@functools.lru_cache(maxsize=64)
def linear_attention_bytes(text_json: str, batch: int, seq_len: int, dtype_bytes: int, trained: bool,
                           padded: bool) -> int:
    """What one ``Qwen3_5GatedDeltaNet`` keeps for backward on a (batch, seq_len) micro-batch: its forward run on the
    ``meta`` device under ``saved_tensors_hooks`` (the torch fallback path that runs on a CPU, which is also what a GPU
    runs without flash-linear-attention), every saved tensor's storage counted once, its weights excluded."""
    import json

    import torch
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    cfg = Qwen3_5TextConfig(**{k: v for k, v in json.loads(text_json).items() if k != "model_type"})
    dtype = {4: torch.float32, 2: torch.bfloat16}[dtype_bytes]
    with torch.device("meta"):
        mixer = Qwen3_5GatedDeltaNet(cfg, 0).to(dtype)
    mixer.requires_grad_(trained)
    weights = {id(w) for w in mixer.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def pack(t):
        root = t._base if t._base is not None else t
        if id(root) not in weights:
            kept.setdefault(id(root), root)
        return t

    x = torch.empty(batch, seq_len, cfg.hidden_size, device="meta", dtype=dtype, requires_grad=True)
    mask = torch.ones(batch, seq_len, dtype=torch.long, device="meta") if padded else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(x, attention_mask=mask)
    return sum(t.numel() * t.element_size() for t in kept.values())


def mask_bytes(batch: int, seq_len: int, p: Precision, padded: bool) -> int:
    """The (B, 1, L, L) attention mask SDPA keeps per layer when the batch is padded."""
    return batch * seq_len * seq_len * p.compute if padded else 0


def vision_bytes(a: Arch, patches: int, merged: int, p: Precision, *, trainable: bool, checkpointing: bool) -> dict:
    """What the vision tower keeps for backward, ``{"kept", "recompute"}``. Frozen and without checkpointing it runs
    without a graph. With checkpointing, transformers makes every sub-model's input embeddings require grad (the
    tower's patch embedding too), so even a frozen tower keeps its blocks' inputs and its merger's LayerNorm input,
    and backward runs through it. Trained: per block and patch, both LayerNorms' inputs and statistics, the qkv,
    proj and fc1 inputs, SDPA's q, k, the qkv output and its output (6d), quick-GELU's input and sigmoid (8d) and
    fc2's input (4d)."""
    d = a.vis_dim
    if not trainable and not checkpointing:
        return {"kept": 0, "rope": 0, "recompute": 0}
    # a block's saved set; frozen (checkpointing's recomputation), its linear layers keep no inputs: 14d, not 21d
    block = 2 * d * p.stream + 16 + (21 if trainable else 14) * d * p.compute + 4 * a.vis_heads
    rope = 2 * patches * (d // a.vis_heads) * 4  # the tower's cos and sin (float32), shared by its blocks
    merger_in = merged * a.merger_hidden * p.compute  # one (4d) input per merged token: GELU's (frozen), x3 trained
    merger = patches * (d * p.stream + 8) + merger_in * (3 if trainable else 1)
    if checkpointing:
        kept = patches * (a.vis_depth + 1) * d * p.stream + patches * 8 + merger_in * (3 if trainable else 1)
        return {"kept": kept, "rope": rope, "recompute": patches * block}
    return {"kept": patches * a.vis_depth * block + merger, "rope": rope, "recompute": 0}


def student_activations(a: Arch, p: Precision, *, batch: int, seq_len: int, patches: int, lora_r: int | None,
                        checkpointing: bool, trainable_vision: bool) -> dict:
    """What one micro-batch's forward keeps (``patches`` over the whole batch), by part, and ``"forward"`` (their sum,
    at the end of the forward) and ``"backward"`` (during a layer's backward)."""
    tokens, padded = batch * seq_len, batch > 1
    layer = layer_bytes_per_token(a, p, lora_r=lora_r, padded=padded) * tokens + mask_bytes(batch, seq_len, p, padded)
    linear = linear_layer_bytes(a, p, batch=batch, seq_len=seq_len, lora_r=lora_r, padded=padded) \
        if a.linear_layers else 0
    first = 0
    if lora_r is not None and not checkpointing:  # layer 0's input needs no gradient: its norm and masks keep less
        first = tokens * (p.stream * a.hidden + 4 + p.mask * 3 * a.hidden)
    all_layers = a.full_layers * layer + a.linear_layers * linear
    parts = {
        "layers": a.layers * tokens * a.hidden * p.stream if checkpointing else all_layers - first,
        "rope": 2 * tokens * a.head_dim * 4,  # cos and sin (float32), shared by every layer
        # the final norm's input (and, trained, its normalised copy and output, which the lm_head keeps a view of)
        "final_norm": tokens * (p.stream * (3 * a.hidden if lora_r is None else a.hidden) + 4),
        # token ids (a trained embedding) and masked_scatter's (B, L, 1) bool mask (whenever embeddings need grad)
        "embedding": tokens * (9 if lora_r is None else 1 if checkpointing else 0),
        "inputs": patches * pixel_values(a) * 4 + tokens * 8 * 3,  # pixel_values (float32), ids, attention mask, labels
    }
    # the tower's stream is its patch convolution's output: bf16 under a GPU's autocast, unlike the text embedding's
    tower = dataclasses.replace(p, stream=p.compute)
    vision = vision_bytes(a, patches, patches // (a.merge * a.merge), tower, trainable=trainable_vision,
                          checkpointing=checkpointing)
    parts["vision"], parts["vision_rope"] = vision["kept"], vision["rope"]
    # Qwen3-VL: each DeepStack layer's merged tokens, from the tower until the LLM layer that adds them
    parts["deepstack"] = a.deepstack * (patches // (a.merge * a.merge)) * a.hidden * p.compute
    parts["forward"] = sum(parts.values())
    # During a layer's backward: the gradients of its MLP intermediates and of the stream, and (checkpointing) the
    # layer's (or a vision block's) recomputed activations.
    working = tokens * (2 * a.ffn * p.compute + 2 * a.hidden * p.stream)
    parts["backward"] = parts["forward"] + max(working + (max(layer, linear) if checkpointing else 0),
                                               vision["recompute"])
    return parts


def teacher_forward_bytes(a: Arch, *, tokens: int, patches: int, compute: int, dequantized: int) -> int:
    """The teacher's largest working set in its forward (no graph): a decoder layer's MLP (gate, silu, up and their
    product, 3f live at once, beside the stream and the residual) or a vision block; plus the largest quantised
    weight dequantised for its matmul (``dequantized``: bitsandbytes dequantises NF4 per call)."""
    text = tokens * (3 * a.ffn + 2 * a.hidden) * compute
    vision = patches * (3 * a.vis_dim + 2 * a.vis_ffn + 2 * a.vis_dim) * compute
    return max(text, vision) + dequantized


def kd_bytes(impl: str, *, n: int, chunk: int, vocab: int, student: Arch, teacher: Arch | None,
             student_logit_bytes: int, teacher_bytes: int, stream: int) -> int:
    """The KD loss's own buffers for ``n`` answer tokens (``fslib.engine.kd``, ``kd_chunked``).

    chunked: three float32 (C, V) buffers at the peak of a chunk (two models' logits and one more), the teacher's
    chunk logits in its dtype before the upcast, and the selected rows of both hidden states (N x H).
    full: the student's answer logits (N x V, its dtype) and, in float32, their copy, its log-softmax, the teacher's
    log-probabilities and probabilities, and one logsumexp temporary; the teacher's logits in its dtype.
    """
    if impl == "chunked":
        c = min(n, chunk)
        rows = n * (student.hidden * stream * 2 + (teacher.hidden * teacher_bytes if teacher else 0))
        return 3 * c * vocab * 4 + (c * vocab * teacher_bytes if teacher else 0) + rows
    fp32 = 5 if teacher is not None else 4
    return n * vocab * (student_logit_bytes + 4 * fp32 + (teacher_bytes if teacher is not None else 0))
