"""``DistillConfig``: every setting of one training, in one frozen, nested object, from the notebook to the loss.

02_distill builds one per training (``fslib.stages.distill.student_trainings``, ``teacher_preparation``), each
validated as it is built, and hands it down
whole: ``fslib.training.jobs.run(cfg)`` loads what it names, ``fslib.training.loop.train(..., cfg)`` trains with it,
and ``cfg.loss`` goes straight to ``fslib.engine.losspaths.batch_loss``. It is written whole into the training's
folder (``distill_config.json``, which ``python -m fslib.training.jobs`` also reads) and into ``training.json``, and a
resume compares it. Field names are 02's parameter names wherever a parameter sets them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from fslib.core.fsio import write_json
from fslib.engine.losspaths import LossConfig

QUANTIZATIONS = ("none", "int8", "nf4")
DTYPES = ("float32", "bfloat16", "float16", "auto")
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
PIXEL_KEYS = ("image_min_pixels", "image_max_pixels", "video_min_pixels", "video_max_pixels", "video_total_pixels")
CONFIG_FILE = "distill_config.json"


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to 0; ``grad_accum`` micro-batches of ``batch_size`` per step."""

    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    patience: int = 0  # epochs without a lower validation loss before the training stops early; 0 runs every epoch

    def __post_init__(self):
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class ModelConfig:
    """The model being trained (the student, or the teacher during its preparation) and how it is adapted."""

    path: str
    dtype: str = "float32"
    lora: bool = False  # LoRA adapters on the language model instead of all its weights
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        _one_of("dtype", self.dtype, DTYPES)


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher the loss compares against: a checkpoint, or its offline top-k cache; None: labels only."""

    path: str | None = None
    dtype: str = "float32"
    quantization: str = "none"
    device_map: str = ""  # empty: the training device; "auto" spreads a large teacher over the GPUs
    cache_dir: str | None = None  # an offline teacher cache used instead of the teacher

    def __post_init__(self):
        _one_of("teacher dtype", self.dtype, DTYPES)
        _one_of("teacher_quantization", self.quantization, QUANTIZATIONS)


@dataclass(frozen=True)
class DataConfig:
    """Where the records come from and how they become tensors."""

    data_dir: str
    extra_train_dirs: tuple[str, ...] = ()  # dataset folders added to train (teacher-answered questions)
    samples_per_epoch: int | None = None  # an epoch's share of a larger train set (the SFT baseline's steps)
    pixels: dict = field(default_factory=dict)  # PIXEL_KEYS: the processor's bounds for images and clips
    max_length: int = 512

    def __post_init__(self):
        object.__setattr__(self, "extra_train_dirs", tuple(self.extra_train_dirs))
        missing = [k for k in PIXEL_KEYS if k not in self.pixels]
        if self.pixels and missing:
            raise ValueError(f"pixels lacks {missing}; expected {', '.join(PIXEL_KEYS)}")


@dataclass(frozen=True)
class OnPolicyConfig:
    """GKD: a share ``onpolicy_lambda`` of the micro-batches is answered by the student and scored by the teacher."""

    onpolicy_lambda: float = 0.0
    onpolicy_max_new_tokens: int = 8
    onpolicy_temperature: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.onpolicy_lambda <= 1.0:
            raise ValueError(f"onpolicy_lambda must be in [0, 1], got {self.onpolicy_lambda}")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the training runs; none of these changes what is learned, so a resume does not compare them."""

    save_every: int = 0  # optimizer steps between resume checkpoints (each epoch's end always writes one)
    resume: bool = False
    report_to: str = "none"
    vision_memo_gb: float = 2.0

    def __post_init__(self):
        _one_of("report_to", self.report_to, TRACKERS)


