"""Offline teacher cache (top-k logits per answer token) and teacher answers for unlabelled questions."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fslib.engine import collate, generate, losspaths, models
from fslib.engine.losspaths import LossConfig
from fslib.training import cache, loop, sampler, seqkd
from fslib.training.config import loader_config
from fslib.world import synth


@pytest.fixture()
def collator(processor, pixels):
    return collate.VQACollator(processor, pixels)


@pytest.fixture()
def records(small_splits):
    return small_splits["train"][:5]  # images and clips


def _vocab(student_path):
    return models.load_model(student_path).get_output_embeddings().weight.shape[0]


def test_full_k_cache_reproduces_the_live_teacher_loss_and_gradients(tmp_path, teacher_path, student_path, collator,
                                                                     records):
    """With k = V the (k+1)-bucket loss is the full KD: the cached path equals the live teacher's (up to fp16)."""
    vocab = _vocab(student_path)
    tc, rebuilt = cache.ensure(cache.TeacherRef(teacher_path), collator, records, tmp_path / "c", k=vocab, vocab=vocab)
    assert rebuilt and tc.k == vocab
    teacher = models.load_model(teacher_path, frozen=True)
    batch = collator([records[3], records[0], records[4]])  # not the order they were cached in
    grads = []
    for kw in ({"cache": tc}, {}):
        student = models.load_model(student_path)
        out = losspaths.batch_loss(student, None if kw else teacher, batch, device="cpu", loss=LossConfig(temperature=2.0, alpha=0.5), **kw)
        out.loss.backward()
        grads.append((out, torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])))
    (cached, g_cached), (live, g_live) = grads
    assert cached.n_tokens == live.n_tokens
    assert cached.kd.item() == pytest.approx(live.kd.item(), rel=2e-3)
    assert cached.ce.item() == pytest.approx(live.ce.item(), rel=1e-6)
    # fp16 logits: a confident teacher's large logits round by ~1e-2, so single entries may differ by more than 1e-4;
    # the gradient as a whole must still be the same (3.8e-4 relative on the committed pair).
    assert ((g_cached - g_live).norm() / g_live.norm()).item() < 1e-3


def test_cache_files_hold_fp16_values_int32_indices_and_every_answer_token(tmp_path, teacher_path, student_path,
                                                                          collator, records):
    vocab = _vocab(student_path)
    tc, _ = cache.ensure(cache.TeacherRef(teacher_path), collator, records, tmp_path / "c", k=8, vocab=vocab)
    shard = load_file(str(tmp_path / "c" / tc.meta["shards"][0]))
    assert shard["values"].dtype == torch.float16 and shard["indices"].dtype == torch.int32
    assert shard["values"].shape[1] == 8 and int(shard["indices"].max()) < vocab  # cut to the student's vocab
    labels = collator(records)["labels"]
    assert tc.meta["rows"] == int((labels[:, 1:] != -100).sum())
    # the values are the teacher's largest logits, in order
    assert bool((shard["values"][:, :-1] >= shard["values"][:, 1:]).all())


def test_cache_is_reused_and_invalidated_by_any_input_change(tmp_path, teacher_path, student_path, collator, records):
    vocab, folder = _vocab(student_path), tmp_path / "c"
    cache.ensure(cache.TeacherRef(teacher_path), collator, records, folder, k=4, vocab=vocab)
    ref = cache.TeacherRef(teacher_path)
    _, rebuilt = cache.ensure(ref, collator, records, folder, k=4, vocab=vocab)
    assert not rebuilt and ref._model is None  # a hit never loads the teacher
    changed = [dict(records[0], answer=records[0]["answer"] + " x"), *records[1:]]
    assert cache.ensure(ref, collator, changed, folder, k=4, vocab=vocab)[1]  # data
    assert cache.ensure(ref, collator, changed, folder, k=5, vocab=vocab)[1]  # k
    assert cache.ensure(cache.TeacherRef(teacher_path, dtype="bfloat16"), collator, changed, folder, k=5,
                        vocab=vocab)[1]  # teacher settings
    other = tmp_path / "teacher2"
    shutil.copytree(teacher_path, other)
    weights = load_file(str(other / "model.safetensors"))
    name = next(k for k in weights if "lm_head" in k)
    weights[name] = weights[name] + 0.01
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    assert cache.ensure(cache.TeacherRef(str(other)), collator, changed, folder, k=5, vocab=vocab)[1]  # weights
    assert not cache.ensure(cache.TeacherRef(str(other)), collator, changed, folder, k=5, vocab=vocab)[1]


def test_log_partition_gives_the_teacher_tail_and_follows_the_temperature(tmp_path, teacher_path, student_path,
                                                                           collator, records):
    vocab, folder = _vocab(student_path), tmp_path / "c"
    ref = cache.TeacherRef(teacher_path)
    tc, _ = cache.ensure(ref, collator, records, folder, k=8, vocab=vocab, temperature=2.0)
    shard = load_file(str(folder / tc.meta["shards"][0]))
    assert tc.temperature == 2.0 and shard["log_partition"].dtype == torch.float32
    batch = collator(records)
    labels = batch["labels"]
    with torch.no_grad():
        logits = models.load_model(teacher_path, frozen=True)(**batch["inputs"]).logits[:, :-1][labels[:, 1:] != -100]
    torch.testing.assert_close(shard["log_partition"], torch.logsumexp(logits[:, :vocab] / 2.0, dim=-1))
    # a new temperature is a new fingerprint; no temperature is the renormalised (older) form
    assert cache.ensure(ref, collator, records, folder, k=8, vocab=vocab, temperature=3.0)[1]
    tc3 = cache.TeacherCache(folder)
    tc_none, rebuilt = cache.ensure(ref, collator, records, tmp_path / "n", k=8, vocab=vocab)
    assert rebuilt and tc_none.temperature is None and tc_none.rows([records[0]["id"]], [tc_none.index[
        records[0]["id"]][2]])[2] is None
    student = models.load_model(student_path)
    with pytest.raises(ValueError, match="training temperature"):  # the stored logZ is at T = 3
        losspaths.batch_loss(student, None, batch, loss=LossConfig(temperature=2.0, alpha=0.5), device="cpu", cache=tc3)
    out = losspaths.batch_loss(student, None, batch, loss=LossConfig(temperature=3.0, alpha=0.5), device="cpu", cache=tc3)
    assert torch.isfinite(out.loss) and out.kd.item() > 0


