"""A Hub-ready model folder: safetensors weights, processor, generation config and a card built from metrics.json."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from fslib.config import write_json

TEMPLATE = Path(__file__).parent / "templates" / "modelcard.md"


def build_card(metrics: dict, *, model_key: str, base_model: str, teacher: str, training: dict, load_path: str,
               embedded: bool, model_name: str):
    """A ``huggingface_hub.ModelCard`` whose numbers all come from ``metrics`` (03's metrics.json)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    m = metrics["models"][model_key]
    dataset = metrics.get("dataset", {})
    results = [EvalResult(task_type="visual-question-answering", dataset_type=dataset.get("type", "synthetic"),
                          dataset_name=dataset.get("name", "FirstSight synthetic egocentric VQA"),
                          dataset_split=metrics["split"], metric_type=key, metric_value=float(m[key]),
                          metric_name=name)
               for key, name in (("exact_match", "Exact match"), ("f1", "Token F1"), ("latency_s", "Latency (s)"))]
    data = ModelCardData(language="en", license="apache-2.0", library_name="transformers",
                         pipeline_tag="image-text-to-text", tags=["knowledge-distillation", "qwen2-vl", "egocentric"],
                         base_model=None if embedded else base_model, model_name=model_name, eval_results=results)
    rows = [{"name": k, **v} for k, v in metrics["models"].items()]
    protocol = metrics.get("protocol", {})
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=model_name, teacher=teacher, base_model=base_model,
        embedded=embedded, split=metrics["split"], n_eval=metrics["n_eval"], rows=rows, training=training,
        new_tokens=protocol.get("new_tokens"), protocol=protocol.get("summary", ""), load_path=load_path)


def export_folder(checkpoint: str | Path, out: str | Path, card, *, params: dict, metrics: dict) -> Path:
    """Copy a ``save_pretrained`` checkpoint (weights, config, processor) and add the card, params and metrics."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not any(checkpoint.glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint}: no safetensors weights; run 02_distill first")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    card.save(tmp / "README.md")
    write_json(tmp / "firstsight_params.json", params)
    write_json(tmp / "firstsight_metrics.json", metrics)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


_CHECK = r"""
import sys
from PIL import Image
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText, AutoProcessor
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path)
processor = AutoProcessor.from_pretrained(path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What am I holding?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[text], images=[Image.open(sys.argv[2]).convert("RGB")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
ModelCard.load(path + "/README.md")
print("ANSWER:", repr(answer))
"""


def validate_folder(folder: str | Path, image_path: str | Path) -> str:
    """Load the folder in a *fresh* process with the Auto classes, answer one image question, parse the card."""
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _CHECK, str(folder), str(image_path)], capture_output=True,
                         text=True, timeout=600, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{folder} failed to load and answer in a fresh process:\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def push(folder: str | Path, *, repo_id: str, private: bool, commit_message: str) -> str:
    """Upload every file of the folder. The token comes from HF_TOKEN or the stored login, never from params."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    if not repo_id:
        raise ValueError("push is true but repo_id is empty; set repo_id: <user>/<model> in the params file")
    if get_token() is None:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (never put it in params); "
                              f"the folder {folder} is complete and can be pushed later")
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return str(info)


def sample_image(data_dir: str | Path) -> Path:
    """The first test image of the run's dataset, written as PNG for the fresh-process check."""
    from datasets import load_from_disk

    ds = load_from_disk(str(data_dir))
    split = ds["test"] if "test" in ds else next(iter(ds.values()))
    row = next(r for r in split if r.get("image") is not None)
    path = Path(data_dir).parent / "sample_image.png"
    row["image"].save(path)
    return path
