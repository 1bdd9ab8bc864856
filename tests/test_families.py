"""Every Qwen-VL family through the pipeline on CPU, each with a tiny random-initialised pair of its real config,
model and processor classes and a small tokenizer with its special tokens (``fslib.engine.presets``):

* one papermill run of 01 -> 04 per family (``make report``'s path): 01's data (images and clips), 02's seq-KD answers,
  the teacher cache and the KD student trained from it, 03's generation speed benchmark, 04's Hub folder, loaded with
  the stock Auto classes in a fresh process;
* on that run's data, 02's training code in-process: live KD (full and chunked, equal losses), LoRA on the family's
  targets, and a training interrupted and resumed that ends with the uninterrupted run's weights;
* fast checks: DeepStack features through the vision memo, Qwen2.5-VL's padded vocabulary, a mismatched pair refused.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml

from fslib.engine import collate, families, losspaths, models, randominit, visionmemo
from fslib.world import embedded, synth

FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
# The shortest run that exercises every stage: seq-KD answers (4 unlabelled questions), the teacher cache, one KD
# student epoch, 03's speed benchmark at batch 1 (accuracy is not computed for random weights), 04's Hub folder.
RUN = {"prepare_teacher": False, "teacher_check": False, "n_train": 8, "n_val": 2, "n_test": 2, "n_ood": 1,
       "n_unlabelled": 4, "epochs": 1, "batch_size": 4, "grad_accum": 1, "teacher_cache": True,
       "train_sft_baseline": False, "train_kd_labelled_baseline": False, "video_fraction": 0.34,
       "bench_repeats": 1, "bench_warmup": 1, "bench_batch_sizes": [1], "bench_variants": [], "bench_new_tokens": 4,
       "eval_batch_size": 8, "save_every": 1}


def family_params(family: str, root: Path) -> dict:
    return {"run_name": f"family-{family}", "reports_dir": str(root), **RUN,
            "teacher_model": f"random-init:tiny-{family}-teacher", "student_model": f"random-init:tiny-{family}-student"}


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tmp_path_factory):
    from fslib.stages import pipeline

    root = tmp_path_factory.mktemp(f"family-{request.param}")
    pfile = root / "params.yaml"
    pfile.write_text(yaml.safe_dump(family_params(request.param, root)))
    pipeline.run(pfile)
    return request.param, root / f"family-{request.param}"


@pytest.mark.slow
def test_each_family_runs_01_to_04(family_run):
    family, run = family_run
    for stage in ("01_data", "02_distill", "03_evaluate", "04_publish"):
        nb = json.loads((run / "notebooks" / f"{stage}.ipynb").read_text())
        assert not nb["metadata"]["papermill"].get("exception"), stage
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["splits"]["train"]["visual_tokens_max"] > 0
    answered = json.loads((run / "seqkd" / "answers.json").read_text())["answers"]
    assert len(answered) == 4 and all(0 < a["confidence"] <= 1 for a in answered.values())
    assert any((run / "teacher_cache").iterdir())
    trainings = json.loads((run / "training.json").read_text())["trainings"]
    assert trainings["kd_student"]["teacher"]["cache_dir"]
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("teacher", "student"):
        assert metrics["models"][name]["decode_s_per_token"] > 0
    hub = json.loads((run / "hub" / "config.json").read_text())
    assert hub["model_type"] == families.get(family).model_type
    assert "ANSWER:" in (run / "notebooks" / "04_publish.ipynb").read_text()  # loaded by Auto classes, generated


def _job(run: Path, family: str, **changes):
    from fslib.core import config as core_config
    from fslib.stages import distill

    P = {**core_config.default_params(), **family_params(family, run.parent), **changes}
    teacher = embedded.resolve_model(P["teacher_model"], run / "embedded")
    student = embedded.resolve_model(P["student_model"], run / "embedded")
    return distill.student_trainings(P, run, student_path=student, teacher_path=teacher, cache_dir=None,
                                     extra_train_dirs=[], n_labelled=P["n_train"])["kd_student"]


@pytest.mark.slow
def test_each_family_live_and_chunked_kd_lora_and_resume(family_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from fslib.training import jobs, loop

    family, run = family_run
    full = _job(run, family, epochs=2, batch_size=2, grad_accum=2)  # 4 optimizer steps, a checkpoint after each
    histories = {}
    one = {"epochs": 1}  # the first step's loss is what the chunked path is compared on; LoRA needs one epoch
    for name, cfg in {"full": full, "chunked": full.but(loss={"kd_impl": "chunked"}, optim=one),
                      "lora": full.but(model={"lora": True}, optim=one)}.items():
        histories[name] = jobs.run(cfg.but(out_dir=str(tmp_path / name)))
    first = {k: h["steps"][0]["loss"] for k, h in histories.items()}
    assert first["chunked"] == pytest.approx(first["full"], rel=1e-4)  # the same KD loss by another path
    assert all(torch.isfinite(torch.tensor(h["steps"][-1]["loss"])) for h in histories.values())

    real = loop._optimizer_step
    def interrupted(run_state, group):
        if run_state.step + 1 == 3:
            raise KeyboardInterrupt  # as if the process stopped before step 3, after step 2's checkpoint
        return real(run_state, group)
    monkeypatch.setattr(loop, "_optimizer_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        jobs.run(full.but(out_dir=str(tmp_path / "resumed")))
    monkeypatch.setattr(loop, "_optimizer_step", real)
    jobs.run(full.but(out_dir=str(tmp_path / "resumed"), runtime={"resume": True}))
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    # In this process (not a fresh single-threaded one, as tests/test_resume.py's bit-exact check) the resumed steps
    # round differently in the last bits (seen: 7e-9 on Qwen3.5's weights, 6e-8 on a loss); a resume from the wrong
    # step, data position or optimizer state would differ by orders of magnitude more.
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    losses = [[s["loss"] for s in json.loads((tmp_path / n / "training_history.json").read_text())["steps"]]
              for n in ("full", "resumed")]
    assert len(losses[0]) == len(losses[1]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-6)


# --- fast checks on the tiny pairs (no pipeline run) ---

@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {f: {r: embedded.resolve_model(f"random-init:tiny-{f}-{r}", root, corpus_fn=synth.corpus_text)
                for r in ("teacher", "student")} for f in FAMILIES}


@pytest.fixture(scope="module")
def records():
    splits = synth.build_synthetic(seed=5, n_train=4, n_val=1, n_test=1, n_ood=1, image_size=112,
                                   video_fraction=0.5, video_frames=4)
    return splits["train"][:4]


def _batch(folder, records, pixels, train=True):
    return collate.VQACollator(models.load_processor(folder), pixels, train=train)(records)


def test_each_tiny_pair_has_its_family_classes_and_processor(pairs, records, pixels):
    for family, folders in pairs.items():
        fam = families.get(family)
        proc = models.load_processor(folders["student"])
        assert type(proc).__name__ == fam.processor_class and families.of_processor(proc) is fam
        model = models.load_model(folders["teacher"])
        assert type(model).__name__ == fam.model_class
        batch = _batch(folders["student"], records, pixels)
        assert batch["inputs"]["pixel_values_videos"] is not None and batch["inputs"]["pixel_values"] is not None
        # the answer and its <|im_end|> only: the header (Qwen3.5: with its empty <think> block) is not scored
        tok = proc.tokenizer
        answer = [t for t in batch["labels"][0].tolist() if t != -100]
        assert tok.decode(answer[:-1]).strip() == records[0]["answer"]


def test_qwen3_vl_videos_carry_timestamps(pairs, records, pixels):
    batch = _batch(pairs["qwen3-vl"]["student"], records, pixels)
    tok = models.load_processor(pairs["qwen3-vl"]["student"]).tokenizer
    video_row = next(i for i, r in enumerate(records) if r.get("media") == "video")
    assert "seconds>" in tok.decode(batch["inputs"]["input_ids"][video_row])


def test_deepstack_features_through_the_vision_memo_give_identical_losses(pairs, records, pixels):
    model = models.load_model(pairs["qwen3-vl"]["student"], frozen=True)
    assert model.config.vision_config.deepstack_visual_indexes
    batch = _batch(pairs["qwen3-vl"]["student"], records, pixels)
    plain = model(**batch["inputs"], labels=batch["labels"]).loss
    memo = visionmemo.install(model, 2**30)
    first = model(**batch["inputs"], labels=batch["labels"]).loss  # misses: the tower runs and its output is kept
    second = model(**batch["inputs"], labels=batch["labels"]).loss  # hits: pooled and DeepStack features from memo
    assert memo.stats()["hits"] == len(records) and memo.stats()["misses"] == len(records)
    assert torch.equal(plain, first) and torch.equal(plain, second)
    # each item keeps its pooled tokens and its rows of every DeepStack layer
    assert {len(v) for v in memo.store.values()} == {1 + len(model.config.vision_config.deepstack_visual_indexes)}
    visionmemo.remove(model)


def test_qwen2_5_vl_padded_vocabulary_is_cut_to_the_students(pairs, records, pixels):
    from fslib.engine import kd

    teacher = models.load_model(pairs["qwen2.5-vl"]["teacher"], frozen=True)
    student = models.load_model(pairs["qwen2.5-vl"]["student"])
    v_t, v_s = teacher.config.text_config.vocab_size, student.config.text_config.vocab_size
    assert v_t == v_s + 128  # as Qwen2.5-VL-7B's 152,064 rows over the 3B's 151,936
    assert randominit.PRESETS["qwen2.5-vl-7b"]["vocab"] - randominit.PRESETS["qwen2.5-vl-3b"]["vocab"] == 128
    batch = _batch(pairs["qwen2.5-vl"]["student"], records, pixels)
    spec = losspaths.LossConfig()
    full = losspaths.batch_loss(student, teacher, batch, loss=spec, device="cpu")
    chunked = losspaths.batch_loss(student, teacher, batch, loss=losspaths.LossConfig(kd_impl="chunked"), device="cpu")
    assert torch.allclose(full.loss, chunked.loss, rtol=1e-4)
    # the same value with the teacher's logits cut to the student's rows by hand
    keep = losspaths.answer_positions(batch["labels"])
    s_seq, labels = losspaths._as_sequence(student(**batch["inputs"], logits_to_keep=keep).logits, batch["labels"])
    with torch.no_grad():
        t_seq, _ = losspaths._as_sequence(teacher(**batch["inputs"], logits_to_keep=keep).logits, batch["labels"])
    by_hand = kd.kd_loss(s_seq, t_seq[..., :v_s], labels, **spec.kd_kwargs())
    assert torch.allclose(full.loss, by_hand.loss, rtol=1e-5)


def test_a_teacher_of_another_family_is_refused_naming_what_differs(pairs):
    t = models.load_processor(pairs["qwen3-vl"]["teacher"])
    for other in ("qwen2.5-vl", "qwen3.5"):
        with pytest.raises(collate.ProcessorMismatchError, match=f"model families differ: teacher qwen3-vl, student "
                                                                 f"{other}"):
            collate.check_processors_agree(t, models.load_processor(pairs[other]["student"]))
    collate.check_processors_agree(t, models.load_processor(pairs["qwen3-vl"]["student"]))


def test_lora_targets_the_language_model_only(pairs):
    from fslib.engine import adapters

    for family, folders in pairs.items():
        model = adapters.prepare(models.load_model(folders["student"]), lora=True, lora_r=4)
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
        assert adapted and all(".language_model." in n and ".visual." not in n for n in adapted), family
        kinds = {n.rsplit(".", 1)[-1] for n in adapted}
        assert kinds == set(families.get(family).lora_targets), family  # Qwen3.5: its Gated-DeltaNet projections too


@pytest.mark.parametrize("family, ids", [
    ("qwen2.5-vl", {"<|im_start|>": 151644, "<|image_pad|>": 151655, "<|file_sep|>": 151664}),
    ("qwen3-vl", {"<|video_pad|>": 151656, "<think>": 151667, "</think>": 151668}),
    ("qwen3.5", {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
                 "<|image_pad|>": 248056, "<|video_pad|>": 248057})])
def test_real_tokenizers_give_the_released_ids(family, ids):
    from fslib.engine import qwentok

    tok = qwentok.real_tokenizer(family)
    assert {t: tok.convert_tokens_to_ids(t) for t in ids} == ids
    assert randominit.real_token_ids(family)["image_token_id"] == ids.get("<|image_pad|>", 151655)
    if family != "qwen3.5":  # Qwen2's ranks: the ids of tests/test_qwen_tokenizer.py
        assert tok("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]


def test_readme_families_block_is_generated_from_the_json():
    from fslib.reporting import familyblock, readme

    if not familyblock.FAMILY_PLANS.exists():
        pytest.skip("no benchmarks/results/family_plans.json yet")
    assert readme.current_block(readme.README.read_text(), "families") == familyblock.family_block().rstrip(), \
        "README's families block is stale: run `make readme`"
