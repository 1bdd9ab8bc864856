"""``DistillConfig``: frozen, validated where it is built, and whole in JSON."""

import dataclasses

import pytest

from fslib.engine.losspaths import LossConfig
from fslib.training.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    TeacherConfig,
    loader_config,
)


def _cfg(**kw):
    return DistillConfig(label="kd", out_dir="/r/kd", model=ModelConfig(path="/r/student"),
                         data=DataConfig(data_dir="/r/data", extra_train_dirs=["/r/seqkd/data"]),
                         teacher=TeacherConfig(path="/r/teacher"), **kw)


def test_json_round_trip_and_frozen():
    cfg = _cfg(loss=LossConfig(alpha=0.5), optim=OptimConfig(learning_rate=3e-4))
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.loss.alpha = 0.1


def test_but_changes_one_part_and_keeps_the_rest():
    cfg = _cfg()
    sft = cfg.but(loss={"alpha": 0.0}, teacher=TeacherConfig())
    assert sft.loss.alpha == 0.0 and sft.loss.temperature == cfg.loss.temperature and sft.optim == cfg.optim
    assert cfg.loss.alpha == 0.7  # the original is untouched


@pytest.mark.parametrize("part, kw, match", [
    (LossConfig, dict(kd_impl="fused"), "kd_impl 'fused' is not one of: full, chunked"),
    (TeacherConfig, dict(path="t", quantization="int4"), "teacher_quantization 'int4'"),
    (OptimConfig, dict(grad_accum=0), "grad_accum must be >= 1"),
])
def test_bad_values_are_refused_naming_the_setting(part, kw, match):
    with pytest.raises(ValueError, match=match):
        part(**kw)


def test_bad_divergence_and_kd_without_teacher_are_refused():
    with pytest.raises(ValueError, match="unknown divergence"):
        LossConfig(divergence="kl")
    with pytest.raises(ValueError, match="no teacher"):
        _cfg().but(teacher=TeacherConfig())


def test_resume_settings_leave_out_runtime_and_keep_run_paths_relative():
    cfg = _cfg()
    settings = cfg.resume_settings()
    assert "runtime" not in settings and "out_dir" not in settings
    assert settings["model"]["path"] == "student" and settings["data"]["extra_train_dirs"] == ["seqkd/data"]
    assert cfg.but(runtime={"resume": True, "vision_memo_gb": 0.0}).resume_settings() == settings
    assert cfg.but(optim={"learning_rate": 1.0}).resume_settings() != settings


def test_loader_config_routes_settings_by_name_and_refuses_unknown_ones(tmp_path):
    cfg = loader_config(tmp_path, teacher="live", temperature=2.0, learning_rate=1e-2, save_every=3)
    assert (cfg.loss.temperature, cfg.optim.learning_rate, cfg.runtime.save_every) == (2.0, 1e-2, 3)
    with pytest.raises(TypeError, match="unknown setting 'lr'"):
        loader_config(tmp_path, lr=1e-2)


def test_written_config_is_what_the_jobs_script_reads(tmp_path):
    cfg = _cfg().but(out_dir=str(tmp_path / "kd"))
    path = cfg.write()
    assert path.name == "distill_config.json" and DistillConfig.read(path) == cfg
