"""The training planner (fslib.training.plan, python -m fslib.plan): the real job's plans, what its parts are made
of, checked against what autograd and bitsandbytes really hold, and the rehearsal's measurements."""

import dataclasses
import importlib.util
import json

import pytest
import torch

from fslib import plan as cli
from fslib.core.fsio import REPO_ROOT
from fslib.training import plan as planner
from fslib.training.plan import activations as act
from fslib.training.plan import arch, memory, weights, workload

REAL = str(REPO_ROOT / "params" / "qwen2vl-7b-to-2b.yaml")
GiB = 2**30


@pytest.fixture(scope="module")
def real_params():
    return cli.params(REAL)


@pytest.fixture(scope="module")
def kd_job(real_params):
    """The real job's KD student training on an A100 80GB, as a planner Job."""
    cfg = cli.trainings(real_params, REPO_ROOT / "reports" / "unused")["kd_student"]
    return planner.job_for(cfg, workload.from_params(real_params), planner.device("a100-80gb"))


def test_real_job_fits_an_a100_80gb_and_its_parts_sum_to_the_total(real_params, capsys):
    p = cli.plan_run(real_params, gpu="a100-80gb", num_gpus=1)
    assert p["training"] == "kd_student" and p["fits"]
    assert sum(p["components"].values()) == p["total_bytes"]
    c = p["components"]
    assert c["student_weights"] == 2_208_985_600 * 4  # fp32 master weights of the real 2B
    trainable = 2_208_985_600 - 665_271_296  # the vision tower is frozen (freeze_vision's default)
    assert c["optimizer_state"] == 2 * trainable * 4
    assert 7.5 * GiB < c["teacher_weights"] < 10 * GiB  # the 7B in int8: ~1 byte per linear weight, bf16 elsewhere
    assert 25 * GiB < p["total_bytes"] < 60 * GiB
    assert p["step_seconds"] > 0 and p["epoch_seconds"] > p["step_seconds"]
    assert cli.main([REAL, "--gpu", "a100-80gb", "--num-gpus", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"total_bytes", "fits", "components", "step_seconds", "epoch_seconds", "advice"} <= set(out)
    assert out["total_bytes"] == p["total_bytes"] and out["fits"] is True


def test_real_job_does_not_fit_an_rtx4090_and_advice_names_changes_that_do(real_params):
    p = cli.plan_run(real_params, gpu="rtx4090-24gb", num_gpus=1)
    assert not p["fits"] and p["total_bytes"] > p["device"]["usable_bytes"]
    assert p["advice"], "a plan that does not fit must say what to change"
    fitting = [a for a in p["advice"] if a["fits"]]
    assert fitting and all(a["total_bytes"] <= p["device"]["usable_bytes"] for a in fitting)
    named = {k for a in p["advice"] for k in a["params"]}
    assert {"student_lora", "teacher_quantization", "num_processes"} <= named
    assert all(a["total_bytes"] < p["total_bytes"] for a in p["advice"] if "student_lora" in a["params"])


def test_every_phase_sums_its_components_and_the_peak_is_the_largest(kd_job):
    for job in (kd_job, dataclasses.replace(kd_job, device=planner.device("cpu", memory_bytes=64 * GiB))):
        ph = memory.phases(job)
        p = planner.plan(job, with_advice=False)
        assert set(p["components"]) == set(memory.COMPONENTS)
        assert p["total_bytes"] == max(sum(c.values()) for c in ph.values()) == sum(p["components"].values())


def test_checkpointing_lowers_activations(kd_job):
    off = dataclasses.replace(kd_job, cfg=kd_job.cfg.but(model={"gradient_checkpointing": False}))
    for phase in ("kd_loss", "backward"):
        assert memory.phases(kd_job)[phase]["activations"] < memory.phases(off)[phase]["activations"] / 3


def test_nf4_is_smaller_than_int8_is_smaller_than_bf16(kd_job):
    sizes = {q: memory.phases(dataclasses.replace(kd_job, cfg=kd_job.cfg.but(teacher={"quantization": q})))
             ["backward"]["teacher_weights"] for q in ("none", "int8", "nf4")}
    assert sizes["nf4"] < sizes["int8"] < sizes["none"] == 8_291_375_616 * 2


def test_chunked_kd_holds_less_than_full_logits(kd_job):
    # 2 x 1,024 answer tokens: past one chunk (kd_chunk_size 1,024); at a chunk or less both hold a few (N, V) buffers
    long = dataclasses.replace(kd_job, work=dataclasses.replace(kd_job.work, answer_tokens=1024))
    full = dataclasses.replace(long, cfg=long.cfg.but(loss={"kd_impl": "full"}))
    assert memory.phases(long)["kd_loss"]["kd_loss"] < memory.phases(full)["kd_loss"]["kd_loss"] / 2


def test_real_shapes_come_from_the_meta_model():
    a7, a2 = arch.arch_of("Qwen/Qwen2-VL-7B-Instruct"), arch.arch_of("random-init:qwen2-vl-2b")
    assert (a7.params, a2.params) == (8_291_375_616, 2_208_985_600)
    assert a2.tied and not a7.tied and a2.params_head == 0 and a7.params_head == 152_064 * 3584
    assert sum(lin.params for lin in a7.linears) + a7.params_embedding + a7.other_params == a7.params


def test_a_448_px_image_is_256_visual_tokens_and_an_8_frame_clip_1024(real_params):
    assert workload.image_tokens(448, real_params) == 256
    assert workload.video_tokens(448, 8, real_params) == 1024
    w = workload.from_params(real_params)
    assert w.visual_tokens == 1024 and w.seq_len == 1024 + workload.TEXT_TOKENS and w.patches == 4096


def _tiny_config(layers=2):
    from transformers import Qwen2VLConfig

    hd = 16
    text = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [hd // 8, 3 * hd // 16, 3 * hd // 16]},
                bos_token_id=0, eos_token_id=1, pad_token_id=0)
    vision = dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=290, video_token_id=291,
                         vision_start_token_id=292, vision_end_token_id=293)


