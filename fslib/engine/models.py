"""Model and processor loading, as for ``Qwen/Qwen2-VL-7B-Instruct`` or any family of ``fslib.engine.families``: the
Auto classes and ``from_pretrained``.

Every stage loads every model through here, the embedded tiny pair included (``fslib.world.embedded`` only decides
where its folder comes from), so the embedded default takes the code paths of the real checkpoints.
"""

from __future__ import annotations

import torch

from fslib.engine.counts import param_counts  # noqa: F401  (callers import it from here)
from fslib.engine.qwentok import QWEN2VL_CHAT_TEMPLATE, QWEN2VL_SPECIAL_TOKENS  # noqa: F401

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def quantization_config(quantization: str, compute_dtype: torch.dtype):
    """bitsandbytes settings for ``none | int8 | nf4``."""
    if quantization in ("none", "", None):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"quantization {quantization!r} is not one of: none, int8, nf4")


def load_model(path: str, *, dtype: str = "float32", quantization: str = "none", device_map: str | None = None,
               trust_remote_code: bool = False, frozen: bool = False):
    """Load any Qwen-VL checkpoint of a known family (hub id or folder) with ``AutoModelForImageTextToText``;
    safetensors only.

    ``frozen=True`` is how the teacher is loaded: eval mode, no gradients, so no optimizer state is ever built.
    """
    from transformers import AutoModelForImageTextToText

    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of: {', '.join(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    from fslib.engine import randominit

    if randominit.is_random_folder(path):  # random-init:<preset>: the real shapes, weights built here (no files)
        load_dtype = "bfloat16" if dtype == "auto" else dtype  # the released checkpoints' dtype
        if quantization in ("none", "", None):
            model = randominit.load(path, dtype=load_dtype)  # eval mode, as from_pretrained returns a model
            model.requires_grad_(not frozen)
            return model
        path = randominit.materialise(path, load_dtype)  # bitsandbytes quantises a checkpoint as it loads it
    qconf = quantization_config(quantization, torch.float32 if torch_dtype == "auto" else torch_dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, quantization_config=qconf, device_map=device_map,
        trust_remote_code=trust_remote_code, use_safetensors=True)
    if frozen:
        model.eval()
        model.requires_grad_(False)
    return model


def load_processor(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not hasattr(processor, "image_processor"):
        raise RuntimeError(f"AutoProcessor for {path} returned {type(processor).__name__}, not a Qwen-VL processor; "
                           "is torchvision installed (needed by the Qwen video processors)?")
    return processor


def describe(model) -> dict:
    """A one-line summary for the notebooks: sizes, vocab, dtype, quantisation."""
    text = model.config.get_text_config()
    q = getattr(model.config, "quantization_config", None)
    return {**param_counts(model), "hidden_size": text.hidden_size, "layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "quantization": (q.to_dict().get("quant_method") if hasattr(q, "to_dict") else q) or "none"}
