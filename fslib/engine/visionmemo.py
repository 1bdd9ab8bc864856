"""Reuse a frozen vision tower's outputs across epochs instead of recomputing them.

A frozen tower (the student's with ``freeze_vision``, the teacher's always) maps the same pixels to the same visual
tokens in every epoch. On the tiny pair its forward pass was about 45% of a student's training step (profiled: 22 of
48 ms); on the real 2B (a 675M-parameter ViT ahead of a 1.5B language model) a third is an estimate from parameter
counts, not a measurement. On a GPU a hit is not free either (the pixels' copy to the host and their digest):
``benchmarks/gpu_check.py``'s ``vision_memo`` section times a hit against the bf16 tower. ``install`` wraps a Qwen-VL model's
``get_image_features`` and ``get_video_features`` (the two methods its forward calls for pixels, transformers 5.x):
each image or clip is looked up by a BLAKE2 digest of its patch rows, grid and dtype, so a changed image, resolution
or processor setting never hits. Only the misses go through the tower, in one batch; their merged tokens are kept in
CPU memory (detached) up to ``max_bytes`` per model, after which new items are computed as before and not kept.
What is kept per item is what the family's forward reads (``fslib.engine.families``): the pooled tokens, and for
Qwen3-VL its DeepStack features too (one tensor per DeepStack layer, added to the first LLM layers' visual positions),
so a hit returns the same ``deepstack_features`` the tower would (tests/test_families.py compares losses).

The memo bypasses itself, computing as transformers does, whenever reuse could be wrong: a tower with a trainable
weight (it changes every step) or an active dropout, a caller asking for anything but the merged tokens, or extra
keyword arguments. It is never installed where the tower's weights are sharded across processes (FSDP, ZeRO-3):
skipping a forward on one rank would stall the others' all-gathers (see ``fslib.training.setup``).
"""

from __future__ import annotations

import hashlib

import torch

from fslib.engine import families

ATTR = "_firstsight_vision_memo"


class VisionMemo:
    """Merged visual tokens of a frozen tower, keyed by content. ``stats()`` counts hits, misses and bytes kept."""

    def __init__(self, inner, max_bytes: int, deepstack: bool = False):
        self.inner, self.max_bytes, self.deepstack = inner, int(max_bytes), deepstack
        self.store: dict[bytes, tuple[torch.Tensor, ...]] = {}  # pooled tokens, then each DeepStack layer's
        self.output_cls = None  # the ModelOutput class the tower returns (seen on the first miss)
        self.busy = False  # Qwen3-VL's get_video_features calls get_image_features: the inner call is not a lookup
        self.bytes = self.hits = self.misses = self.dropped = 0
        self.originals = {"image": inner.get_image_features, "video": inner.get_video_features}

    def reusable(self) -> bool:
        visual = self.inner.visual
        if any(p.requires_grad for p in visual.parameters()):
            return False
        return not (visual.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in visual.modules()))

    def features(self, modality: str, pixels: torch.Tensor, grid_thw: torch.Tensor, return_dict=True, **kwargs):
        original = self.originals[modality]
        if self.busy or kwargs or return_dict is not True or not self.reusable():
            return original(pixels, grid_thw, return_dict=return_dict, **kwargs)
        rows = grid_thw.prod(-1).tolist()
        chunks = pixels.split(rows)
        keys = [_digest(c, g) for c, g in zip(chunks, grid_thw.tolist())]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh = {}
        if missing:
            self.busy = True
            try:
                out = original(torch.cat([chunks[i] for i in missing]), grid_thw[missing], return_dict=True)
            finally:
                self.busy = False
            self.output_cls = type(out)
            # per item: its pooled tokens, then its rows of every DeepStack layer (Qwen3-VL)
            layers = list(out.deepstack_features) if self.deepstack else []
            fresh = {keys[i]: (out.pooler_output[j], *(layer[j] for layer in layers)) for j, i in enumerate(missing)}
            for key, feats in fresh.items():
                self._keep(key, feats)
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        items = [fresh[k] if k in fresh else tuple(t.to(pixels.device, non_blocking=True) for t in self.store[k])
                 for k in keys]
        out = self.output_cls(pooler_output=tuple(item[0] for item in items))
        if self.deepstack:
            out.deepstack_features = [tuple(item[1 + n] for item in items) for n in range(len(items[0]) - 1)]
        return out

    def _keep(self, key: bytes, feats: tuple[torch.Tensor, ...]) -> None:
        size = sum(f.numel() * f.element_size() for f in feats)
        if key in self.store:
            return
        if self.bytes + size > self.max_bytes:
            self.dropped += 1
            return
        self.store[key], self.bytes = tuple(f.detach().to("cpu", copy=True) for f in feats), self.bytes + size

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "kept": len(self.store), "bytes": self.bytes,
                "not_kept_over_limit": self.dropped, "max_bytes": self.max_bytes}


def _digest(pixels: torch.Tensor, grid: list) -> bytes:
    raw = pixels.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
    h = hashlib.blake2b(raw, digest_size=16)
    h.update(repr((grid, str(pixels.dtype))).encode())
    return h.digest()


def _inner(model):
    """The Qwen-VL ``*Model`` under a ForConditionalGeneration, a PEFT wrapper or an engine wrapper (DDP, DeepSpeed)."""
    seen = model
    for _ in range(6):
        if hasattr(seen, "get_image_features") and hasattr(seen, "visual"):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "base_model", None) or getattr(seen, "model", None)
        if seen is None:
            break
    return None


def install(model, max_bytes: int) -> VisionMemo | None:
    """Memoise ``model``'s vision features (up to ``max_bytes`` of CPU memory); None where it has no Qwen-VL-style
    tower or ``max_bytes`` is 0. Installing twice returns the memo already there."""
    inner = _inner(model)
    if inner is None or max_bytes <= 0:
        return None
    if getattr(inner, ATTR, None) is not None:
        return getattr(inner, ATTR)
    fam = families.FAMILIES.get(getattr(getattr(inner, "config", None), "model_type", None))
    memo = VisionMemo(inner, max_bytes, deepstack=bool(fam and fam.deepstack))

    # The originals' parameter names: generate() reads them to route pixels (and pops them) before the prefill.
    def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
        return memo.features("image", pixel_values, image_grid_thw, **kwargs)

    def get_video_features(pixel_values_videos, video_grid_thw=None, **kwargs):
        return memo.features("video", pixel_values_videos, video_grid_thw, **kwargs)

    inner.get_image_features, inner.get_video_features = get_image_features, get_video_features
    setattr(inner, ATTR, memo)
    return memo


def remove(model) -> dict | None:
    """Undo ``install`` and free the memo; its final ``stats()``, or None where none was installed."""
    inner = _inner(model)
    memo = getattr(inner, ATTR, None) if inner is not None else None
    if memo is None:
        return None
    for name in ("get_image_features", "get_video_features"):
        inner.__dict__.pop(name, None)
    delattr(inner, ATTR)
    stats = memo.stats()
    memo.store.clear()
    return stats
