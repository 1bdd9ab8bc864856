"""04_publish's decisions: which trained checkpoint is published."""

from __future__ import annotations


def checkpoint_of(trained: dict, publish_model: str) -> str:
    """The folder of ``publish_model`` in 02's ``training.json``; an unknown name lists the trained ones."""
    if publish_model not in trained["models"]:
        raise KeyError(f"publish_model {publish_model!r} is not in training.json; trained: "
                       f"{', '.join(trained['models'])}")
    return trained["models"][publish_model]["path"]