def _saved_bytes(model, batch: int, seq_len: int) -> int:
    """Bytes of every tensor autograd keeps for backward in one forward (storages counted once, weights excluded)."""
    ids = torch.randint(2, 280, (batch, seq_len))
    ids[:, 3], ids[:, 4:8], ids[:, 8] = 292, 290, 293  # one 4x4-patch image (4 visual tokens) per sample
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[1, -5:] = 0  # padded, as a batch of unequal samples is
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(batch * 16, act.PIXEL_VALUES),
              image_grid_thw=torch.tensor([[1, 4, 4]] * batch), mm_token_type_ids=(ids == 290).long(),
              logits_to_keep=1)
    return sum(seen.values())


@pytest.mark.parametrize("lora,checkpointing,freeze_vision", [
    (None, False, True), (8, False, True), (None, True, True), (8, True, True), (None, False, False),
    (None, True, False)])
def test_activation_model_equals_what_autograd_keeps(lora, checkpointing, freeze_vision):
    from transformers import Qwen2VLForConditionalGeneration

    from fslib.engine import adapters

    torch.manual_seed(0)
    cfg = _tiny_config()
    model = adapters.prepare(Qwen2VLForConditionalGeneration(cfg), lora=lora is not None, lora_r=lora or 16,
                             freeze_vision=freeze_vision, gradient_checkpointing=checkpointing)
    batch, seq_len, patches = 2, 40, 32
    pred = act.student_activations(arch.from_config(cfg), act.precision(4, "cpu", False), batch=batch,
                                   seq_len=seq_len, patches=patches, lora_r=lora, checkpointing=checkpointing,
                                   trainable_vision=not freeze_vision and lora is None)
    # Not seen by the hooks but alive: the batch (a trained patch embedding saves pixel_values, though) and, with
    # checkpointing, the rotary tables the checkpointed layers hold as plain inputs.
    unseen = pred["inputs"] - (patches * act.PIXEL_VALUES * 4 if not freeze_vision else 0)
    unseen += pred["rope"] + pred["vision_rope"] if checkpointing else 0
    assert pred["forward"] - unseen == _saved_bytes(model, batch, seq_len)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantised_teacher_bytes_equal_what_bitsandbytes_holds(tmp_path, quantization):
    pytest.importorskip("bitsandbytes")
    from fslib.engine import models, randominit

    cfg = randominit.config("cpu-medium")  # the real vocabulary, small widths
    randominit.build_model(cfg, dtype=torch.bfloat16).save_pretrained(tmp_path)
    model = models.load_model(str(tmp_path), dtype="bfloat16", quantization=quantization, frozen=True)
    held = {}
    for mod in model.modules():
        for t in list(mod.parameters(recurse=False)):
            held[t.data_ptr()] = t.numel() * t.element_size()
            state = getattr(t, "quant_state", None)
            extra = [getattr(t, "SCB", None)] + ([state.absmax, state.code, state.offset, state.state2.absmax,
                                                  state.state2.code] if state is not None else [])
            for x in extra:
                if torch.is_tensor(x):
                    held[(x.data_ptr(), id(x))] = x.numel() * x.element_size()
    predicted = weights.teacher_weight_bytes(arch.from_config(cfg), "bfloat16", quantization)
    assert abs(predicted - sum(held.values())) <= 2_000  # a few scalars of state apart


