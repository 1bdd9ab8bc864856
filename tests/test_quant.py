"""A bitsandbytes-quantised teacher, wherever bitsandbytes runs here. On CPU (bitsandbytes 0.50), INT8 runs (slowly)
and so does NF4: 4-bit needs every quantised layer's input width to be a multiple of its 64-wide blocks, and the tiny
teacher's are 128 (the 128-wide vision tower and language model) and 512 (the MLPs and the merger). Where
bitsandbytes has no kernel for this device or shape, the case is skipped with bitsandbytes' own error as the reason."""

import pytest
import torch

from fslib.engine import collate, losspaths, models
from fslib.engine.losspaths import LossConfig
from fslib.training import loop, sampler
from fslib.training.config import loader_config


def _load_or_skip(path, quantization, batch):
    pytest.importorskip("bitsandbytes")
    try:
        model = models.load_model(path, quantization=quantization, frozen=True)
        with torch.no_grad():
            model(**batch["inputs"])
    except (ImportError, RuntimeError, NotImplementedError, ValueError) as e:  # no kernel for this device or shape
        pytest.skip(f"bitsandbytes {quantization} does not run this teacher here: {str(e)[:200]}")
    return model


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantised_teacher_distils_close_to_the_full_precision_one(tmp_path, teacher_path, student_path, processor,
                                                                   pixels, small_splits, quantization):
    col = collate.VQACollator(processor, pixels)
    images = [r for r in small_splits["train"] if r["media"] == "image"]
    batch = col(images[:2])
    teacher = _load_or_skip(teacher_path, quantization, batch)
    assert models.describe(teacher)["quantization"] == "bitsandbytes"
    assert not any(p.requires_grad for p in teacher.parameters())
    full = losspaths.batch_loss(models.load_model(student_path), models.load_model(teacher_path, frozen=True), batch,
                                loss=LossConfig(temperature=2.0, alpha=0.5), device="cpu")
    for impl in ("full", "chunked")[: 2 if quantization == "nf4" else 1]:  # INT8 on CPU is slow: one pass
        quant = losspaths.batch_loss(models.load_model(student_path), teacher, batch, loss=LossConfig(temperature=2.0, alpha=0.5, kd_impl=impl), device="cpu")
        assert torch.isfinite(quant.loss) and quant.kd.item() > 0
        assert quant.ce.item() == pytest.approx(full.ce.item(), rel=1e-5)  # same student
        assert quant.kd.item() == pytest.approx(full.kd.item(), rel=0.5)  # a 4-bit teacher is close, not equal
    # and the training loop accepts it as is (it is not moved: bitsandbytes places its own weights)
    loaders = [sampler.make_loader(recs, col, batch_size=2, shuffle=False, seed=0) for recs in (images[:2], images[2:3])]
    hist = loop.train(models.load_model(student_path), teacher, processor, *loaders, loader_config(tmp_path, teacher="live", epochs=1, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, temperature=2.0, alpha=0.5))
    assert all(s["kd"] > 0 for s in hist["steps"])
