"""One batch -> one ``fslib.engine.kd.KDLoss``: the forward passes of both models and the choice of loss path.

* ``full`` (the reference): both models' logits over the full vocabulary and ``kd.kd_loss``, projected at the answer
  positions only (``logits_to_keep`` as a boolean mask): a prompt's visual and text tokens never count in the loss, so
  their (B, L, V) logits (fp32, 151,936 columns in the real pair) are never built.
* ``chunked``: both models' final hidden states (after the last norm) and lm_head weights, and
  ``kd.chunked_kd_loss``; no (B, L, V) logits ever exist. The hidden states are caught by a forward hook on the final
  norm while the model is called as a whole (through its DDP wrapper, on the whole processor output) with
  ``logits_to_keep=1``, so the model's own head projects a single position.
* cached teacher: the student's logits at the answer positions only (``logits_to_keep`` as a boolean mask) against
  the teacher's stored top-k logits, with ``kd.topk_kd_loss``; no teacher is loaded.

Without a teacher (SFT baseline, teacher preparation) the loss is the cross-entropy alone (alpha = 0).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from fslib.engine import kd
from fslib.engine.labels import IGNORE_INDEX, counted

IMPLS = ("full", "chunked")


@dataclass(frozen=True)
class LossConfig:
    """The loss of one training (see ``fslib.engine.kd``): L = alpha * T^2 * D(p_t, p_s) + (1 - alpha) * CE, computed
    by the ``kd_impl`` path. Field names are 02's parameter names; the notebook's values reach the loss unrenamed."""

    temperature: float = 3.0
    alpha: float = 0.7
    divergence: str = "forward_kl"
    beta: float = 0.5
    kd_impl: str = "full"
    kd_chunk_size: int = 1024

    def __post_init__(self):
        kd.check_args(self.divergence, self.beta, self.temperature, self.alpha)
        if self.kd_impl not in IMPLS:
            raise ValueError(f"kd_impl {self.kd_impl!r} is not one of: {', '.join(IMPLS)}")
        if self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be >= 1, got {self.kd_chunk_size}")

    def kd_kwargs(self, alpha: float | None = None) -> dict:
        """The arguments every ``fslib.engine.kd`` loss takes (``alpha`` overridden where given)."""
        return dict(temperature=self.temperature, alpha=self.alpha if alpha is None else alpha,
                    divergence=self.divergence, beta=self.beta)


def to_device(inputs: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def _inner(model):
    """The transformers model under DDP/FSDP (``.module``) and PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight (V, H) and bias (or None): tied to the input embedding in Qwen2-VL-2B."""
    lm_head = _inner(model).get_output_embeddings()
    return lm_head.weight, lm_head.bias


@contextlib.contextmanager
def _final_hidden(model):
    """Catch the output of the decoder's final norm, i.e. the hidden states the lm_head projects: (B, L, H)."""
    box = {}
    handle = _inner(model).get_decoder().norm.register_forward_hook(lambda _m, _i, out: box.__setitem__("h", out))
    try:
        yield box
    finally:
        handle.remove()


def final_hidden_states(model, inputs: dict) -> torch.Tensor:
    """(B, L, H) after the final norm, from one call of the whole model that projects only one position."""
    with _final_hidden(model) as box:
        model(**inputs, logits_to_keep=1)
    return box["h"]


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: position i is counted when its next token ``labels[:, i + 1]`` is an answer token."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = counted(labels)
    return keep


def _as_sequence(rows: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the N counted positions (N, V) -> a (1, N + 1, V) sequence whose shifted labels are their targets,
    the layout ``kd`` takes (position j predicts label j + 1; one dummy row closes the sequence)."""
    targets = labels[:, 1:][counted(labels)]
    seq = torch.cat([rows, rows.new_zeros(1, rows.shape[-1])])[None]
    seq_labels = torch.cat([targets.new_full((1,), IGNORE_INDEX), targets])[None]
    return seq, seq_labels


def batch_loss(student, teacher, batch: dict, *, loss: LossConfig, device, cache=None) -> kd.KDLoss:
    """Forward on the *whole* processor output (pixels included) and the loss of ``loss.kd_impl``'s path.

    ``teacher`` is a frozen model, or None; ``cache`` a ``fslib.training.cache.TeacherCache`` used instead of a teacher.
    """
    spec = loss
    inputs = to_device(batch["inputs"], device)
    labels = batch["labels"].to(device)
    if cache is not None and spec.alpha > 0:
        return _cached_loss(student, cache, batch["ids"], inputs, labels, spec)
    if spec.kd_impl == "chunked":
        return _chunked_loss(student, teacher, inputs, labels, spec)
    keep = answer_positions(labels)
    seq, seq_labels = _as_sequence(student(**inputs, logits_to_keep=keep).logits, labels)
    if teacher is None:  # plain fine-tuning: CE only (the divergence against itself is 0)
        return kd.kd_loss(seq, seq.detach(), seq_labels, **spec.kd_kwargs(alpha=0.0))
    with torch.no_grad():
        t_seq, _ = _as_sequence(teacher(**inputs, logits_to_keep=keep).logits, labels)
    return kd.kd_loss(seq, t_seq.to(seq.device), seq_labels, **spec.kd_kwargs())


def _chunked_loss(student, teacher, inputs, labels, spec: LossConfig) -> kd.KDLoss:
    h_s = final_hidden_states(student, inputs)
    w_s, b_s = head(student)
    if teacher is None:  # CE only: the student's detached copy stands in for the teacher (its KD term is 0)
        h_t, w_t, b_t, kw = h_s.detach(), w_s.detach(), None if b_s is None else b_s.detach(), spec.kd_kwargs(0.0)
    else:
        with torch.no_grad():
            h_t = final_hidden_states(teacher, inputs)
        (w_t, b_t), kw = head(teacher), spec.kd_kwargs()
    return kd.chunked_kd_loss(h_s, w_s, h_t.to(h_s.device), w_t, labels, chunk_size=spec.kd_chunk_size,
                              student_head_bias=b_s, teacher_head_bias=b_t, **kw)


def _cached_loss(student, cache, ids, inputs, labels, spec: LossConfig) -> kd.KDLoss:
    counts = counted(labels).sum(1).tolist()
    values, indices, log_z = cache.rows(ids, counts)
    if log_z is not None and cache.temperature != spec.temperature:
        raise ValueError(f"the teacher cache {cache.folder} holds the log-partition at T = {cache.temperature}, not "
                         f"the training temperature {spec.temperature}: rebuild it with cache.ensure(temperature=...)")
    rows = student(**inputs, logits_to_keep=answer_positions(labels)).logits  # (N, V), row-major like the cache
    seq, seq_labels = _as_sequence(rows, labels)
    return kd.topk_kd_loss(seq, values.to(rows.device), indices.to(rows.device), seq_labels, **spec.kd_kwargs(),
                           teacher_log_partition=None if log_z is None else log_z.to(rows.device))
