"""fslib.engine.visionmemo: a frozen tower's features reused across epochs, the same logits, never reused when unsafe."""

import pytest
import torch

from fslib.engine import adapters, collate, models, visionmemo
from fslib.training import loop, sampler
from fslib.training.config import loader_config


@pytest.fixture()
def batches(small_splits, processor, pixels):
    col = collate.VQACollator(processor, pixels, max_length=256)
    recs = small_splits["train"]
    return [col(recs[i:i + 4]) for i in range(0, 12, 4)]


def _tower_calls(model) -> list:
    calls = []
    model.model.visual.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


def test_second_pass_reuses_the_tower_output_and_logits_are_identical(student_path, batches):
    assert any("pixel_values_videos" in b["inputs"] for b in batches)  # both paths: images and clips
    ref = adapters.prepare(models.load_model(student_path), freeze_vision=True)
    expected = [ref(**b["inputs"]).logits for b in batches]
    model = adapters.prepare(models.load_model(student_path), freeze_vision=True)
    memo = visionmemo.install(model, 2**30)
    calls = _tower_calls(model)
    for _ in range(2):  # epoch 1 computes, epoch 2 reuses
        for b, want in zip(batches, expected):
            assert torch.equal(model(**b["inputs"]).logits, want)
    items = sum(len(b["inputs"]["image_grid_thw"]) + len(b["inputs"].get("video_grid_thw", [])) for b in batches)
    assert memo.stats()["misses"] == items and memo.stats()["hits"] == items
    assert len(calls) == 2 * len(batches) - sum("pixel_values_videos" not in b["inputs"] for b in batches)  # once each
    # Backward reaches the language model as before; the memo holds no graph.
    model(**batches[0]["inputs"]).logits.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert all(not t.requires_grad for item in memo.store.values() for t in item)
    stats = visionmemo.remove(model)
    assert stats["kept"] == items and "get_image_features" not in model.model.__dict__
    assert visionmemo.remove(model) is None


def test_a_changed_image_is_a_miss(student_path, batches):
    model = models.load_model(student_path, frozen=True)
    memo = visionmemo.install(model, 2**30)
    inputs = dict(batches[0]["inputs"])
    model(**inputs)
    inputs["pixel_values"] = inputs["pixel_values"].clone()
    inputs["pixel_values"][0, 0] += 1.0  # one value of the first image's first patch
    before = memo.stats()
    model(**inputs)
    after = memo.stats()
    assert after["misses"] - before["misses"] == 1
    assert after["hits"] - before["hits"] == len(inputs["image_grid_thw"]) - 1 + len(inputs.get("video_grid_thw", []))


def test_never_reused_while_the_tower_trains(student_path, batches):
    model = adapters.prepare(models.load_model(student_path), freeze_vision=False)
    memo = visionmemo.install(model, 2**30)
    calls = _tower_calls(model)
    for _ in range(2):
        model(**batches[0]["inputs"])
    assert memo.stats()["hits"] == 0 and memo.stats()["kept"] == 0 and len(calls) >= 2


def test_memory_limit_is_respected(student_path, batches):
    model = models.load_model(student_path, frozen=True)
    memo = visionmemo.install(model, 1)  # one byte: nothing fits
    for _ in range(2):
        model(**batches[0]["inputs"])
    s = memo.stats()
    assert s["kept"] == 0 and s["bytes"] == 0 and s["hits"] == 0 and s["not_kept_over_limit"] > 0
    assert visionmemo.install(models.load_model(student_path), 0) is None  # 0 turns it off


@pytest.mark.slow
def test_training_with_and_without_the_memo_ends_with_identical_weights(tmp_path, student_path, teacher_path,
                                                                        small_splits, processor, pixels):
    col = collate.VQACollator(processor, pixels, max_length=256)
    finals = {}
    for gb in (0.0, 1.0):
        torch.manual_seed(0)
        model = adapters.prepare(models.load_model(student_path), freeze_vision=True)
        teacher = models.load_model(teacher_path, frozen=True)
        loader = sampler.make_loader(small_splits["train"], col, batch_size=4, shuffle=True, seed=0)
        val = sampler.make_loader(small_splits["val"], col, batch_size=4, shuffle=False, seed=0)
        history = loop.train(model, teacher, processor, loader, val, loader_config(tmp_path / f"gb{gb}", teacher="live", epochs=2, grad_accum=1, learning_rate=2e-3, warmup_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0, temperature=2.0, alpha=0.5, vision_memo_gb=gb))
        finals[gb] = {k: v.clone() for k, v in model.state_dict().items()}
        assert "get_image_features" not in model.model.__dict__  # removed when training ends
        if gb:
            memo = history["vision_memo"]
            assert set(memo) == {"student", "teacher"}
            assert all(m["hits"] > 0 and m["hits"] == m["misses"] for m in memo.values())  # 2 epochs: half reused
        else:
            assert history["vision_memo"] == {}
    assert all(torch.equal(finals[0.0][k], finals[1.0][k]) for k in finals[0.0])


def test_generate_goes_through_the_memo(student_path, batches):
    model = models.load_model(student_path, frozen=True)
    b = batches[0]["inputs"]
    want = model.generate(**b, max_new_tokens=4, do_sample=False)
    memo = visionmemo.install(model, 2**30)
    for _ in range(2):
        assert torch.equal(model.generate(**b, max_new_tokens=4, do_sample=False), want)
    assert memo.stats()["hits"] == memo.stats()["misses"] > 0
