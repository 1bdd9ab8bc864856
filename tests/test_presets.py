"""Real-size presets: exact parameter counts built on the meta device (nothing allocated), and the tiny path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fslib.engine import models, randominit
from fslib.world import embedded, synth

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset, total, vocab", [("qwen2-vl-2b", 2_208_985_600, 151_936),
                                                  ("qwen2-vl-7b", 8_291_375_616, 152_064)])
def test_real_sizes_match_the_published_counts(preset, total, vocab):
    cfg = randominit.config(preset)
    counts = randominit.meta_counts(cfg)
    assert counts["params"] == total == randominit.PRESETS[preset]["params"]
    assert cfg.get_text_config().vocab_size == vocab
    # The vision tower: 32 blocks of width 1280 and a merger into the text width (675.8M for the 7B).
    assert 665e6 < counts["params_vision"] < 676e6
    assert counts["params_language"] == total - counts["params_vision"]


@pytest.mark.parametrize("shallow, real", [("qwen2-vl-2b-shallow", "qwen2-vl-2b"),
                                           ("qwen2-vl-7b-shallow", "qwen2-vl-7b")])
def test_shallow_presets_keep_every_real_width_with_two_layers(shallow, real):
    text, vision = randominit.config(shallow).to_dict(), randominit.config(real).to_dict()
    depths = {("text_config", "num_hidden_layers"): (2, 28), ("vision_config", "depth"): (2, 32)}
    for (part, key), (few, many) in depths.items():
        assert (text[part].pop(key), vision[part].pop(key)) == (few, many)
    assert (text["text_config"].pop("layer_types"), vision["text_config"].pop("layer_types")) == (
        ["full_attention"] * 2, ["full_attention"] * 28)
    assert text == vision  # widths, heads, kv heads, vocab, ties, rope, token ids: all the real ones
    counts = randominit.meta_counts(shallow)
    assert counts["params"] == randominit.PRESETS[shallow]["params"]
    # What 26 text layers and 30 vision blocks fewer leave: the real embedding (+ untied head) and final norm, and the
    # real patch embedding and merger.
    full, p = randominit.meta_counts(real), randominit.PRESETS[real]
    per_layer, rest = divmod(full["params_language"] - counts["params_language"], 26)
    assert rest == 0
    embeddings = p["vocab"] * p["hidden"] * (1 if p["tie"] else 2)
    assert counts["params_language"] - 2 * per_layer == embeddings + p["hidden"]
    per_block = (full["params_vision"] - counts["params_vision"]) / 30
    assert per_block == 19_677_440  # 2 LayerNorms, qkv, proj and the 4x MLP at width 1280, with biases


def test_2b_ties_its_embeddings_and_7b_does_not():
    from transformers import Qwen2VLForConditionalGeneration

    for preset, tied in (("qwen2-vl-2b", True), ("qwen2-vl-7b", False)):
        with torch.device("meta"):
            model = Qwen2VLForConditionalGeneration(randominit.config(preset))
        same = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert same is tied, preset


def test_small_vocab_preset_needs_its_tokenizer_ids():
    with pytest.raises(ValueError, match="ids of its"):
        randominit.config("tiny")


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="random-init:qwen2-vl-2b"):
        randominit.preset_of("random-init:qwen2-vl-72b")


def test_resolve_writes_a_weightless_folder_that_loads_and_generates(tmp_path, pixels, small_splits):
    from fslib.engine import collate

    folder = embedded.resolve_model("random-init:tiny", tmp_path, corpus_fn=synth.corpus_text)
    assert randominit.is_random_folder(folder) and not list(Path(folder).glob("*.safetensors"))
    assert json.loads((Path(folder) / randominit.MARKER).read_text())["weights"] == "random"
    processor = models.load_processor(folder)
    assert processor.image_processor.size["longest_edge"] == randominit.REAL_MAX_PIXELS
    model = randominit.load(folder, dtype="float32")
    inputs = collate.VQACollator(processor, pixels, train=False)(small_splits["test"][:1])["inputs"]
    out = model.generate(**inputs, min_new_tokens=3, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_real_presets_get_the_real_tokenizer_and_never_call_the_tiny_one(tmp_path):
    from PIL import Image

    def tiny_processor(**pixels):
        raise AssertionError("a real-width preset built the embedded tiny processor")

    folder = randominit.resolve("random-init:cpu-medium", tmp_path, tiny_processor)
    assert json.loads((folder / randominit.MARKER).read_text())["tokenizer"].startswith("qwen2-vl")
    cfg = json.loads((folder / "config.json").read_text())
    assert {k: cfg[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                "vision_end_token_id")} == {k: randominit.REAL_TOKEN_IDS[k] for k in (
        "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    processor = models.load_processor(folder)  # saved and read back as a checkpoint's processor is
    assert len(processor.tokenizer) == 151_657 and processor.tokenizer.eos_token_id == 151645
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cups?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(text=[text], images=[Image.new("RGB", (448, 448))], return_tensors="pt")["input_ids"][0]
    # The released processor's count: 11 system + 3 user header + 2 vision marks + 256 image + 4 text + 2 + 3.
    assert ids.shape[0] == 11 + 3 + 2 + 256 + 4 + 2 + 3
    model = randominit.load(folder)
    out = model.generate(**processor(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt"),
                         min_new_tokens=2, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == ids.shape[0] - 256 + 16 + 2  # a 112x112 image is 16 visual tokens


def test_a_folder_written_with_another_tokenizer_is_rewritten(tmp_path):
    folder = tmp_path / "random-init-qwen2-vl-2b-shallow"
    folder.mkdir()
    (folder / randominit.MARKER).write_text(json.dumps({"preset": "qwen2-vl-2b-shallow", "weights": "random"}))
    out = randominit.resolve("random-init:qwen2-vl-2b-shallow", tmp_path, None)
    assert out == folder and (folder / "tokenizer.json").exists()
    assert json.loads((folder / "config.json").read_text())["text_config"]["num_hidden_layers"] == 2


@pytest.mark.slow
def test_gpu_check_dry_run_covers_every_family_on_cpu(tmp_path):
    """The GPU script's own code path for all four families, on CPU with their tiny pairs: every section runs, writes
    its JSON, and the planner predicts each KD step (no peak is measured on a CPU)."""
    import time

    t0 = time.perf_counter()
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    elapsed = time.perf_counter() - t0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res.returncode == 0, report["errors"] or res.stderr[-2000:]
    families = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3.5")
    assert set(report["sections"]) == {"env"} | {f"{f}/{s}" for f in families for s in ("setup", "kd_step", "decode")}
    for f in families:
        step, decode = report["sections"][f"{f}/kd_step"], report["sections"][f"{f}/decode"]
        assert step["student_step_s"] > 0 and step["teacher_forward_s"] > 0 and step["predicted_bytes"] > 0
        assert step["peak_bytes"] is None  # measured on a GPU only
        assert decode["eager"]["decode_s_per_token"] > 0 and "static_compiled" not in decode  # compile: GPU only
    assert elapsed < 300, f"the dry run took {elapsed:.0f} s (target: under 5 minutes)"


def test_gpu_check_parses_its_arguments():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    args = gpu_check.parse_args(["--out", "/tmp/x"])
    assert args.device == "cuda" and args.presets == "real" and not args.no_compile
    assert gpu_check.presets_of("qwen3.5", "real") == ("qwen3.5-9b", "qwen3.5-4b")
    dry = gpu_check.parse_args(["--dry-run"])
    assert dry.device == "cpu" and dry.presets == "tiny" and dry.no_compile
    assert gpu_check.presets_of("qwen3-vl", dry.presets) == ("tiny-qwen3-vl-teacher", "tiny-qwen3-vl-student")


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "qwen3.5"])
def test_each_family_shallow_preset_keeps_the_real_widths(family):
    from fslib.engine import presets

    for name, p in presets.REAL.items():
        if p["family"] != family:
            continue
        real, shallow = randominit.config(name).to_dict(), randominit.config(f"{name}-shallow").to_dict()
        for part in ("text_config", "vision_config"):
            for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                        "head_dim", "out_hidden_size", "linear_num_value_heads"):
                assert real[part].get(key) == shallow[part].get(key), (name, part, key)
        assert (shallow["text_config"]["num_hidden_layers"], shallow["vision_config"]["depth"]) == (2, 2)
        if family == "qwen3.5":
            assert shallow["text_config"]["layer_types"] == ["linear_attention", "full_attention"]
            assert real["text_config"]["layer_types"][:4] == ["linear_attention"] * 3 + ["full_attention"]