def test_tail_choice_maps_to_the_stored_temperature():
    assert cache.tail_temperature("exact", 3) == 3.0 and cache.tail_temperature("renormalise", 3) is None
    with pytest.raises(ValueError, match="teacher_cache_tail 'exakt' is not one of: renormalise, exact"):
        cache.tail_temperature("exakt", 3.0)


def test_stale_rows_are_refused(tmp_path, teacher_path, student_path, collator, records):
    tc, _ = cache.ensure(cache.TeacherRef(teacher_path), collator, records, tmp_path / "c", k=4,
                         vocab=_vocab(student_path))
    n = tc.index[records[0]["id"]][2]
    with pytest.raises(cache.CacheMismatchError, match="stale"):
        tc.rows([records[0]["id"]], [n + 1])
    with pytest.raises(cache.CacheMismatchError, match="not in the teacher cache"):
        tc.rows(["nope"], [1])


@pytest.mark.slow
def test_training_from_the_cache_runs_without_a_teacher(tmp_path, teacher_path, student_path, processor, collator,
                                                        small_splits):
    recs = small_splits["train"][:4] + small_splits["val"][:2]
    tc, _ = cache.ensure(cache.TeacherRef(teacher_path), collator, recs, tmp_path / "c", k=8,
                         vocab=_vocab(student_path))
    loaders = [sampler.make_loader(r, collator, batch_size=2, shuffle=True, seed=0) for r in (recs[:4], recs[4:])]
    hist = loop.train(models.load_model(student_path), None, processor, *loaders, loader_config(tmp_path / "run", cache_dir="cache", epochs=1, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, temperature=2.0, alpha=0.5), cache=tc)
    assert all(s["kd"] > 0 and s["ce"] > 0 for s in hist["steps"])
    assert hist["epochs"][0]["val_kd"] > 0


def test_unlabelled_pool_is_disjoint_and_teacher_answers_are_cached(tmp_path, teacher_path, collator, small_splits):
    params = dict(image_size=112, max_objects=3, clutter=2, video_fraction=0.34, video_frames=4)
    pool = synth.synthetic_pool(3, data_params=params, seed=3)
    seen = {r["scene_seed"] for split in small_splits.values() for r in split}
    assert len(pool) == 3 and all(r["answer"] is None for r in pool)
    assert not seen & {r["scene_seed"] for r in pool}
    labelled, unlabelled = seqkd.split_labelled(small_splits["train"][:2] + pool)
    assert len(labelled) == 2 and unlabelled == pool
    answered, regenerated = seqkd.teacher_answers(cache.TeacherRef(teacher_path), collator, pool, tmp_path / "s",
                                                  max_new_tokens=3, batch_size=3)
    assert regenerated and all(isinstance(r["answer"], str) for r in answered)
    assert (tmp_path / "s" / "data").is_dir()
    ref = cache.TeacherRef(teacher_path)
    again, regenerated = seqkd.teacher_answers(ref, collator, pool, tmp_path / "s", max_new_tokens=3)
    assert not regenerated and ref._model is None and again == answered


def test_teacher_answer_confidence_is_the_answer_probability_and_filters(teacher_path, collator, small_splits):
    """The confidence equals exp(sum of log-probs) of the answer's tokens, <|im_end|> included, under a forward pass."""
    import dataclasses

    import torch

    from fslib.engine import collate, models

    records = small_splits["train"][:3]
    model = models.load_model(teacher_path, frozen=True)
    texts, probs = generate.generate_with_confidence(model, dataclasses.replace(collator, train=False), records,
                                                  batch_size=3, max_new_tokens=6)
    compared = 0
    for record, text, p in zip(records, texts, probs):
        batch = collator([{**record, "answer": text}])
        labels = batch["labels"][0]
        with torch.no_grad():
            logits = model(**batch["inputs"]).logits[0]
        pos = (labels != collate.IGNORE_INDEX).nonzero().flatten()
        if len(pos) > 6:  # the answer ran to max_new_tokens without <|im_end|>: its probability is not comparable
            continue
        logp = torch.log_softmax(logits[pos - 1].float(), -1).gather(1, labels[pos][:, None]).sum()
        assert 0 < p <= 1 and p == pytest.approx(float(logp.exp()), rel=1e-3, abs=1e-6)
        compared += 1
    assert compared
    answered = [{"id": str(i), "confidence": c} for i, c in enumerate((0.9, 0.2, 0.5))]
    assert [r["id"] for r in seqkd.confident(answered, 0.5)] == ["0", "2"]
    assert seqkd.confident(answered, 0.0) == answered
