"""A model's architecture as the planner needs it: parameter counts by part and every linear layer's shape, read off
the model built on the ``meta`` device (no memory, no weights), so counts are ``sum(p.numel())`` of the real module
tree rather than formulas.

A name resolves as the stages resolve it: ``random-init:<preset>`` from ``fslib.engine.randominit``'s presets, the
public hub ids of every family (``fslib.engine.families``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) from the same
presets (their dimensions are the released ``config.json``'s), a folder from its ``config.json``;
``embedded:<preset>`` from the folder 01/02 built for it under ``search`` (the run's ``embedded/``).

What differs between families is read off the config and the module tree, never assumed: the vision tower's width and
MLP (Qwen2-VL's ``embed_dim`` x ``mlp_ratio``, the others' ``hidden_size`` / ``intermediate_size``), an explicit
``head_dim`` (Qwen3-VL, Qwen3.5), Qwen3-VL's DeepStack mergers (parameters of the tower; their features are added to
the first LLM layers), Qwen3.5's ``layer_types`` (Gated-DeltaNet layers beside full attention, with their head
counts and widths) and its gated full attention (``q_proj`` twice as wide), the family's LoRA targets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from fslib.engine import families

# Hub ids whose config.json the real presets reproduce (qwen2-vl-architectures.md, qwen-vl-families.md).
HUB_PRESETS = {hub: preset for fam in families.FAMILIES.values() for hub, preset in fam.hub.items()}


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
    """Counts and shapes of one Qwen-VL model (``sum(p.numel())`` of its meta-device module tree)."""

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
    family: str = "qwen2-vl"
    patch: int = 14  # pixels per patch side
    deepstack: int = 0  # Qwen3-VL: vision layers whose merged features are added to LLM layers 0, 1, ...
    linear_layers: int = 0  # Qwen3.5: Gated-DeltaNet layers (the rest are full attention)
    lin_k_heads: int = 0
    lin_v_heads: int = 0
    lin_dim: int = 0  # key and value head width of the linear attention
    gated_attention: bool = False  # Qwen3.5: q_proj also yields a sigmoid gate on the attention output
    text_json: str = ""  # Qwen3.5: the text config, from which its Gated-DeltaNet's activations are traced

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def full_layers(self) -> int:
        """Decoder layers with softmax attention (all but Qwen3.5's Gated-DeltaNet ones)."""
        return self.layers - self.linear_layers

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return families.get(self.family).lora_targets

    @property
    def params_language(self) -> int:
        return self.params - self.params_vision

    def linears_of(self, part: str) -> tuple[Linear, ...]:
        return tuple(lin for lin in self.linears if lin.part == part)

    @property
    def layer_linears(self) -> tuple[Linear, ...]:
        """The linear layers of the largest decoder layer (Qwen3.5's layers differ by kind; the others are alike)."""
        layers: dict[str, list] = {}
        for lin in self.linears_of("text"):
            layers.setdefault(lin.name.split(".layers.", 1)[-1].split(".", 1)[0], []).append(lin)
        return tuple(max(layers.values(), key=lambda ls: sum(lin.params for lin in ls)))

    def _targets(self) -> list[Linear]:
        return [lin for lin in self.linears_of("text") if lin.name.rsplit(".", 1)[-1] in self.lora_targets]

    def lora_params(self, r: int) -> int:
        """Parameters of rank-``r`` adapters on every decoder layer's projections (the family's LoRA targets)."""
        return sum(r * (lin.fan_in + lin.fan_out) for lin in self._targets())

    def lora_inputs_per_layer(self) -> tuple[float, float]:
        """(sum of the adapted projections' input widths, how many there are) per decoder layer, averaged over the
        layers (Qwen3.5's linear-attention and full-attention layers adapt different projections)."""
        targets = self._targets()
        return sum(lin.fan_in for lin in targets) / self.layers, len(targets) / self.layers


def config_of(name: str, search: str | Path | None = None):
    """The ``transformers`` config a model name stands for (nothing is downloaded or loaded)."""
    from fslib.engine import randominit

    name = str(name)
    if randominit.is_random_init(name) or name in HUB_PRESETS:
        preset = randominit.preset_of(name) if randominit.is_random_init(name) else HUB_PRESETS[name]
        p = randominit.PRESETS[preset]
        real = randominit.real_token_ids(p["family"])
        ids = None if p["vocab"] > max(real.values()) else {
            k: i for i, k in enumerate(real)}  # a tiny vocabulary: any small ids do
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
    fam = families.of_config(cfg)
    vis_dim = getattr(vis, "embed_dim", None) or vis.hidden_size  # Qwen2-VL names the tower's width embed_dim
    vis_ffn = int(vis_dim * vis.mlp_ratio) if hasattr(vis, "mlp_ratio") else vis.intermediate_size
    kinds = list(getattr(text, "layer_types", None) or [])
    return Arch(name=name, params=total, params_vision=vision, params_embedding=embedding, params_head=head,
                params_layers=total - vision - embedding - head, linears=tuple(linears), other_params=other,
                hidden=text.hidden_size, ffn=text.intermediate_size, layers=text.num_hidden_layers, heads=heads,
                kv_heads=text.num_key_value_heads, head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                vocab=text.vocab_size, tied=tied, vis_dim=vis_dim, vis_depth=vis.depth, vis_heads=vis.num_heads,
                vis_ffn=vis_ffn, merge=vis.spatial_merge_size, merger_hidden=vis_dim * vis.spatial_merge_size ** 2,
                family=fam.name, patch=vis.patch_size,
                deepstack=len(getattr(vis, "deepstack_visual_indexes", None) or ()),
                linear_layers=kinds.count("linear_attention"),
                lin_k_heads=getattr(text, "linear_num_key_heads", 0) if fam.linear_attention else 0,
                lin_v_heads=getattr(text, "linear_num_value_heads", 0) if fam.linear_attention else 0,
                lin_dim=getattr(text, "linear_key_head_dim", 0) if fam.linear_attention else 0,
                gated_attention=fam.linear_attention,
                text_json=text.to_json_string(use_diff=False) if fam.linear_attention else "")


def arch_of(name: str, search: str | Path | None = None) -> Arch:
    """The ``Arch`` of a model name (see the module doc); cached per configuration."""
    return from_config(config_of(name, search), str(name))


def from_config(cfg, name: str = "model") -> Arch:
    return _from_config_json(name, cfg.to_json_string(use_diff=False))
