"""Bytes of the weights each model holds: the frozen teacher in its dtype or bitsandbytes quantisation, the student's
weights, gradients and AdamW state (full fine-tuning or LoRA), and what an engine divides among its processes.

bitsandbytes, as ``fslib.engine.models.load_model`` asks for it through transformers, converts every ``nn.Linear``
except the output layer (``lm_head``, kept by ``get_keys_to_not_convert``), vision tower and merger included; the
embeddings, norms and the patch convolution stay in the load dtype. Per converted layer of n = in x out weights:

* int8 (``load_in_8bit``): n int8 bytes plus the row scales SCB (out float32); the bias in the load dtype.
* nf4 (``load_in_4bit``, double quantisation, blocks of 64): n / 2 packed bytes, one uint8 absmax per block, a float32
  absmax per 256 blocks, a 256-entry float32 code for those and the 16-entry NF4 code, and an offset.
"""

from __future__ import annotations

import math

from fslib.training.plan.arch import Arch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # Qwen2-VL's checkpoints are bf16 ("auto")
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in float32 (autocast_adapter_dtype) whatever the base dtype


def quantized_linear_bytes(fan_in: int, fan_out: int, bias: bool, quantization: str, dtype_bytes: int) -> int:
    n = fan_in * fan_out
    bias_bytes = fan_out * dtype_bytes if bias else 0
    if quantization == "int8":
        return n + 4 * fan_out + bias_bytes
    if quantization == "nf4":
        blocks = math.ceil(n / 64)
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 16 * 4 + 4 + bias_bytes
    return n * dtype_bytes + bias_bytes


def teacher_weight_bytes(a: Arch, dtype: str, quantization: str) -> int:
    """The frozen teacher's weights as loaded (``quantization`` none, int8 or nf4)."""
    b = DTYPE_BYTES[dtype]
    if quantization in ("none", "", None):
        return a.params * b
    linear = sum(quantized_linear_bytes(lin.fan_in, lin.fan_out, lin.bias, quantization, b)
                 for lin in a.linears if lin.part != "head")
    head = sum(lin.params for lin in a.linears if lin.part == "head") * b
    return linear + head + (a.params_embedding + a.other_params) * b


def largest_dequantized(a: Arch, quantization: str, compute_bytes: int) -> int:
    """A quantised teacher's largest linear weight materialised for its matmul (NF4 dequantises per call; for int8,
    the int32 product of the same width is of that order)."""
    if quantization in ("none", "", None):
        return 0
    return max(lin.fan_in * lin.fan_out for lin in a.linears if lin.part != "head") * compute_bytes


def trainable_params(a: Arch, *, lora: bool, lora_r: int, freeze_vision: bool) -> int:
    if lora:
        return a.lora_params(lora_r)
    return a.params - (a.params_vision if freeze_vision else 0)


def student_bytes(a: Arch, *, dtype: str, lora: bool, lora_r: int, freeze_vision: bool) -> dict:
    """Weights (frozen base included), gradients and AdamW's two moments, unsharded. Gradients and moments are
    ``zeros_like`` the trained parameters, so in their dtype."""
    b = DTYPE_BYTES[dtype]
    n = trainable_params(a, lora=lora, lora_r=lora_r, freeze_vision=freeze_vision)
    pb = ADAPTER_BYTES if lora else b
    return {"weights": a.params * b + (n * ADAPTER_BYTES if lora else 0), "trainable": n, "param_bytes": pb, "lora": lora,
            "gradients": n * pb, "optimizer_state": 2 * n * pb, "largest": _largest(a, lora, lora_r) * pb}


def _largest(a: Arch, lora: bool, r: int) -> int:
    """The largest trained tensor (AdamW's per-tensor temporaries on a CPU are two of it)."""
    if lora:
        return max(r * max(lin.fan_in, lin.fan_out) for lin in a.linears_of("text"))
    return max([a.params_embedding, a.params_head] + [lin.fan_in * lin.fan_out for lin in a.linears])


def engine_of(accelerate_config: str, num_processes: int) -> str:
    """none (one process), ddp, fsdp, zero2 or zero3, from an accelerate config file (configs/accelerate/)."""
    if num_processes <= 1:
        return "none"
    from pathlib import Path

    import yaml

    from fslib.core.fsio import REPO_ROOT

    path = Path(accelerate_config)
    path = path if path.exists() else REPO_ROOT / path
    conf = yaml.safe_load(path.read_text()) if path.exists() else {}
    kind = conf.get("distributed_type", "MULTI_GPU")
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        return f"zero{conf.get('deepspeed_config', {}).get('zero_stage', 2)}"
    return "ddp"


def shard(s: dict, a: Arch, engine: str, n: int) -> dict:
    """What one process holds of the student under ``engine`` on ``n`` processes.

    ddp: a full replica, and DDP's gradient buckets (a second copy of the gradients: accelerate leaves
    ``gradient_as_bucket_view`` off). fsdp: weights, gradients and moments / n, plus the all-gathered bf16 parameters
    of the root unit (embeddings, head, tower ends) and two decoder layers (the current and the prefetched one).
    zero2: DeepSpeed's bf16 model replicated, fp32 master weights, gradients and moments / n, one bf16 reduce bucket
    (5e8 elements by default). zero3: the bf16 model, master weights, gradients and moments all / n, plus two gathered
    layers."""
    out = dict(s, buckets=0, gathered=0)
    layer = a.params_layers // max(a.layers, 1)
    root = a.params - a.params_layers - a.params_vision + a.params_vision // max(a.vis_depth, 1)
    if engine == "ddp":
        out["buckets"] = s["gradients"]
    elif engine == "fsdp":
        out.update(weights=s["weights"] // n, gradients=s["gradients"] // n, optimizer_state=s["optimizer_state"] // n,
                   gathered=2 * (root + 2 * layer))
    elif engine in ("zero2", "zero3"):
        master = s["trainable"] * 4
        weights = (a.params + (s["trainable"] if s["lora"] else 0)) * 2
        out.update(weights=(weights + master) // n if engine == "zero3" else weights + master // n,
                   gradients=s["trainable"] * 4 // n, optimizer_state=s["trainable"] * 8 // n)
        out["buckets"] = 2 * min(s["trainable"], 500_000_000) if engine == "zero2" else 0
        out["gathered"] = 2 * 2 * layer if engine == "zero3" else 0
    return out
