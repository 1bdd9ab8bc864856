"""A Hub-ready model folder, its check in a fresh process, optional INT8/NF4 variants, and a push only when asked.

The folder holds safetensors weights (sharded above ``max_shard_size``), ``config.json``, ``generation_config.json``,
the processor with its chat template, ``README.md`` (the card, see ``fslib.publishing.card``) and the run's params and metrics.
The Hub token is never a parameter: papermill writes parameters into the executed notebook and the report. It comes
from ``HF_TOKEN`` or the stored ``hf auth login``, and never appears in what is written or raised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fslib.core.fsio import write_json

QUANT_METHODS = ("int8", "nf4")


def _replace_dir(tmp: Path, out: Path) -> Path:
    """Swap a finished folder into place, so a half-written folder is never mistaken for a model."""
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def save_hub_folder(checkpoint: str | Path, out: str | Path, card, *, params: dict, metrics: dict,
                    max_shard_size: str = "5GB") -> Path:
    """Re-save a checkpoint through the Auto classes (shards, index, generation config, processor) and add the card."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    checkpoint, out = Path(checkpoint), Path(out)
    if not any(checkpoint.glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint}: no safetensors weights; run 02_distill first")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype="auto", use_safetensors=True)
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    del model
    AutoProcessor.from_pretrained(checkpoint).save_pretrained(tmp)
    _finish(tmp, card, params, metrics)
    return _replace_dir(tmp, out)


def _finish(folder: Path, card, params: dict, metrics: dict) -> None:
    card.save(folder / "README.md")
    write_json(folder / "firstsight_params.json", params)
    write_json(folder / "firstsight_metrics.json", metrics)
    missing = missing_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} is incomplete, missing: {missing}")


def missing_files(folder: str | Path) -> list[str]:
    """What a loadable, documented Hub folder lacks: weights (every shard of the index), config, generation
    config, processor, chat template, tokenizer, card. Empty when complete."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    missing = [f for f in ("config.json", "generation_config.json", "README.md", "tokenizer.json") if f not in names]
    if not names & {"processor_config.json", "preprocessor_config.json"}:
        missing.append("processor_config.json")
    tok_config = folder / "tokenizer_config.json"
    if not (names & {"chat_template.jinja", "chat_template.json"}
            or tok_config.exists() and "chat_template" in tok_config.read_text()):
        missing.append("chat_template.jinja")
    if "model.safetensors.index.json" in names:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        missing += sorted(set(index["weight_map"].values()) - names)
    elif "model.safetensors" not in names:
        missing.append("model.safetensors")
    return missing


def manifest(folder: str | Path):
    """The folder's files and sizes, for the notebook."""
    import pandas as pd

    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return pd.DataFrame({"file": [str(p.relative_to(folder)) for p in files],
                         "MiB": [round(p.stat().st_size / 2**20, 3) for p in files]})


_CHECK = r"""
import sys
from PIL import Image
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText, AutoProcessor
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path)
processor = AutoProcessor.from_pretrained(path)
assert processor.chat_template, "the processor has no chat template"
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What am I holding?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[Image.open(sys.argv[2]).convert("RGB")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
new = out[:, inputs["input_ids"].shape[1]:]
assert new.shape[1] > 0, "generated no token"
card = ModelCard.load(path + "/README.md")
assert card.data.eval_results, "the card has no model-index results"
print("ANSWER:", repr(processor.batch_decode(new, skip_special_tokens=True)[0]), "tokens:", new.shape[1])
"""


