"""02's protocol (``fslib.stages.distill``) on the settings ``params/tiny.yaml`` ships (teacher cache on)."""

import dataclasses

import pytest

from fslib.core import config
from fslib.data import store
from fslib.stages import distill, threads
from fslib.training.config import DistillConfig


@pytest.fixture()
def P():
    """02's parameters as `make report` resolves them: the notebook's defaults, then params/tiny.yaml."""
    return {**config.default_params(), **config.load_params(config.REPO_ROOT / "params" / "tiny.yaml")}


def _plan(P, tmp_path, extra=("x/seqkd/data",), n_labelled=320):
    return distill.student_trainings(P, tmp_path, student_path="s", teacher_path="t", cache_dir=str(tmp_path / "tc"),
                                     extra_train_dirs=list(extra), n_labelled=n_labelled)


def test_shipped_params_use_the_cache_and_teacher_answered_questions(P):
    assert P["teacher_cache"] is True and P["n_unlabelled"] > 0  # what the tests below exercise


def test_kd_student_takes_the_sft_baselines_steps_and_schedule(P, tmp_path):
    plan = _plan(P, tmp_path)
    assert list(plan) == ["kd_student", "kd_labelled_student", "sft_student"]
    kd, sft = plan["kd_student"], plan["sft_student"]
    assert kd.optim == sft.optim and kd.optim.learning_rate == P["learning_rate"] and kd.optim.epochs == P["epochs"]
    assert kd.data.samples_per_epoch == 320 and sft.data.samples_per_epoch is None  # windows of len(labelled)
    assert kd.data.extra_train_dirs == ("x/seqkd/data",) and sft.data.extra_train_dirs == ()
    assert kd.data.data_dir == sft.data.data_dir and kd.model == sft.model
    assert kd.loss.alpha == P["alpha"] and sft.loss.alpha == 0.0
    assert dataclasses.replace(kd.loss, alpha=0.0) == sft.loss  # the same loss settings otherwise
    assert kd.teacher.cache_dir == str(tmp_path / "tc") and kd.teacher.path == "t" and sft.teacher.path is None


def test_kd_on_labelled_questions_alone_is_trained_only_beside_teacher_answers(P, tmp_path):
    plan = _plan(P, tmp_path)
    alone = plan["kd_labelled_student"]
    assert alone.data.extra_train_dirs == () and alone.data.samples_per_epoch is None
    assert alone.but(label="kd_student", out_dir=str(tmp_path / "kd_student")) == plan["kd_student"].but(
        data={"extra_train_dirs": (), "samples_per_epoch": None})
    assert list(_plan(P, tmp_path, extra=())) == ["kd_student", "sft_student"]  # nothing answered: one KD student
    assert _plan(P, tmp_path, extra=())["kd_student"].data.samples_per_epoch is None
    assert "kd_labelled_student" not in _plan({**P, "train_kd_labelled_baseline": False}, tmp_path)
    assert "sft_student" not in _plan({**P, "train_sft_baseline": False}, tmp_path)


def test_teacher_preparation_uses_the_teachers_own_settings(P, tmp_path):
    prep = distill.teacher_preparation(P, tmp_path, "teacher-folder")
    assert prep.model.path == "teacher-folder" and prep.model.dtype == P["teacher_dtype"]
    assert prep.optim.epochs == P["teacher_epochs"] and prep.optim.learning_rate == P["teacher_learning_rate"]
    assert prep.model.freeze_vision == P["teacher_freeze_vision"] and prep.model.lora == P["teacher_lora"]
    assert prep.loss.alpha == 0.0 and prep.teacher.path is None
    assert distill.teacher_preparation({**P, "prepare_teacher": False}, tmp_path, "t") is None


def _answered(n):
    return [{"id": f"u{i}", "question": "q", "answer": "a", "aliases": [], "qtype": "count", "media": "image",
             "image": None, "video": None, "split": "unlabelled", "confidence": i / n, "answered_by": "teacher"}
            for i in range(n)]


