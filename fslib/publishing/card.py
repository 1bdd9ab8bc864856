"""The model card: ``huggingface_hub.ModelCardData`` + ``EvalResult`` from the run's JSON, rendered from a template.

Every number comes from ``metrics.json`` (03) and every training setting from ``training.json`` (02). The
model-index holds the raw values; the card's tables print them with ``fslib.evaluation.formatting.fmt``, the same formatter the
HTML report uses, so a test can compare both with the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from fslib.evaluation import choice, formatting

TEMPLATE = Path(__file__).parent / "templates" / "modelcard.md"
TASK = "visual-question-answering"


def protocols(metrics: dict) -> dict[str, str]:
    """One line per metric group saying how it was measured, read from ``metrics["protocol"]``."""
    p = metrics.get("protocol", {})
    split, n = metrics.get("split", "?"), metrics.get("n_eval", "?")
    accuracy = f"split {split}, {n} questions, {p.get('decoding', 'greedy')} decoding"
    speed = ", ".join(str(x) for x in (
        f"batch size {p['batch_size']}" if "batch_size" in p else None,
        f"{p['new_tokens']} new tokens" if "new_tokens" in p else None,
        f"{p['warmup']} warm-up runs" if "warmup" in p else None,
        f"median of {p['repeats']} runs" if "repeats" in p else None,
        f"device {p['device']}" if "device" in p else None) if x) or p.get("summary", "unspecified")
    text = lambda key, default: p[key] if isinstance(p.get(key), str) else default  # noqa: E731
    return {"accuracy": f"split {split}, {n} questions; {p['accuracy']}" if isinstance(p.get("accuracy"), str)
            else accuracy,
            "speed": speed, "memory": text("memory", f"peak memory on device {p.get('device', 'unspecified')}"),
            "weights": text("weights", "bytes of the parameters and buffers as stored (quantised where the row says so)"),
            "size": "parameter count (all tensors)"}


def _group(key: str, kind: str) -> str:
    return "weights" if key == "weights_bytes" else formatting.GROUPS[kind]


def eval_results(metrics: dict, model_key: str) -> list:
    """The model-index entries for one model: every measured metric, its protocol as ``metric_config``."""
    from huggingface_hub import EvalResult

    m, dataset, configs = metrics["models"][model_key], metrics.get("dataset", {}), protocols(metrics)
    out = []
    for key, label, kind in formatting.METRICS:
        value = formatting.number(m.get(key))
        if value is None:
            continue
        out.append(EvalResult(task_type=TASK, dataset_type=dataset.get("id") or dataset.get("type", "synthetic"),
                              dataset_name=dataset.get("name", "FirstSight egocentric VQA"),
                              dataset_split=metrics.get("split"), metric_type=key, metric_name=label,
                              metric_value=value, metric_config=configs[_group(key, kind)]))
    return out


def provenance_text(metrics: dict, trained: dict, key: str) -> dict:
    """What the card says this model is and why it was published, from ``metrics["choice"]`` (03's student to trust,
    chosen on validation, with the KD-vs-SFT verdict on the test split). Distillation is said to have helped only when
    the verdict says so: {distilled, what, why}."""
    teacher, base = trained.get("teacher_model", "?"), trained.get("student_model", "?")
    distilled = key in choice.KD_KEYS
    what = (f"a student distilled from **{teacher}** into **{base}** by FirstSight" if distilled else
            f"a student fine-tuned from **{base}** on the labelled questions alone (no teacher) by FirstSight"
            if key == "sft_student" else f"the model `{key}` of a FirstSight run (teacher **{teacher}**)")
    c, verdict = metrics.get("choice"), choice.kd_verdict(metrics.get("models", {}), metrics.get("split", "test"))
    if c and c["model"] == key:
        why = f"This is the student to trust, chosen on the {c['split']} split: {c['reason']}"
    elif c:
        why = (f"Published as asked (`publish_model: {key}`), not as the student to trust: 03 chose "
               f"`{c['model']}` on the {c['split']} split. {c['reason']}")
    else:
        why = "No student was chosen on a validation split in this run." + (
            " " + choice.verdict_text(verdict) if verdict else "")
    if distilled and not (verdict or {}).get("kd_helped"):
        why += " Distillation is not shown to have helped this model beat fine-tuning alone."
    return {"distilled": distilled, "what": what, "why": why}


def _dataset_ids(metrics: dict) -> list[str]:
    d = metrics.get("dataset", {})
    return [d.get("id") or d.get("name", "FirstSight egocentric VQA")]


def family_tag(trained: dict, model_key: str) -> str:
    """The published model's family as a Hub tag (``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``, ``qwen3.5``), read from
    its checkpoint's config.json (``fslib.engine.families``); the student's starting weights' where the key is a
    quantised variant's, and ``qwen-vl`` where neither is readable."""
    from fslib.engine import families

    models = trained.get("models", {})
    for key in (model_key, "student", "base_student"):
        config = Path(str(models.get(key, {}).get("path", ""))) / "config.json"
        if config.is_file():
            fam = families.FAMILIES.get(json.loads(config.read_text()).get("model_type"))
            if fam is not None:
                return fam.name
    return "qwen-vl"


