import json

import pytest
import torch
from safetensors.torch import load_file

from fslib.engine import collate, losspaths, models
from fslib.engine.losspaths import LossConfig
from fslib.training import checkpoint, loop, sampler
from fslib.training.config import loader_config


@pytest.fixture()
def loaders(processor, pixels, small_splits):
    col = collate.VQACollator(processor, pixels)
    tl = sampler.make_loader(small_splits["train"][:10], col, batch_size=2, shuffle=True, seed=0)
    vl = sampler.make_loader(small_splits["val"], col, batch_size=2, shuffle=False, seed=0)
    return tl, vl


def _run(student_path, teacher, processor, loaders, out, **kw):
    student = models.load_model(student_path)
    args = dict(epochs=2, grad_accum=2, learning_rate=1e-3, warmup_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0,
                temperature=3.0, alpha=0.7 if teacher is not None else 0.0)
    args.update(kw)
    cfg = loader_config(out, teacher="live" if teacher is not None else None, **args)
    return student, loop.train(student, teacher, processor, *loaders, cfg)


@pytest.mark.slow
def test_kd_training_saves_best_final_and_history(tmp_path, student_path, teacher_path, processor, loaders):
    teacher = models.load_model(teacher_path, frozen=True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, hist = _run(student_path, teacher, processor, loaders, tmp_path)
    # 10 samples / batch 2 = 5 micro-batches; accumulation 2 -> 3 optimizer steps per epoch (the last holds one)
    assert [s["epoch"] for s in hist["steps"]] == [1, 1, 1, 2, 2, 2]
    assert all(s["kd"] > 0 and s["ce"] > 0 for s in hist["steps"])
    assert all(s["samples_per_s"] > 0 and s["tokens_per_s"] > 0 for s in hist["steps"])
    for name in ("best", "final"):
        reloaded = models.load_model(str(tmp_path / name))
        assert reloaded.config.get_text_config().vocab_size == models.load_model(student_path).config.get_text_config().vocab_size
        assert (tmp_path / name / "processor_config.json").exists()
    saved = json.loads((tmp_path / "training_history.json").read_text())
    assert saved["epochs"][-1]["epoch"] == 2 and saved["epochs"][-1]["peak_memory_bytes"] > 0
    assert checkpoint.read_resume(tmp_path)["done"]
    # the teacher is never updated
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_leftover_micro_batches_do_not_spill(loaders):
    groups = list(loop._groups(loaders[0], 2))
    assert [len(g) for g in groups] == [2, 2, 1]
    groups = list(loop._groups(loaders[0], 4))
    assert [len(g) for g in groups] == [4, 1]


def test_data_order_is_per_epoch_resumable_and_shards_global_batches():
    def batches(epoch, skip=0, rank=0, world=1, batch=2):
        s = sampler.EpochBatchSampler(11, batch, shuffle=True, seed=5)
        s.shard(rank, world)
        s.set_epoch(epoch, skip)
        return list(s)

    assert batches(1) == batches(1) and batches(1) != batches(2)
    assert batches(1, skip=2) == batches(1)[2:]
    assert sorted(i for b in batches(3) for i in b) == list(range(11))
    # two processes with batch 2 see, together, the single process's batches of 4 (the short last one split 2 + 1)
    one = batches(1, batch=4)
    two = [a + b for a, b in zip(batches(1, rank=0, world=2), batches(1, rank=1, world=2))]
    assert one == two


def test_an_epoch_can_be_a_window_so_extra_data_adds_no_steps():
    def epoch(e, skip=0):
        s = sampler.EpochBatchSampler(12, 2, shuffle=True, seed=7, samples_per_epoch=5)
        s.set_epoch(e, skip)
        return [i for b in s for i in b]

    windows = [epoch(e) for e in range(1, 13)]
    assert all(len(w) == 5 for w in windows)  # 3 batches (2, 2, 1) per epoch, as for 5 records
    assert len(sampler.EpochBatchSampler(12, 2, shuffle=True, seed=7, samples_per_epoch=5)) == 3
    stream = [i for w in windows for i in w]  # 12 epochs of 5 = 5 full passes over the 12 records
    for c in range(5):
        assert sorted(stream[12 * c:12 * (c + 1)]) == list(range(12))
    assert epoch(4) == epoch(4) and epoch(4, skip=1) == epoch(4)[2:]
    assert sampler.EpochBatchSampler(12, 2, shuffle=True, seed=7, samples_per_epoch=50).per_epoch == 12


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
                out = loop.batch_loss(model, None, b, loss=LossConfig(temperature=1.0, alpha=0.0), device="cpu")
                (out.loss * out.n_tokens / total).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def _grads(model, teacher, batch, **kw):
    model.zero_grad()
    out = losspaths.batch_loss(model, teacher, batch, loss=LossConfig(temperature=2.0, alpha=0.6, **kw), device="cpu")
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_chunked_kd_gives_the_training_gradients_of_full_logits(student_path, teacher_path, processor, pixels,
                                                               small_splits, divergence):
    """kd_impl chunked (hidden states + lm_head, 3 tokens per chunk) = full logits, on the padded teacher vocab."""
    teacher = models.load_model(teacher_path, frozen=True)
    student = models.load_model(student_path)
    v_t, v_s = (m.get_output_embeddings().weight.shape[0] for m in (teacher, student))
    assert v_t > v_s  # the teacher's output layer is padded further, as in the real pair
    batch = collate.VQACollator(processor, pixels)(small_splits["train"][:3])  # images and a clip
    full, g_full = _grads(student, teacher, batch, divergence=divergence)
    chunked, g_chunk = _grads(student, teacher, batch, divergence=divergence, kd_impl="chunked", kd_chunk_size=3)
    assert full.n_tokens == chunked.n_tokens > 3
    assert chunked.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert chunked.kd.item() == pytest.approx(full.kd.item(), rel=1e-4)
    assert g_full.keys() == g_chunk.keys() and len(g_full) == len(list(student.parameters()))
    for name in g_full:
        assert torch.allclose(g_full[name], g_chunk[name], atol=1e-6, rtol=1e-4), name


def test_chunked_ce_only_equals_full(student_path, processor, pixels, small_splits):
    student = models.load_model(student_path)
    batch = collate.VQACollator(processor, pixels)(small_splits["train"][:2])
    full, g_full = _grads(student, None, batch)
    chunked, g_chunk = _grads(student, None, batch, kd_impl="chunked", kd_chunk_size=2)
    assert chunked.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert full.loss.item() == pytest.approx(full.ce.item(), rel=1e-6)  # alpha 0 without a teacher: CE alone
    assert full.kd.item() == pytest.approx(0, abs=1e-6) and chunked.kd.item() == pytest.approx(0, abs=1e-6)
    assert all(torch.allclose(g_full[n], g_chunk[n], atol=1e-6, rtol=1e-4) for n in g_full)


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, student_path, processor, loaders,
                                                                        monkeypatch):
    real, calls = loop.batch_loss, {"n": 0}

    def poisoned(*a, **k):  # micro-batches 1-4 are fine (optimizer steps 1 and 2); the fifth is NaN
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loop, "batch_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3.*checkpoint \(step 2\)"):
        _run(student_path, None, processor, loaders, tmp_path, epochs=2, save_every=1)
    state = checkpoint.read_resume(tmp_path)
    assert (state["step"], state["epoch"], state["position"]) == (2, 1, 2)
    weights = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "final").exists()