def test_pseudo_label_filter_keeps_confident_answers_and_names_their_folder(P, tmp_path, small_splits):
    answered = [{**r, "id": f"u{i}", "answer": "2", "confidence": c} for i, (r, c) in
                enumerate(zip(small_splits["train"][:4], (0.1, 0.5, 0.9, 0.95)))]
    kept, dirs = distill.keep_answers({**P, "teacher_answer_min_confidence": 0.0}, tmp_path, answered)
    assert kept == answered and dirs == [str(tmp_path / "seqkd" / "data")]
    kept, dirs = distill.keep_answers({**P, "teacher_answer_min_confidence": 0.6}, tmp_path, answered)
    assert [r["id"] for r in kept] == ["u2", "u3"] and dirs == [str(tmp_path / "seqkd" / "kept")]
    assert [r["id"] for r in store.records_from_dataset(store.load_dataset_dir(dirs[0])["train"])] == ["u2", "u3"]
    assert distill.keep_answers({**P, "teacher_answer_min_confidence": 0.99}, tmp_path, answered) == ([], [])


def test_cache_covers_every_kd_training_question_and_the_labelled_validation(small_splits):
    labelled, kept = small_splits["train"][:3], [{**small_splits["train"][3], "id": "u0"}]
    splits = {"val": small_splits["val"] + [{**small_splits["val"][0], "id": "v-unlabelled", "answer": None}]}
    covered = [r["id"] for r in distill.cache_records(labelled, kept, splits)]
    assert covered == [r["id"] for r in labelled + kept + small_splits["val"]]


def _leaves(d, out=None):
    out = {} if out is None else out
    for k, v in d.items():
        if isinstance(v, dict):
            _leaves(v, out)
        else:
            out.setdefault(k, []).append(v)
    return out


def test_training_json_holds_every_02_parameter_outside_the_raw_dump(P, tmp_path):
    plan = {"teacher": distill.teacher_preparation(P, tmp_path, "t"), **_plan(P, tmp_path)}
    histories = {label: {"best_val_loss": 1.0} for label in plan}
    summary = distill.write_training_summary(tmp_path, histories, plan, teacher_path="t", student_path="s", params=P)
    leaves = _leaves({"protocol": summary["protocol"], "trainings": summary["trainings"]})
    own = set(config._declared(str(config.notebook_path("02_distill")))) - {"run_name", "reports_dir"}
    missing = sorted(k for k in own if k not in leaves or P[k] not in leaves[k])
    assert not missing, f"training.json lacks (or has other values for) {missing}"
    for label, cfg in plan.items():  # each training's config round-trips from what training.json holds
        assert DistillConfig.from_dict(summary["trainings"][label]) == cfg
    assert summary["training"]["teacher_cache_tail"] == P["teacher_cache_tail"]  # the card's table
    assert summary["training"]["loss.alpha"] == P["alpha"]


def test_plan_table_lists_every_setting_with_the_differences_first(P, tmp_path):
    table = distill.plan_table(_plan(P, tmp_path))
    assert list(table.columns) == ["kd_student", "kd_labelled_student", "sft_student"]
    first = list(table.index[:8])
    assert "loss.alpha" in first and "data.samples_per_epoch" in first
    assert table.loc["optim.learning_rate"].nunique() == 1 and "data.pixels" in table.index


def test_teacher_curve_note_says_whether_preparation_converged():
    P = {"teacher_epochs": 16, "teacher_patience": 2}
    stopped = {"epochs": [{}] * 5, "best_epoch": 3, "best_val_loss": 0.5, "stopped_early": {"after_epoch": 5}}
    assert "ran 5 of at most 16 epochs" in distill.teacher_curve_note(stopped, P)
    assert "stopped on validation: 2 epochs without a lower" in distill.teacher_curve_note(stopped, P)
    rising = {"epochs": [{}] * 16, "best_epoch": 16, "best_val_loss": 0.4}
    assert "still falling at the ceiling: raise teacher_epochs" in distill.teacher_curve_note(rising, P)
    assert "not prepared" in distill.teacher_curve_note(None, P)


def test_cpu_threads_sets_torchs_threads_and_0_keeps_the_default():
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.cpu_threads(1) == 1 == torch.get_num_threads()
        assert threads.cpu_threads(0) == 1  # 0 leaves it as it is
    finally:
        torch.set_num_threads(before)
