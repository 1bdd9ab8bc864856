"""A bitsandbytes-quantised teacher, wherever bitsandbytes runs here (4-bit NF4 runs on CPU, with fp32 compute; INT8
runs too but ~30x slower, so only NF4 is tested on CPU, and INT8 on a GPU)."""

import pytest
import torch

from fslib import collate, forward, models, train


def _load_or_skip(path, quantization):
    pytest.importorskip("bitsandbytes")
    try:
        return models.load_model(path, quantization=quantization, frozen=True)
    except (ImportError, RuntimeError, NotImplementedError, ValueError) as e:  # no backend for this device
        pytest.skip(f"bitsandbytes {quantization} does not load here: {e}")


@pytest.mark.parametrize("quantization", ["nf4", pytest.param("int8", marks=pytest.mark.gpu)])
def test_quantised_teacher_distils_close_to_the_full_precision_one(tmp_path, teacher_path, student_path, processor,
                                                                   pixels, small_splits, quantization):
    teacher = _load_or_skip(teacher_path, quantization)
    assert models.describe(teacher)["quantization"] == "bitsandbytes"
    assert not any(p.requires_grad for p in teacher.parameters())
    col = collate.VQACollator(processor, pixels)
    batch = col(small_splits["train"][:3])
    full = forward.batch_loss(models.load_model(student_path), models.load_model(teacher_path, frozen=True), batch,
                              temperature=2.0, alpha=0.5, device="cpu")
    for impl in ("full", "chunked"):
        quant = forward.batch_loss(models.load_model(student_path), teacher, batch, temperature=2.0, alpha=0.5,
                                   device="cpu", kd_impl=impl)
        assert torch.isfinite(quant.loss) and quant.kd.item() > 0
        assert quant.ce.item() == pytest.approx(full.ce.item(), rel=1e-5)  # same student
        assert quant.kd.item() == pytest.approx(full.kd.item(), rel=0.5)  # a 4-bit teacher is close, not equal
    # and the training loop accepts it as is (it is not moved: bitsandbytes places its own weights)
    loaders = [train.make_loader(small_splits[s][:2], col, batch_size=2, shuffle=False, seed=0) for s in ("train", "val")]
    hist = train.train(models.load_model(student_path), teacher, processor, *loaders, out_dir=tmp_path, epochs=1,
                       grad_accum=1, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                       temperature=2.0, alpha=0.5)
    assert all(s["kd"] > 0 for s in hist["steps"])
