import pytest
import torch

from fslib.engine import adapters, collate, losspaths, models
from fslib.engine.losspaths import LossConfig
from fslib.training import loop, sampler
from fslib.training.config import loader_config


@pytest.fixture()
def batch(processor, pixels, small_splits):
    return collate.VQACollator(processor, pixels)(small_splits["train"][:3])


def test_lora_trains_adapters_only_and_exports_a_merged_plain_model(tmp_path, student_path, processor, batch):
    model = adapters.prepare(models.load_model(student_path), lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)  # q_proj etc. name only the language model's projections
    counts = adapters.trainable_counts(model)
    assert 0 < counts["trainable_share"] < 0.2
    with torch.no_grad():  # adapters start at B = 0: give them weight so that merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    adapters.save_pretrained(model, model.state_dict(), processor, tmp_path / "merged")
    plain = models.load_model(str(tmp_path / "merged"))
    assert not any("lora" in k for k in plain.state_dict())
    model.eval()
    with torch.no_grad():
        ref = model(**batch["inputs"]).logits
        got = plain(**batch["inputs"]).logits
        base = models.load_model(student_path)(**batch["inputs"]).logits
    assert torch.allclose(ref, got, atol=1e-5)
    assert not torch.allclose(ref, base, atol=1e-3)


def test_frozen_vision_tower_gets_no_gradient_and_no_optimizer_state(tmp_path, student_path, processor, pixels,
                                                                      small_splits):
    model = adapters.prepare(models.load_model(student_path), freeze_vision=True)
    visual = dict(adapters.vision_tower(model).named_parameters())
    assert visual and not any(p.requires_grad for p in visual.values())
    before = {n: p.clone() for n, p in adapters.vision_tower(model).named_parameters()}
    col = collate.VQACollator(processor, pixels)
    loaders = [sampler.make_loader(small_splits[s][:4], col, batch_size=2, shuffle=False, seed=0) for s in ("train", "val")]
    loop.train(model, None, processor, *loaders, loader_config(tmp_path, epochs=1, grad_accum=1, learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, temperature=1.0, alpha=0.0))
    assert all(torch.equal(before[n], p) for n, p in adapters.vision_tower(model).named_parameters())
    lm = model.get_decoder().layers[0].mlp.up_proj.weight
    assert not torch.equal(lm, models.load_model(student_path).get_decoder().layers[0].mlp.up_proj.weight)


def test_gradient_checkpointing_gives_the_same_gradients(student_path, teacher_path, batch):
    teacher = models.load_model(teacher_path, frozen=True)
    grads = []
    for gc in (False, True):
        model = adapters.prepare(models.load_model(student_path), gradient_checkpointing=gc)
        assert adapters.is_checkpointing(model) == gc
        out = losspaths.batch_loss(model, teacher, batch, loss=LossConfig(temperature=2.0, alpha=0.5, kd_impl="chunked"), device="cpu")
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_describe_checkpoint_matches_the_loaded_model_without_loading_it(teacher_path):
    meta = adapters.describe_checkpoint(teacher_path, dtype="float32")
    loaded = models.describe(models.load_model(teacher_path))
    for key in ("params", "params_vision", "vocab_size", "hidden_size", "layers"):
        assert meta[key] == loaded[key], key


def test_merged_state_dict_folds_lora_by_hand():
    a, b, w = torch.randn(2, 3), torch.randn(4, 2), torch.randn(4, 3)
    state = {"base_model.model.x.q_proj.base_layer.weight": w, "base_model.model.x.q_proj.lora_A.default.weight": a,
             "base_model.model.x.q_proj.lora_B.default.weight": b, "base_model.model.x.norm.weight": torch.ones(3)}
    merged = adapters.merged_state_dict(state, scaling=0.5)
    assert set(merged) == {"x.q_proj.weight", "x.norm.weight"}
    assert torch.allclose(merged["x.q_proj.weight"], w + 0.5 * b @ a)
