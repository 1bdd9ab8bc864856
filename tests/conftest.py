import os
import random

import numpy as np
import pytest
import torch

from fslib.engine import models
from fslib.world import embedded, synth


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def embedded_root(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(scope="session")
def teacher_path(embedded_root):
    return embedded.resolve_model("embedded:tiny-teacher", embedded_root)


@pytest.fixture(scope="session")
def student_path(embedded_root):
    return embedded.resolve_model("embedded:tiny-student", embedded_root)


@pytest.fixture(scope="session")
def processor(student_path):
    return models.load_processor(student_path)


@pytest.fixture(scope="session")
def pixels():
    return dict(image_min_pixels=56 * 56, image_max_pixels=112 * 112, video_min_pixels=56 * 56,
                video_max_pixels=112 * 112, video_total_pixels=112 * 112 * 8)


@pytest.fixture(scope="session")
def small_splits():
    return synth.build_synthetic(seed=3, n_train=12, n_val=4, n_test=6, n_ood=2, image_size=112,
                                 video_fraction=0.34, video_frames=4)


@pytest.fixture(scope="session")
def small_data_dir(small_splits, tmp_path_factory):
    """``small_splits`` saved as the DatasetDict folder 01 writes (for the benchmark worker and 03's helpers)."""
    from fslib.data import store

    out = tmp_path_factory.mktemp("data") / "data"
    store.save_dataset(small_splits, out, card={"seed": 3})
    return out


# --- One tiny pipeline run per session, shared by the end-to-end, report, publishing and token-leak tests. ---

FAKE_HF_TOKEN = "hf_FAKE_token_for_leak_test_1234"
TINY_RUN = {"n_train": 16, "n_val": 4, "n_test": 6, "n_ood": 2, "teacher_epochs": 1, "epochs": 1, "batch_size": 4,
            "n_unlabelled": 6,  # seq-KD: 02 also trains KD on the labelled questions alone
            # On 4 validation questions the teacher check's verdict is noise; it would drop the teacher's answers this
            # run exercises when it fails. tests/test_user_data.py runs the check end to end.
            "teacher_check": False,
            # 04 publishes the KD student as asked, not 03's choice on 4 validation questions (a tie there goes to the
            # SFT-only student): this run checks the KD student's card and its INT8/NF4 variants' folders. The choice
            # and its publication are tested in tests/test_choice.py and tests/test_user_data.py.
            "publish_model": "student",
            "bench_repeats": 2, "bench_warmup": 1}
# Smaller speed sweep when 03 offers these knobs: the student's INT8/NF4 variants are kept (04 publishes them).
TINY_RUN_OPTIONAL = {"bench_batch_sizes": [1], "bench_variants": ["student:int8", "student:nf4"]}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Run all four notebooks once, as `make report` does, with HF_TOKEN set to a fake token and push false.

    Returns the run folder (``<tmp>/e2e``); its parent also holds ``index.html`` (all runs).
    """

    import yaml

    from fslib.core import config
    from fslib.stages import pipeline

    root = tmp_path_factory.mktemp("runs")
    declared = config.declared_params()
    params = {"run_name": "e2e", "reports_dir": str(root), **TINY_RUN,
              **{k: v for k, v in TINY_RUN_OPTIONAL.items() if k in declared}}
    pfile = root / "e2e.yaml"
    pfile.write_text(yaml.safe_dump(params))
    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = FAKE_HF_TOKEN  # every kernel and subprocess of the run inherits it
    try:
        pipeline.run(pfile)
    finally:
        if saved is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = saved
    return root / "e2e"