@dataclass(frozen=True)
class DistillConfig:
    """One training: what is trained (``model``) against what (``teacher``), on what (``data``), with which loss and
    optimisation, written to ``out_dir``."""

    label: str
    out_dir: str
    model: ModelConfig
    data: DataConfig
    teacher: TeacherConfig = TeacherConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    onpolicy: OnPolicyConfig = OnPolicyConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def __post_init__(self):
        if self.loss.alpha > 0 and not (self.teacher.path or self.teacher.cache_dir):
            raise ValueError(f"{self.label}: alpha {self.loss.alpha} weighs a KD term, but no teacher (path or cache) "
                             "is given; set alpha to 0 for plain fine-tuning")
        if self.onpolicy.onpolicy_lambda > 0 and self.teacher.cache_dir:
            raise ValueError("on-policy mixing needs a live teacher to score the student's samples; set "
                             "teacher_cache to False or onpolicy_lambda to 0")

    @property
    def uses_teacher(self) -> bool:
        """Whether the loss has a KD term (alpha > 0 and a teacher or its cache)."""
        return self.loss.alpha > 0

    def but(self, **changes) -> DistillConfig:
        """A copy with ``changes``; a part may be given as a dict of its own changes (``loss={"alpha": 0.0}``)."""
        parts = {k: dataclasses.replace(getattr(self, k), **v) if isinstance(v, dict) and k != "label" else v
                 for k, v in changes.items()}
        return dataclasses.replace(self, **parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        kinds = {"model": ModelConfig, "data": DataConfig, "teacher": TeacherConfig, "loss": LossConfig,
                 "optim": OptimConfig, "onpolicy": OnPolicyConfig, "runtime": RuntimeConfig}
        unknown = set(d) - set(kinds) - {"label", "out_dir"}
        if unknown:
            raise ValueError(f"unknown DistillConfig part(s) {sorted(unknown)}; valid: label, out_dir, {', '.join(kinds)}")
        return cls(label=d["label"], out_dir=d["out_dir"], **{k: kinds[k](**d[k]) for k in kinds if k in d})

    def resume_settings(self) -> dict:
        """What a resumed run must share with the interrupted one: everything but ``runtime`` and ``out_dir``. Paths
        inside the run folder are kept relative to it, so a run folder can be moved (or mounted elsewhere)."""
        run_root = Path(self.out_dir).resolve().parent

        def rel(path):
            if not path:
                return path
            p = Path(path).resolve()
            return str(p.relative_to(run_root)) if p.is_relative_to(run_root) else str(path)

        d = {k: v for k, v in self.to_dict().items() if k not in ("runtime", "out_dir")}
        d["model"]["path"], d["teacher"]["path"] = rel(d["model"]["path"]), rel(d["teacher"]["path"])
        d["teacher"]["cache_dir"], d["data"]["data_dir"] = rel(d["teacher"]["cache_dir"]), rel(d["data"]["data_dir"])
        d["data"]["extra_train_dirs"] = [rel(x) for x in d["data"]["extra_train_dirs"]]
        return d

    def write(self) -> Path:
        """``<out_dir>/distill_config.json``: what was trained, and what ``python -m fslib.training.jobs`` takes."""
        return write_json(Path(self.out_dir) / CONFIG_FILE, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> DistillConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def pixel_bounds(params: dict) -> dict:
    """The processor's pixel bounds (``PIXEL_KEYS``) from a stage's parameters: the one place 01, 02 and 03 build
    them, so every stage resizes images and clips the same way."""
    return {k: params[k] for k in PIXEL_KEYS}


def loader_config(out_dir, *, label: str = "student", teacher: str | None = None, cache_dir: str | None = None,
                  **settings) -> DistillConfig:
    """A ``DistillConfig`` for a training whose models and loaders the caller built itself (pre-training, tests,
    benchmarks): ``settings`` are fields of the loss, optim, onpolicy and runtime parts, by their names."""
    parts = {"loss": LossConfig, "optim": OptimConfig, "onpolicy": OnPolicyConfig, "runtime": RuntimeConfig}
    given = {name: {} for name in parts}
    for key, value in settings.items():
        owner = [name for name, kind in parts.items() if key in {f.name for f in dataclasses.fields(kind)}]
        if not owner:
            raise TypeError(f"unknown setting {key!r}; valid: "
                            + ", ".join(f.name for kind in parts.values() for f in dataclasses.fields(kind)))
        given[owner[0]][key] = value
    return DistillConfig(label=label, out_dir=str(out_dir), model=ModelConfig(path=""), data=DataConfig(data_dir=""),
                         teacher=TeacherConfig(path=teacher, cache_dir=cache_dir),
                         **{name: parts[name](**kw) for name, kw in given.items()})
