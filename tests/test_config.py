from pathlib import Path

import pytest
import yaml

from fslib.core import config, fsio

PARAMS = sorted(Path(fsio.REPO_ROOT, "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in PARAMS])
def test_every_params_file_is_known_to_the_notebooks(path):
    params = config.load_params(path)
    declared = config.declared_params()
    assert set(params) <= set(declared)


def test_tiny_is_the_embedded_default():
    params = config.load_params(Path(fsio.REPO_ROOT, "params", "tiny.yaml"))
    assert params["run_name"] == "tiny"
    declared = config.declared_params()
    # the notebooks' own defaults run the tiny CPU config
    assert declared["teacher_model"]["default"] == '"embedded:tiny-teacher"'
    assert declared["run_name"]["default"] == '"tiny"'


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: x\nlerning_rate: 0.1\n")
    with pytest.raises(config.ParamsError) as e:
        config.load_params(bad)
    msg = str(e.value)
    assert f"{bad}:2" in msg and "'lerning_rate'" in msg and "learning_rate" in msg


def test_unknown_key_suggests_the_closest_valid_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lerning_rate: 0.001\n")
    with pytest.raises(config.ParamsError, match=r"Did you mean 'learning_rate'\?"):
        config.load_params(bad)
    bad.write_text("zzzqqq: 1\n")  # nothing close: no suggestion, only the list of valid keys
    with pytest.raises(config.ParamsError, match="unknown parameter 'zzzqqq'") as e:
        config.load_params(bad)
    assert "Did you mean" not in str(e.value)


def test_mistyped_value_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: three\n")
    with pytest.raises(config.ParamsError, match="'epochs' must be int"):
        config.load_params(bad)
    bad.write_text("prepare_teacher: 1\n")
    with pytest.raises(config.ParamsError, match="must be bool"):
        config.load_params(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("learning_rate: 1\n")  # an int is a valid float
    assert config.load_params(ok) == {"learning_rate": 1}


def test_namespace_check_catches_injected_typos():
    import math

    ns = {"run_name": "tiny", "math": math, "_private": 1, "In": []}
    config.check_namespace(ns, "02_distill")  # modules, private and IPython names are not parameters
    with pytest.raises(config.ParamsError, match="unknown parameter 'lerning_rate'"):
        config.check_namespace({**ns, "lerning_rate": 0.1}, "02_distill")


def test_one_type_per_key_across_notebooks():
    declared = config.declared_params()
    shared = [k for k, v in declared.items() if len(v["notebooks"]) > 1]
    assert "run_name" in shared  # declared in every notebook, with one type (declared_params raises otherwise)


def test_parameter_cells_follow_the_convention():
    import nbformat

    for nb in config.NOTEBOOKS:
        cells = nbformat.read(config.notebook_path(nb), as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), nb
        for line in code[0].source.splitlines():
            assert "#" in line, f"{nb}: parameter without a comment: {line}"
        for c in code:
            assert not c.get("outputs"), f"{nb} is committed with outputs"
            assert not any(l.lstrip().startswith(("def ", "class ")) for l in c.source.splitlines()), nb
        headings = [c for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
        assert len(headings) >= 3, nb


def test_real_run_uses_the_real_pair_settings():
    p = yaml.safe_load(Path(fsio.REPO_ROOT, "params", "qwen2vl-7b-to-2b.yaml").read_text())
    assert p["teacher_model"] == "Qwen/Qwen2-VL-7B-Instruct" and p["student_model"] == "Qwen/Qwen2-VL-2B-Instruct"
    assert (p["teacher_quantization"], p["temperature"], p["alpha"], p["learning_rate"]) == ("int8", 3.0, 0.7, 1e-4)
    assert (p["batch_size"], p["grad_accum"], p["epochs"], p["gradient_checkpointing"]) == (2, 8, 3, True)


def test_default_params_are_the_notebooks_defaults_as_values():
    defaults = config.default_params()
    declared = config.declared_params()
    assert set(defaults) == set(declared)
    assert isinstance(defaults["epochs"], int) and isinstance(defaults["teacher_model"], str)
    assert repr(defaults["temperature"]) == declared["temperature"]["default"]