def test_the_rehearsal_json_is_current_and_says_whether_the_target_is_met():
    path = REPO_ROOT / "benchmarks" / "results" / "plan_vs_measured.json"
    if not path.exists():
        pytest.skip("needs benchmarks/plan_vs_measured.py's results")
    import importlib.util

    spec = importlib.util.spec_from_file_location("pvm", REPO_ROOT / "benchmarks" / "plan_vs_measured.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = json.loads(path.read_text())
    measured = [r for r in res["runs"] if "measured_bytes" in r]
    assert len(measured) >= 4
    for r in measured:
        P = bench.params(bench.VARIANTS[r["name"]])
        work = workload.Workload(**r["workload"])  # the rehearsal's 01 data as the run saw it
        assert bench.predict(P, bench.config_for(P, r["name"]), work)["total_bytes"] == r["predicted_bytes"], r["name"]
        assert r["within_target"] == (abs(r["error"]) <= bench.TARGET and abs(r["step_error"]) <= bench.TARGET)
    assert res["target"]["met"] == all(r.get("within_target") for r in res["runs"])


def test_readme_plan_block_is_generated_from_the_json():
    from fslib.reporting import planblock, readme

    if not planblock.PLAN_VS_MEASURED.exists():
        pytest.skip("no benchmarks/results/plan_vs_measured.json yet")
    assert readme.current_block(readme.README.read_text(), "plan") == planblock.plan_block().rstrip(), \
        "README's plan block is stale: run `make readme`"


def test_02_loads_random_init_models_for_training(tmp_path):
    """``models.load_model`` (02's loader) builds a random-init folder's weights: trainable for the student, frozen
    for the teacher, and through a materialised checkpoint when bitsandbytes quantises it."""
    from fslib.engine import models, randominit
    from fslib.world.embedded import build_tiny_processor, default_corpus

    folder = randominit.resolve("random-init:tiny", tmp_path, lambda **px: build_tiny_processor(default_corpus(), **px))
    student = models.load_model(str(folder))
    assert all(p.requires_grad for p in student.parameters()) and not student.training
    teacher = models.load_model(str(folder), dtype="bfloat16", frozen=True)
    assert not any(p.requires_grad for p in teacher.parameters()) and next(teacher.parameters()).dtype == torch.bfloat16
    if importlib.util.find_spec("bitsandbytes"):
        quantized = models.load_model(str(folder), dtype="bfloat16", quantization="nf4", frozen=True)
        assert getattr(quantized, "is_quantized", False) and (folder / "weights-bfloat16" / "config.json").exists()


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl", "qwen3.5"])
def test_other_families_activations_match_what_autograd_keeps(family):
    """Full fine-tuning of a small model of each family: the activation model (q/k norms, Qwen3.5's gate, its
    Gated-DeltaNet layer traced on the meta device, DeepStack features) against autograd's saved tensors."""
    import transformers

    from fslib.engine import adapters, families, familyconfig

    p = dict(family=family, hidden=64, ffn=128, heads=4, kv_heads=2, head_dim=16, vocab=300, tie=False, layers=2,
             vis_depth=1, vis_dim=32, vis_heads=2, vis_ffn=64, fullatt=(0,), deepstack=(0,), lin_k_heads=2,
             lin_v_heads=4, lin_dim=16, layer_types=("linear_attention", "full_attention"))
    ids = {"image_token_id": 290, "video_token_id": 291, "vision_start_token_id": 292, "vision_end_token_id": 293,
           "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    cfg = familyconfig.build(p, ids)
    torch.manual_seed(0)
    model = adapters.prepare(getattr(transformers, families.get(family).model_class)(cfg), freeze_vision=True)
    a = arch.from_config(cfg)
    batch, seq_len = 2, 40
    ids_t = torch.randint(2, 280, (batch, seq_len))
    ids_t[:, 3], ids_t[:, 4:8], ids_t[:, 8] = 292, 290, 293
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[1, -5:] = 0
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids_t, attention_mask=mask, pixel_values=torch.randn(batch * 16, act.pixel_values(a)),
              image_grid_thw=torch.tensor([[1, 4, 4]] * batch), mm_token_type_ids=(ids_t == 290).long(),
              logits_to_keep=1)
    pred = act.student_activations(a, act.precision(4, "cpu", False), batch=batch, seq_len=seq_len,
                                   patches=batch * 16, lora_r=None, checkpointing=False, trainable_vision=False)
    kept = pred["forward"] - pred["inputs"]
    assert kept == pytest.approx(sum(seen.values()), rel=0.03)
