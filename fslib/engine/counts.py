"""Parameter counts of a Qwen2-VL model, split into vision tower and language model (no model loading here, so
``fslib.engine.randominit`` and ``fslib.engine.models`` can both use it)."""


def param_counts(model) -> dict:
    """Total, vision-tower and language-model parameter counts (``sum(p.numel())``, as the model cards count)."""
    total = sum(p.numel() for p in model.parameters())
    inner = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    vision = sum(p.numel() for p in visual.parameters()) if visual is not None else 0
    return {"params": total, "params_vision": vision, "params_language": total - vision}