def validate_folder(folder: str | Path, image_path: str | Path) -> str:
    """Load the folder in a *fresh* process with the Auto classes, answer one image question, parse the card."""
    missing = missing_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} is incomplete, missing: {missing}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _CHECK, str(folder), str(image_path)], capture_output=True,
                         text=True, timeout=1800, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{folder} failed to load and answer in a fresh process:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def export_quantized(checkpoint: str | Path, out: str | Path, method: str, *, dtype: str = "float32") -> Path:
    """Save a bitsandbytes ``int8`` or ``nf4`` copy of a checkpoint (weights, config with its quantization_config,
    processor) that ``from_pretrained`` loads as is. Quantising is deterministic, so this is the model 03 measured
    when it loaded the same checkpoint with the same method and compute dtype."""
    from transformers import AutoProcessor

    from fslib.engine.models import load_model

    if method not in QUANT_METHODS:
        raise ValueError(f"method {method!r} is not one of {QUANT_METHODS}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(str(checkpoint), dtype=dtype, quantization=method, frozen=True)
    model.save_pretrained(tmp)
    del model
    AutoProcessor.from_pretrained(checkpoint).save_pretrained(tmp)
    return _replace_dir(tmp, out)


def measured_variants(run_dir: str | Path, metrics: dict, model_key: str) -> tuple[dict[str, Path], list[str]]:
    """The INT8/NF4 variants of ``model_key`` that 03 measured, each as a saved folder under ``<run>/exports/``
    (written here if 03 did not save one), and the names of exported folders 03 did not measure: those are not
    published, since a card without numbers is what this project refuses."""
    models, exports = metrics.get("models", {}), Path(run_dir) / "exports"
    source = models.get(model_key, {}).get("path")
    found = {}
    for name, m in models.items():
        if m.get("variant_of") != model_key or m.get("quantization") not in QUANT_METHODS:
            continue
        folder, checkpoint = exports / name, m.get("path") or source
        if not _newer_than(folder, checkpoint):  # missing, or left from before the checkpoint was retrained
            export_quantized(checkpoint, folder, m["quantization"], dtype=m.get("dtype", "float32"))
        found[name] = folder
    unmeasured = sorted(p.name for p in exports.glob("*") if (p / "config.json").exists() and p.name not in models)
    return found, unmeasured


def _newer_than(folder: Path, checkpoint: str | Path) -> bool:
    """Whether ``folder`` holds weights saved after every weight file of ``checkpoint``."""
    mine = [p.stat().st_mtime for p in Path(folder).glob("*.safetensors")]
    theirs = [p.stat().st_mtime for p in Path(checkpoint).glob("*.safetensors")]
    return bool(mine and theirs) and min(mine) > max(theirs) and (Path(folder) / "config.json").exists()


def save_export_folder(export: str | Path, out: str | Path, card, *, params: dict, metrics: dict) -> Path:
    """A quantised variant's Hub folder: its files as saved (re-saving bitsandbytes weights needs their device),
    plus the card, params and metrics."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    _finish(tmp, card, params, metrics)
    return _replace_dir(tmp, out)


def publish_variants(run_dir: str | Path, metrics: dict, trained: dict, *, model_key: str, model_name: str,
                     repo_id: str, license: str, image: str | Path) -> dict:
    """A Hub folder ``<run>/hub-<name>`` for each measured INT8/NF4 variant of ``model_key``, checked in a fresh
    process like the main folder."""
    from fslib.publishing.card import build_card

    exports, unmeasured = measured_variants(run_dir, metrics, model_key)
    published = {}
    for name, path in exports.items():
        card = build_card(metrics, trained, model_key=name, model_name=f"{model_name}-{name}",
                          repo_id=variant_repo(repo_id, name), license=license, quantized_from=repo_id or model_name)
        folder = save_export_folder(path, Path(run_dir) / f"hub-{name}", card, params=metrics.get("params", {}),
                                    metrics=metrics)
        published[name] = {"folder": str(folder), "check": validate_folder(folder, image)}
    return {"published": published, "not measured, so not published": unmeasured}


def variant_repo(repo_id: str, name: str) -> str:
    return f"{repo_id}-{name}" if repo_id else ""


class PushError(RuntimeError):
    """The upload could not happen; the folder on disk is complete and can be pushed later."""


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def push(folder: str | Path, *, repo_id: str, private: bool, commit_message: str) -> str:
    """Create the repo if needed and upload every file of the folder (shards included) with ``upload_folder``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_token

    if not repo_id or "/" not in repo_id:
        raise ValueError(f"push is true but repo_id is {repo_id!r}; set repo_id: <user>/<model> in the params file")
    missing = missing_files(folder)
    if missing:
        raise PushError(f"{folder} is incomplete ({missing}); nothing uploaded")
    token = get_token()
    if token is None:
        raise PushError("no Hugging Face token: set the HF_TOKEN environment variable or run `hf auth login` "
                        f"(never put a token in params). Nothing uploaded; {folder} is complete and can be pushed "
                        f"later with `hf upload {repo_id} {folder}`")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise PushError(_scrub(f"the Hub refused the upload to {repo_id} (HTTP {status}: {e}). Check the token's "
                               f"write access. {folder} is complete", token)) from None
    except Exception as e:  # no network, DNS, proxy, offline mode: the cause is in the message, not the token
        raise PushError(_scrub(f"could not reach the Hub to push {repo_id} ({type(e).__name__}: {e}). "
                               f"{folder} is complete; push it later with `hf upload {repo_id} {folder}`",
                               token)) from None
    return str(getattr(info, "commit_url", info))


def push_all(folders: dict[str, str | Path], *, private: bool, commit_message: str) -> dict[str, str]:
    """``{repo_id: folder}`` → ``{repo_id: commit url}``; stops at the first failure, naming what was pushed."""
    done = {}
    for repo_id, folder in folders.items():
        try:
            done[repo_id] = push(folder, repo_id=repo_id, private=private, commit_message=commit_message)
        except PushError as e:
            raise PushError(f"{e}\nAlready pushed: {sorted(done) or 'nothing'}") from None
    return done


def sample_image(data_dir: str | Path) -> Path:
    """The first test image of the run's dataset, written as PNG for the fresh-process check."""
    from datasets import load_from_disk

    ds = load_from_disk(str(data_dir))
    split = ds["test"] if "test" in ds else next(iter(ds.values()))
    row = next(r for r in split if r.get("image") is not None)
    path = Path(data_dir).parent / "sample_image.png"
    row["image"].save(path)
    return path
