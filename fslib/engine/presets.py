"""Random-init presets: each family's published dimensions, their real-width shallow cuts, and tiny CPU pairs.

A preset is data for ``fslib.engine.familyconfig.build`` (see its doc for the keys) plus ``params`` (the published
``sum(p.numel())`` where one is known: Qwen2-VL's; the other families' card sizes are rounded, so None) and
``real_tokenizer`` (the folder gets the family's real tokenizer from ``fslib.engine.qwentok``, not the small one
handed to ``randominit.resolve``). Dimensions: /work/shared/reference/qwen2-vl-architectures.md and
qwen-vl-families.md (Qwen2.5-VL from the 3B config and the Qwen-Image text encoder; Qwen3-VL 2B / 4B / 8B; Qwen3.5
0.8B / 2B / 4B / 9B).

``-shallow``: every width, head count, vocabulary and tie of the real model with 2 text layers and 2 vision blocks
(Qwen3.5: one Gated-DeltaNet layer and one full-attention layer, so both kinds are measured; Qwen3-VL: DeepStack
from both blocks into LLM layers 0 and 1; Qwen2.5-VL: block 0 windowed, block 1 full attention).

``tiny-<family>-teacher`` / ``-student``: a CPU pair of the family's real config, model and processor classes with the
small BPE of the embedded pair retokenised as the family's tokenizer (its special tokens, ids after the BPE). The
Qwen2.5-VL teacher pads its output layer 128 rows further than its student, as the real 7B does over the 3B.
"""

from __future__ import annotations

_Q2_VISION = dict(vis_dim=1280, vis_heads=16, vis_depth=32)
_Q25_VISION = dict(vis_dim=1280, vis_ffn=3420, vis_heads=16, vis_depth=32, fullatt=(7, 15, 23, 31))
_Q3_SMALL_VISION = dict(vis_depth=24, vis_dim=1024, vis_ffn=4096, vis_heads=16)
_Q3_LARGE_VISION = dict(vis_depth=27, vis_dim=1152, vis_ffn=4304, vis_heads=16)
_Q35_TEXT = dict(family="qwen3.5", head_dim=256, lin_k_heads=16, lin_dim=128, vocab=248_320)

REAL: dict[str, dict] = {
    "qwen2-vl-2b": dict(family="qwen2-vl", hidden=1536, ffn=8960, heads=12, kv_heads=2, vocab=151_936, tie=True,
                        layers=28, **_Q2_VISION, params=2_208_985_600),
    "qwen2-vl-7b": dict(family="qwen2-vl", hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152_064, tie=False,
                        layers=28, **_Q2_VISION, params=8_291_375_616),
    "qwen2.5-vl-3b": dict(family="qwen2.5-vl", hidden=2048, ffn=11008, heads=16, kv_heads=2, vocab=151_936,
                          tie=True, layers=36, **_Q25_VISION),
    "qwen2.5-vl-7b": dict(family="qwen2.5-vl", hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152_064,
                          tie=False, layers=28, **_Q25_VISION),
    "qwen3-vl-2b": dict(family="qwen3-vl", hidden=2048, ffn=6144, heads=16, kv_heads=8, head_dim=128,
                        vocab=151_936, tie=True, layers=28, **_Q3_SMALL_VISION, deepstack=(5, 11, 17)),
    "qwen3-vl-4b": dict(family="qwen3-vl", hidden=2560, ffn=9728, heads=32, kv_heads=8, head_dim=128,
                        vocab=151_936, tie=True, layers=36, **_Q3_SMALL_VISION, deepstack=(5, 11, 17)),
    "qwen3-vl-8b": dict(family="qwen3-vl", hidden=4096, ffn=12288, heads=32, kv_heads=8, head_dim=128,
                        vocab=151_936, tie=False, layers=36, **_Q3_LARGE_VISION, deepstack=(8, 16, 24)),
    "qwen3.5-0.8b": dict(**_Q35_TEXT, hidden=1024, ffn=3584, heads=8, kv_heads=2, lin_v_heads=16, tie=True,
                         layers=24, vis_depth=12, vis_dim=768, vis_ffn=3072, vis_heads=12),
    "qwen3.5-2b": dict(**_Q35_TEXT, hidden=2048, ffn=6144, heads=8, kv_heads=2, lin_v_heads=16, tie=True,
                       layers=24, **_Q3_SMALL_VISION),
    "qwen3.5-4b": dict(**_Q35_TEXT, hidden=2560, ffn=9216, heads=16, kv_heads=4, lin_v_heads=32, tie=True,
                       layers=32, **_Q3_SMALL_VISION),
    "qwen3.5-9b": dict(**_Q35_TEXT, hidden=4096, ffn=12288, heads=16, kv_heads=4, lin_v_heads=32, tie=False,
                       layers=32, **_Q3_LARGE_VISION),
}

