import random

import numpy as np
import pytest
import torch

from fslib import models, synth


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
    return models.resolve_model("embedded:tiny-teacher", embedded_root)


@pytest.fixture(scope="session")
def student_path(embedded_root):
    return models.resolve_model("embedded:tiny-student", embedded_root)


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
