"""A model's architecture as the planner needs it: parameter counts by part and every linear layer's shape, read off
the model built on the ``meta`` device (no memory, no weights), so counts are ``sum(p.numel())`` of the real module
tree rather than formulas.

A name resolves as the stages resolve it: ``random-init:<preset>`` from ``fslib.engine.randominit``'s presets, the
public Qwen2-VL-2B / -7B hub ids from the same presets (their dimensions are the released ``config.json``'s), a
folder from its ``config.json``; ``embedded:<preset>`` from the folder 01/02 built for it under ``search`` (the run's
``embedded/``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

# Hub ids whose config.json the real presets reproduce (see /work/shared/reference/qwen2-vl-architectures.md).
HUB_PRESETS = {"Qwen/Qwen2-VL-2B-Instruct": "qwen2-vl-2b", "Qwen/Qwen2-VL-2B": "qwen2-vl-2b",
               "Qwen/Qwen2-VL-7B-Instruct": "qwen2-vl-7b", "Qwen/Qwen2-VL-7B": "qwen2-vl-7b"}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # = adapters'


@dataclass(frozen=True)
class Linear:
    name: str
    fan_in: int
    fan_out: int
    bias: bool
    part: str  # "text" (decoder layers), "vision" (tower and merger) or "head"

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)


@dataclass(frozen=True)
class Arch:
    """Counts and shapes of one Qwen2-VL-style model (``sum(p.numel())`` of its meta-device module tree)."""

    name: str
    params: int  # every parameter, a tied head counted once
    params_vision: int  # the tower and its merger
    params_embedding: int
    params_head: int  # 0 when the head is tied to the embedding
    params_layers: int  # decoder layers and the final norm
    linears: tuple[Linear, ...]
    other_params: int  # parameters outside nn.Linear and nn.Embedding (norms, the patch convolution)
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    vis_dim: int
    vis_depth: int
    vis_heads: int
    vis_ffn: int
    merge: int  # spatial merge (2: four patches per visual token)
    merger_hidden: int

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params_language(self) -> int:
        return self.params - self.params_vision

    def linears_of(self, part: str) -> tuple[Linear, ...]:
        return tuple(lin for lin in self.linears if lin.part == part)

    @property
    def layer_linears(self) -> tuple[Linear, ...]:
        """The linear layers of one decoder layer (all layers are alike)."""
        prefix = next(lin.name for lin in self.linears_of("text")).rsplit(".", 2)[0]
        return tuple(lin for lin in self.linears_of("text") if lin.name.startswith(prefix + "."))

    def lora_params(self, r: int) -> int:
        """Parameters of rank-``r`` adapters on every decoder layer's projections (``adapters.LORA_TARGETS``)."""
        return sum(r * (lin.fan_in + lin.fan_out) for lin in self.linears_of("text")
                   if lin.name.rsplit(".", 1)[-1] in LORA_TARGETS)

    def lora_inputs_per_layer(self) -> tuple[int, int]:
        """(sum of the adapted projections' input widths, how many there are) in one decoder layer."""
        targets = [lin for lin in self.layer_linears if lin.name.rsplit(".", 1)[-1] in LORA_TARGETS]
        return sum(lin.fan_in for lin in targets), len(targets)


def config_of(name: str, search: str | Path | None = None):
    """The ``transformers`` config a model name stands for (nothing is downloaded or loaded)."""
    from fslib.engine import randominit

    name = str(name)
    if randominit.is_random_init(name) or name in HUB_PRESETS:
        preset = randominit.preset_of(name) if randominit.is_random_init(name) else HUB_PRESETS[name]
        vocab = randominit.PRESETS[preset]["vocab"]
        ids = None if vocab > max(randominit.REAL_TOKEN_IDS.values()) else {
            k: i for i, k in enumerate(randominit.REAL_TOKEN_IDS)}  # a tiny vocabulary: any small ids do
        return randominit.config(preset, ids)
    folder = Path(name)
    if name.startswith("embedded:") and search is not None:
        folder = Path(search) / name.removeprefix("embedded:")
    if (folder / "config.json").exists():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(folder))
    raise ValueError(f"cannot read the architecture of {name!r}: not a random-init preset, not one of "
                     f"{', '.join(HUB_PRESETS)}, and no config.json at {folder} (an embedded model's folder exists "
                     "once 01 or 02 has built it; pass it, or the run folder's embedded/ as search)")


def _kind(name: str) -> str:
    if ".visual." in f".{name}":
        return "vision"
    return "head" if name.startswith("lm_head") else "text"


@functools.lru_cache(maxsize=16)
def _from_config_json(name: str, config_json: str) -> Arch:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = AutoConfig.for_model(**__import__("json").loads(config_json))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    linears, other, embedding = [], 0, 0
    for mod_name, mod in model.named_modules():
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        if isinstance(mod, torch.nn.Linear):
            linears.append(Linear(mod_name, mod.in_features, mod.out_features, mod.bias is not None, _kind(mod_name)))
        elif isinstance(mod, torch.nn.Embedding):
            embedding += own
        else:
            other += own
    text, vis = cfg.get_text_config(), cfg.vision_config
    tied = bool(getattr(cfg, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    head = 0 if tied else text.vocab_size * text.hidden_size
    if tied:  # named_modules lists the tied lm_head as a Linear too; its weight is the embedding's
        linears = [lin for lin in linears if lin.part != "head"]
    total = sum(p.numel() for p in model.parameters())
    visual = model.model.visual
    vision = sum(p.numel() for p in visual.parameters())
    heads = text.num_attention_heads
    return Arch(name=name, params=total, params_vision=vision, params_embedding=embedding, params_head=head,
                params_layers=total - vision - embedding - head, linears=tuple(linears), other_params=other,
                hidden=text.hidden_size, ffn=text.intermediate_size, layers=text.num_hidden_layers, heads=heads,
                kv_heads=text.num_key_value_heads, head_dim=text.hidden_size // heads, vocab=text.vocab_size,
                tied=tied, vis_dim=vis.embed_dim, vis_depth=vis.depth, vis_heads=vis.num_heads,
                vis_ffn=int(vis.embed_dim * vis.mlp_ratio), merge=vis.spatial_merge_size,
                merger_hidden=vis.embed_dim * vis.spatial_merge_size ** 2)


def arch_of(name: str, search: str | Path | None = None) -> Arch:
    """The ``Arch`` of a model name (see the module doc); cached per configuration."""
    return from_config(config_of(name, search), str(name))


def from_config(cfg, name: str = "model") -> Arch:
    return _from_config_json(name, cfg.to_json_string(use_diff=False))