def test_out_of_memory_names_the_params_to_change(tmp_path, student_path, processor, loaders, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(loop, "batch_loss", oom)
    with pytest.raises(torch.OutOfMemoryError) as err:
        _run(student_path, None, processor, loaders, tmp_path, epochs=1)
    for param in ("batch_size", "grad_accum", "kd_chunk_size", "teacher_quantization", "gradient_checkpointing"):
        assert param in str(err.value)


def test_onpolicy_batch_trains_on_the_students_samples(tmp_path, student_path, teacher_path, processor, pixels,
                                                       small_splits):
    from fslib.training import onpolicy

    col = collate.VQACollator(processor, pixels)
    student = models.load_model(student_path)
    batch = sampler.make_loader(small_splits["train"][:2], col, batch_size=2, shuffle=False, seed=0).__iter__().__next__()
    torch.manual_seed(1)
    sampled = onpolicy.onpolicy_batch(student, batch, col, max_new_tokens=4, temperature=1.0, device="cpu")
    assert [r["question"] for r in sampled["records"]] == [r["question"] for r in batch["records"]]
    assert [r["answer"] for r in sampled["records"]] != [r["answer"] for r in batch["records"]]
    # lambda 1: every micro-batch is the student's own; KD only, so the loss equals alpha-free T^2 * KD
    loaders = [sampler.make_loader(small_splits[s][:4], col, batch_size=2, shuffle=False, seed=0) for s in ("train", "val")]
    cfg = loader_config(tmp_path, teacher="live", epochs=1, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0,
                        weight_decay=0.0, max_grad_norm=1.0, temperature=2.0, alpha=0.5, onpolicy_lambda=1.0,
                        onpolicy_max_new_tokens=4, onpolicy_temperature=1.0)
    hist = loop.train(student, models.load_model(teacher_path, frozen=True), processor, *loaders, cfg,
                      onpolicy_collator=col)
    assert all(s["loss"] == pytest.approx(4.0 * s["kd"], rel=1e-5) for s in hist["steps"])


def test_unknown_tracker_is_refused_with_the_valid_names(tmp_path, student_path, processor, loaders):
    with pytest.raises(ValueError, match="tensorboard, wandb, mlflow"):
        _run(student_path, None, processor, loaders, tmp_path, epochs=1, report_to="tensorbord")


@pytest.mark.parametrize("with_teacher", [True, False])
def test_full_path_projects_only_answer_positions_and_equals_kd_loss_on_every_position(
        student_path, teacher_path, processor, pixels, small_splits, with_teacher):
    """kd_impl full: the lm_heads see the N answer positions only (no (B, L, V) logits), and the loss and gradients
    are those of ``kd.kd_loss`` on both models' logits at every position (the prompt masked there)."""
    from fslib.engine import kd

    teacher = models.load_model(teacher_path, frozen=True) if with_teacher else None
    student = models.load_model(student_path)
    batch = collate.VQACollator(processor, pixels)(small_splits["train"][:3])  # images and a clip
    n_answer = int((batch["labels"] != kd.IGNORE_INDEX).sum())
    rows = []
    hooks = [m.get_output_embeddings().register_forward_hook(lambda _m, i, _o: rows.append(i[0].shape[:-1].numel()))
             for m in (student, teacher) if m is not None]
    out, grads = _grads(student, teacher, batch)
    for h in hooks:
        h.remove()
    assert rows == [n_answer] * len(hooks) and batch["labels"].numel() > 4 * n_answer
    student.zero_grad()
    s_logits = student(**batch["inputs"]).logits
    with torch.no_grad():
        t_logits = teacher(**batch["inputs"]).logits if teacher is not None else s_logits.detach()
    ref = kd.kd_loss(s_logits, t_logits, batch["labels"], temperature=2.0, alpha=0.6 if teacher is not None else 0.0)
    ref.loss.backward()
    assert out.n_tokens == ref.n_tokens and out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    for name, p in student.named_parameters():
        if p.grad is not None:
            # float sums in another order: ~1e-5 relative on the trained pair's small gradients
            assert torch.allclose(grads[name], p.grad, atol=1e-7, rtol=1e-4), name


@pytest.mark.parametrize("patience, epochs_run", [(0, 4), (1, 2), (2, 3)])
def test_early_stopping_keeps_best_and_stops_after_patience_epochs(tmp_path, student_path, processor, loaders,
                                                                   monkeypatch, patience, epochs_run):
    val_losses = iter([1.0, 2.0, 3.0, 0.5])  # best after epoch 1; a patient enough run finds epoch 4's
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: {"loss": next(val_losses), "kd": 0.0, "ce": 0.0})
    monkeypatch.setattr(loop, "_train_epoch", lambda run, epoch: None)  # the epochs' steps do not matter here
    _, hist = _run(student_path, None, processor, loaders, tmp_path, epochs=4, patience=patience)
    assert len(hist["epochs"]) == epochs_run
    assert hist["best_epoch"] == (4 if epochs_run == 4 else 1)
    assert ("stopped_early" in hist) == (epochs_run < 4) and (tmp_path / "best").exists()