# What a shallow cut changes per family, beyond 2 text layers and 2 vision blocks.
_SHALLOW = {"qwen2-vl": {}, "qwen2.5-vl": {"fullatt": (1,)}, "qwen3-vl": {"deepstack": (0, 1)},
            "qwen3.5": {"layer_types": ("linear_attention", "full_attention")}}
SHALLOW_PARAMS = {"qwen2-vl-2b": 401_918_976, "qwen2-vl-7b": 1_641_549_824}  # counted by meta_counts


def _shallow(name: str, p: dict) -> dict:
    return {**p, "layers": 2, "vis_depth": 2, **_SHALLOW[p["family"]], "params": SHALLOW_PARAMS.get(name)}


_TINY_VISION = dict(vis_depth=2, vis_dim=64, vis_heads=4, vis_ffn=128)
_TINY_EXTRA = {"qwen2.5-vl": {"fullatt": (1,)}, "qwen3-vl": {"deepstack": (0, 1)},
               "qwen3.5": {"lin_k_heads": 2, "lin_v_heads": 4, "lin_dim": 16}}
# The tiny pairs' language models: teacher twice the student's width (the student at most half, as in the real pairs).
_TINY_TEACHER = dict(hidden=64, ffn=256, heads=2, kv_heads=1, head_dim=32, vocab=512, tie=False, layers=2)
_TINY_STUDENT = dict(hidden=32, ffn=128, heads=2, kv_heads=1, head_dim=16, vocab=512, tie=True, layers=2)


def _tiny(family: str, role: str) -> dict:
    text = dict(_TINY_TEACHER if role == "teacher" else _TINY_STUDENT)
    if family == "qwen3.5":  # 3 Gated-DeltaNet layers then a full one (teacher); one of each (student)
        text["layers"] = 4 if role == "teacher" else 2
        text["layer_types"] = (("linear_attention",) * 3 if role == "teacher" else ("linear_attention",)) + (
            "full_attention",)
    if family == "qwen2.5-vl" and role == "teacher":
        text["vocab"] += 128  # padded further than the student's output layer, as Qwen2.5-VL-7B's over the 3B's
    return dict(family=family, **text, **_TINY_VISION, **_TINY_EXTRA.get(family, {}), params=None,
                real_tokenizer=False)


PRESETS: dict[str, dict] = {
    **{k: {**v, "params": v.get("params"), "real_tokenizer": True} for k, v in REAL.items()},
    **{f"{k}-shallow": {**_shallow(k, v), "real_tokenizer": True} for k, v in REAL.items()},
    # CPU-sized shapes for tests and smoke runs: `cpu-medium` keeps the real 151,936-row vocabulary (~10x the tiny).
    "cpu-medium": dict(family="qwen2-vl", hidden=256, ffn=1024, layers=2, heads=4, kv_heads=2, vocab=151_936,
                       tie=False, vis_depth=2, vis_dim=128, vis_heads=4, params=None, real_tokenizer=True),
    "tiny": dict(family="qwen2-vl", hidden=64, ffn=256, layers=2, heads=2, kv_heads=1, vocab=512, tie=False,
                 vis_depth=2, vis_dim=64, vis_heads=4, params=None, real_tokenizer=False),
    **{f"tiny-{fam}-{role}": _tiny(fam, role) for fam in ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
       for role in ("teacher", "student")},
}