def build_card(metrics: dict, trained: dict, *, model_key: str, model_name: str, repo_id: str = "",
               license: str = "apache-2.0", quantized_from: str = ""):
    """A ``ModelCard`` for ``metrics["models"][model_key]``, its siblings shown for comparison.

    ``trained`` is 02's ``training.json``. ``quantized_from`` names the published full-precision student when this
    card is for one of its INT8/NF4 variants.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if model_key not in metrics.get("models", {}):
        raise KeyError(f"{model_key!r} is not a model in metrics.json; measured: {sorted(metrics.get('models', {}))}")
    own = metrics["models"][model_key].get("variant_of") or model_key  # a quantised variant: its full-precision row
    told = provenance_text(metrics, trained, own)
    embedded = bool(trained.get("embedded"))
    # Only a Hub id can be a base_model: an embedded (offline-built) student or an unpushed parent is named in the
    # text but not in the metadata.
    if quantized_from:
        base = quantized_from if "/" in quantized_from else None
    else:
        base = None if embedded else trained.get("student_model")
    data = ModelCardData(
        language="en", license=license, library_name="transformers", pipeline_tag="image-text-to-text",
        tags=(["knowledge-distillation"] if told["distilled"] else []) + [family_tag(trained, model_key), "egocentric",
                                                                          "firstsight"]
        + (["bitsandbytes"] if quantized_from else []),
        base_model=base, base_model_relation=("quantized" if quantized_from else "finetune") if base else None,
        datasets=_dataset_ids(metrics), model_name=model_name, eval_results=eval_results(metrics, model_key))
    header, rows = formatting.table_rows(metrics, [k for k, _, _ in formatting.METRICS])
    training = {k: json.dumps(v) for k, v in
                (trained.get("training_by_model", {}).get(own) or trained.get("training", {})).items()}
    env = metrics.get("environment", {})
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=model_name, model_key=model_key,
        teacher=trained.get("teacher_model", "?"), base_model=trained.get("student_model", "?"), embedded=embedded,
        quantized_from=quantized_from, what=told["what"], why=told["why"], distilled=told["distilled"],
        split=metrics.get("split", "?"), n_eval=metrics.get("n_eval", "?"),
        results_table=formatting.markdown_table(header, rows), protocols=protocols(metrics),
        protocol_summary=metrics.get("protocol", {}).get("summary", ""),
        training_table=formatting.markdown_table(["parameter", "value"], [[f"`{k}`", f"`{v}`"] for k, v in training.items()]),
        best_val_loss=trained.get("best_val_loss", {}), load_path=repo_id or f"path/to/{model_name}",
        git_sha=env.get("git_sha", "unknown"), versions=env.get("versions", {}),
        params_json=json.dumps(metrics.get("params", {}), indent=2, default=str),
        metrics_json=json.dumps({k: v for k, v in metrics.items() if k not in ("params",)}, indent=2, default=str))


def card_numbers(card_text: str) -> dict[tuple[str, str], str]:
    """``{(model, label): cell}`` from the card's results table, for checking the card against metrics.json."""
    lines = [ln for ln in card_text.split("## Results", 1)[1].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out.update({(cells[0], h): c for h, c in zip(header[2:], cells[2:])})
    return out


def eval_table(model_card):
    """The card's model-index as the Hub will show it: metric, value, protocol (a pandas table)."""
    import pandas as pd

    # Values as the card stores them (exactly metrics.json's), not rounded by pandas' float display.
    return pd.DataFrame([{"metric": r.metric_name, "key": r.metric_type, "value": str(r.metric_value),
                          "measured as": r.metric_config} for r in model_card.data.eval_results])
