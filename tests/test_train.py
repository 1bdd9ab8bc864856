import json

import pytest
import torch

from fslib import collate, models, train


@pytest.fixture()
def loaders(processor, pixels, small_splits):
    col = collate.VQACollator(processor, pixels)
    tl = train.make_loader(small_splits["train"][:10], col, batch_size=2, shuffle=True, seed=0)
    vl = train.make_loader(small_splits["val"], col, batch_size=2, shuffle=False, seed=0)
    return tl, vl


def _run(student_path, teacher, processor, loaders, out, **kw):
    student = models.load_model(student_path)
    args = dict(out_dir=out, epochs=2, grad_accum=2, lr=1e-3, warmup_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0,
                temperature=3.0, alpha=0.7 if teacher is not None else 0.0)
    args.update(kw)
    return student, train.train(student, teacher, processor, *loaders, **args)


def test_kd_training_saves_best_final_and_history(tmp_path, student_path, teacher_path, processor, loaders):
    teacher = models.load_model(teacher_path, frozen=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, hist = _run(student_path, teacher, processor, loaders, tmp_path)
    # 10 samples / batch 2 = 5 micro-batches; accumulation 2 -> 3 optimizer steps per epoch (the last holds one)
    assert [s["epoch"] for s in hist["steps"]] == [1, 1, 1, 2, 2, 2]
    assert all(s["kd"] > 0 and s["ce"] > 0 for s in hist["steps"])
    for name in ("best", "final"):
        reloaded = models.load_model(str(tmp_path / name))
        assert reloaded.config.get_text_config().vocab_size == models.load_model(student_path).config.get_text_config().vocab_size
        assert (tmp_path / name / "processor_config.json").exists()
    assert json.loads((tmp_path / "training_history.json").read_text())["epochs"][-1]["epoch"] == 2
    # the teacher is never updated
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_leftover_micro_batches_do_not_spill(loaders):
    groups = list(train._groups(loaders[0], 2))
    assert [len(g) for g in groups] == [2, 2, 1]
    groups = list(train._groups(loaders[0], 4))
    assert [len(g) for g in groups] == [4, 1]


def test_accumulation_equals_one_big_batch(student_path, processor, pixels, small_splits):
    """Two micro-batches of 2 accumulate to the gradient of one batch of 4 (token-weighted mean)."""
    col = collate.VQACollator(processor, pixels)
    recs = [r for r in small_splits["train"] if r["media"] == "image"][:4]
    grads = []
    for groups in ([[col(recs[:2]), col(recs[2:])]], [[col(recs)]]):
        torch.manual_seed(0)
        model = models.load_model(student_path)
        model.zero_grad()
        for group in groups:
            total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in group)
            for b in group:
                out = train.batch_loss(model, None, b, temperature=1.0, alpha=0.0, device="cpu")
                (out.loss * out.n_tokens / total).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_nan_loss_stops_with_clear_error(tmp_path, student_path, processor, loaders, monkeypatch):
    real = train.batch_loss

    def poisoned(*a, **k):
        out = real(*a, **k)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train, "batch_loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        _run(student_path, None, processor, loaders, tmp_path, epochs=1)
