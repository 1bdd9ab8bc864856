"""04_publish's decisions: which trained student is published, and from which checkpoint."""

from __future__ import annotations

BEST = "best"


def model_to_publish(metrics: dict, publish_model: str) -> str:
    """``publish_model`` as a row of metrics.json: "best" is the student 03 chose on validation
    (``metrics["choice"]``, fslib.evaluation.choice), or the KD student ("student") when 03 made no choice; any
    other name (e.g. "student" to force the KD student) is taken as given."""
    if publish_model != BEST:
        print(f"publish_model {publish_model!r}: published as asked"
              + (f" (03's choice on validation was {metrics['choice']['model']!r})" if metrics.get("choice") else ""),
              flush=True)
        return publish_model
    chosen = metrics.get("choice")
    key = chosen["model"] if chosen else "student"
    print(f"publish_model 'best': {key!r}, " + (f"03's choice on the {chosen['split']} split. {chosen['reason']}"
                                               if chosen else "the KD student (03 made no choice on validation)."),
          flush=True)
    return key


def checkpoint_of(trained: dict, publish_model: str) -> str:
    """The folder of ``publish_model`` in 02's ``training.json``; an unknown name lists the trained ones."""
    if publish_model not in trained["models"]:
        raise KeyError(f"publish_model {publish_model!r} is not in training.json; trained: "
                       f"{', '.join(trained['models'])}")
    return trained["models"][publish_model]["path"]
