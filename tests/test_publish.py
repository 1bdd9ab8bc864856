"""The Hub folder, its model card, quantised exports and the push: complete, loadable, honest, and token-free."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import FAKE_HF_TOKEN
from huggingface_hub import ModelCard

from fslib.core import config
from fslib.evaluation import formatting
from fslib.publishing import card, hub


def fake_metrics(**student) -> dict:
    """A metrics.json as 03 writes it, with a few keys missing on purpose."""
    base = {"exact_match": 0.5, "exact_match_ci": [0.25, 0.75], "f1": 0.625, "rouge_l": 0.6, "bleu": 12.5,
            "params": 430208, "ttft_s": 0.0123, "decode_s_per_token": 0.00456, "latency_s": 0.05,
            "weights_bytes": 1720992, "peak_bytes": 1153523712, "throughput": {"1": 6.3}}
    return {"split": "test", "n_eval": 8, "dataset": {"type": "synthetic", "name": "FirstSight egocentric VQA"},
            "protocol": {"summary": "Each model alone; 8 new tokens.", "new_tokens": 8, "warmup": 1, "repeats": 2,
                         "batch_size": 1, "device": "cpu", "decoding": "greedy",
                         "memory": "peak RSS of the model's own process"},
            "models": {"teacher": {"role": "teacher", "exact_match": 0.75, "params": 1762016, "latency_s": 0.1},
                       "student": {"role": "KD student", **base, **student}},
            "params": {"run_name": "unit", "epochs": 1}, "environment": {"git_sha": "abc123", "versions": {}}}


TRAINED = {"teacher_model": "embedded:tiny-teacher", "student_model": "embedded:tiny-student", "embedded": True,
           "training": {"epochs": 1, "learning_rate": 0.002, "temperature": 3.0, "alpha": 0.7},
           "best_val_loss": {"kd_student": 1.5}}


def _parse(cell: str) -> float:
    return float(cell.split()[0].replace(",", ""))


def assert_card_matches(card_text: str, metrics: dict, model_key: str) -> None:
    """The model-index holds metrics.json's exact values; the results table prints every model's values."""
    parsed = ModelCard(card_text)
    results = parsed.data.eval_results
    m = metrics["models"][model_key]
    assert results, "no eval results in the card"
    for r in results:
        assert r.metric_value == m[r.metric_type], r.metric_type
    assert {r.metric_type for r in results} == {k for k, _, _ in formatting.METRICS if formatting.number(m.get(k)) is not None}
    table = card.card_numbers(card_text)
    for name, mm in metrics["models"].items():
        for key, label, kind in formatting.METRICS:
            if formatting.number(mm.get(key)) is None:
                continue
            value = mm[key] / 2**20 if kind == "bytes" else mm[key]
            tol = {"bytes": 0.05, "count": 0.5, "accuracy": 5e-4, "bleu": 5e-3}.get(kind, abs(value) * 1e-3)
            cell = table.get((name, label)) or table[(name, f"{label} [95% CI]")]
            assert _parse(cell) == pytest.approx(value, abs=tol), (name, key)
    if formatting.ci_bounds(m.get("exact_match_ci")):
        lo, hi = formatting.ci_bounds(m["exact_match_ci"])
        assert f"[{lo:.3f}, {hi:.3f}]" in table[(model_key, "exact match [95% CI]")]


def test_card_numbers_equal_metrics_and_missing_keys_are_skipped():
    metrics = fake_metrics()
    c = card.build_card(metrics, TRAINED, model_key="student", model_name="unit-student")
    assert_card_matches(str(c), metrics, "student")
    text = str(c)
    assert "throughput" not in {r.metric_type for r in c.data.eval_results}  # a dict is not one number
    assert "embedded tiny CPU configuration" in text and "How to load" in text and "Intended use" in text
    assert '"learning_rate"' not in text and "`learning_rate` | `0.002`" in text
    assert c.data.base_model is None  # an embedded model has no Hub id to name
    # Each group carries its protocol.
    configs = {r.metric_type: r.metric_config for r in c.data.eval_results}
    assert "greedy" in configs["exact_match"] and "8 new tokens" in configs["ttft_s"]
    assert "peak RSS" in configs["peak_bytes"]


def test_card_for_a_real_run_names_its_base_model():
    trained = {**TRAINED, "embedded": False, "student_model": "Qwen/Qwen2-VL-2B-Instruct"}
    c = card.build_card(fake_metrics(), trained, model_key="student", model_name="s", repo_id="me/s")
    assert c.data.base_model == "Qwen/Qwen2-VL-2B-Instruct" and c.data.base_model_relation == "finetune"
    assert 'from_pretrained("me/s")' in str(c)


def test_card_refuses_an_unmeasured_model():
    with pytest.raises(KeyError, match="not a model in metrics.json"):
        card.build_card(fake_metrics(), TRAINED, model_key="sft_student", model_name="x")


@pytest.fixture(scope="module")
def hub_folder(student_path, tmp_path_factory):
    metrics = fake_metrics()
    c = card.build_card(metrics, TRAINED, model_key="student", model_name="unit-student")
    out = tmp_path_factory.mktemp("hub") / "hub"
    # A small shard limit forces several safetensors shards and an index, as a real 2B student gets.
    return hub.save_hub_folder(student_path, out, c, params=metrics["params"], metrics=metrics,
                                   max_shard_size="300KB"), metrics


@pytest.mark.slow
def test_hub_folder_is_sharded_complete_and_loads_in_a_fresh_process(hub_folder, small_splits, tmp_path):
    folder, metrics = hub_folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((folder / s).exists() for s in shards)
    assert hub.missing_files(folder) == []
    assert json.loads((folder / "firstsight_metrics.json").read_text()) == metrics
    image = tmp_path / "q.png"
    small_splits["test"][0]["image"].save(image) if small_splits["test"][0].get("image") else \
        next(r for r in small_splits["test"] if r.get("image"))["image"].save(image)
    answer = hub.validate_folder(folder, image)
    assert answer.startswith("ANSWER:")
    assert_card_matches((folder / "README.md").read_text(), metrics, "student")
    assert ModelCard.load(folder / "README.md").data.eval_results


def test_missing_files_names_a_missing_shard(hub_folder, tmp_path):
    folder = shutil.copytree(hub_folder[0], tmp_path / "copy")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    (folder / "chat_template.jinja").unlink()
    assert set(hub.missing_files(folder)) == {shard.name, "chat_template.jinja"}
    with pytest.raises(hub.PushError, match="incomplete"):
        hub.push(folder, repo_id="me/x", private=True, commit_message="m")


def test_push_without_a_token_fails_clearly_and_keeps_the_folder(hub_folder, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login either
    monkeypatch.setattr("huggingface_hub.utils._auth._get_token_from_google_colab", lambda: None, raising=False)
    before = sorted(p.name for p in hub_folder[0].iterdir())
    with pytest.raises(hub.PushError, match="HF_TOKEN") as e:
        hub.push(hub_folder[0], repo_id="me/x", private=True, commit_message="m")
    assert "hf auth login" in str(e.value) and "complete" in str(e.value)
    assert sorted(p.name for p in hub_folder[0].iterdir()) == before


def test_push_with_no_network_fails_clearly_without_the_token(hub_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(hub.PushError, match="could not reach the Hub") as e:
        hub.push(hub_folder[0], repo_id="me/x", private=True, commit_message="m")
    assert FAKE_HF_TOKEN not in str(e.value)
    assert hub.missing_files(hub_folder[0]) == []


def test_push_uploads_every_file_with_upload_folder(hub_folder, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)) or "url")
    assert hub.push(hub_folder[0], repo_id="me/x", private=True, commit_message="msg") == "url"
    assert calls[0] == ("create", "me/x", {"private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["folder_path"] == str(hub_folder[0]) and upload["commit_message"] == "msg"
    assert not {"allow_patterns", "ignore_patterns", "token"} & set(upload)  # every file; token from the env


def test_push_refuses_a_repo_id_without_owner(hub_folder):
    with pytest.raises(ValueError, match="repo_id"):
        hub.push(hub_folder[0], repo_id="", private=True, commit_message="m")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_quantized_export_saves_and_loads(student_path, tmp_path, method):
    out = hub.export_quantized(student_path, tmp_path / method, method)
    assert hub.missing_files(out) == ["README.md"]  # the card is added when it is published
    code = ("import sys; from transformers import AutoModelForImageTextToText as M; "
            "q = M.from_pretrained(sys.argv[1]).config.quantization_config; "
            "print('int8' if q.load_in_8bit else q.bnb_4bit_quant_type if q.load_in_4bit else 'none')")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] == method


def test_quantized_export_refuses_unknown_method(student_path, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        hub.export_quantized(student_path, tmp_path / "x", "fp8")


def test_the_notebook_takes_no_token_parameter():
    declared = config.declared_params()
    assert not [k for k in declared if re.search(r"token|secret|password", k) and "04_publish" in declared[k]["notebooks"]]


def test_measured_variants_are_exported_once_and_redone_after_retraining(student_path, tmp_path):
    checkpoint = shutil.copytree(student_path, tmp_path / "ckpt")
    metrics = {"models": {"student": {"path": str(checkpoint)},
                          "student_nf4": {"path": str(checkpoint), "variant_of": "student", "quantization": "nf4",
                                          "dtype": "float32"},
                          "teacher_int8": {"path": "x", "variant_of": "teacher", "quantization": "int8"}}}
    (tmp_path / "run" / "exports" / "old_int4").mkdir(parents=True)
    (tmp_path / "run" / "exports" / "old_int4" / "config.json").write_text("{}")
    found, unmeasured = hub.measured_variants(tmp_path / "run", metrics, "student")
    assert list(found) == ["student_nf4"] and unmeasured == ["old_int4"]  # only the published model's variants
    weights = found["student_nf4"] / "model.safetensors"
    first = weights.stat().st_mtime_ns
    hub.measured_variants(tmp_path / "run", metrics, "student")
    assert weights.stat().st_mtime_ns == first  # reused: saved after the checkpoint
    os.utime(checkpoint / "model.safetensors")  # the student was retrained since
    hub.measured_variants(tmp_path / "run", metrics, "student")
    assert (found["student_nf4"] / "model.safetensors").stat().st_mtime_ns > first
