"""Logit distillation losses, as pure functions: teacher Qwen2-VL-7B, student Qwen2-VL-2B.

    L = alpha * T^2 * D(p_t, p_s) + (1 - alpha) * CE(student, labels),  p = softmax(z / T)

averaged over the answer tokens of the batch (not over sequences). Three entry points share the formulas:

* ``kd_loss``: from both models' full logits (B, L, V).
* ``chunked_kd_loss``: from final hidden states and lm_head weights, without ever holding (N, V) logits.
* ``topk_kd_loss``: against an offline teacher cache of top-k logits per answer token.

Conventions shared by all three:

* ``labels`` (B, L) are unshifted, as transformers takes them: position i's logits predict ``labels[:, i + 1]``.
  Positions whose shifted label is -100 (prompt, image, padding) are dropped before anything is computed, so their
  logits cannot change the result. All positions masked gives loss = kd = ce = 0, with a zero gradient.
* The teacher's output layer may be larger than the student's (Qwen2-VL-7B: 152,064 rows, 2B: 151,936). Rows past
  the shared tokenizer are padding that no real token maps to, so cutting the teacher to the student's first V_s
  columns is exact. ``vocab_size`` cuts both further (e.g. to ``len(tokenizer)``).
* Softmaxes run in float32 whatever the input dtype. The teacher is a constant (no gradient reaches it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fslib.engine.kd_chunked import forward_kl_and_ce, fused_linear_kd, grad_by_autograd
from fslib.engine.labels import IGNORE_INDEX, counted  # noqa: F401  (IGNORE_INDEX: the losses' documented label)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd")
# A finite stand-in for log(0): with it, a zero-probability entry contributes 0 * finite = 0 to a KL sum, where
# log(0) = -inf would give 0 * inf = NaN.
_LOG_FLOOR = torch.finfo(torch.float32).min
_ROW_BLOCK = 512  # rows per block where a KL value is summed blockwise (see _kl)


@dataclass
class KDLoss:
    """``loss`` to optimise; ``kd`` the mean divergence D (without alpha or T^2); ``ce`` the mean cross-entropy
    (T = 1); ``n_tokens`` the counted answer tokens. Also readable as a mapping: ``out["loss"]``, ``dict(out)``."""

    loss: Tensor
    kd: Tensor
    ce: Tensor
    n_tokens: int

    def keys(self) -> tuple[str, ...]:
        return ("loss", "kd", "ce", "n_tokens")

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(f"{key!r}; valid keys: {self.keys()}")
        return getattr(self, key)


# ---------------------------------------------------------------- divergences, per token, from log-probabilities


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product (N, C), (N, C) -> (N,) as a batched matmul, so no (N, C) product is allocated."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def _kl(lp_p: Tensor, lp_q: Tensor) -> Tensor:
    """KL(p || q) = sum p * (log p - log q) per row: (N, C), (N, C) -> (N,).

    Rows with p = 0 (log p at the floor) contribute 0 x finite = 0. Where p is a constant (the teacher), only
    p itself is kept for backward: the value is summed in row blocks, so no whole (N, C) difference or product
    exists, and the gradient comes from -sum p log q, the only term that depends on q. That matters at
    V = 151,936; writing the value as sum p log p - sum p log q instead would lose ~1e-5 to cancellation.
    """
    p = lp_p.exp()
    if lp_p.requires_grad:
        return _rowdot(p, lp_p - lp_q)
    value = torch.empty(p.shape[:-1], dtype=p.dtype, device=p.device)
    with torch.no_grad():
        for i in range(0, p.shape[0], _ROW_BLOCK):
            rows = slice(i, i + _ROW_BLOCK)
            value[rows] = _rowdot(p[rows], lp_p[rows] - lp_q[rows])
    cross = _rowdot(p, lp_q)
    return value + (cross.detach() - cross)  # adds exactly 0, and the gradient of -sum p log q


def _log_mixture(lp_t: Tensor, lp_s: Tensor, w_t: float) -> Tensor:
    """log(w_t * p_t + (1 - w_t) * p_s), computed in log space (logaddexp) so that nothing underflows."""
    if w_t == 0:
        return lp_s
    if w_t == 1:
        return lp_t
    return torch.logaddexp(lp_t + math.log(w_t), lp_s + math.log1p(-w_t))


def token_divergence(lp_s: Tensor, lp_t: Tensor, divergence: str, beta: float) -> Tensor:
    """Per-token divergence D(p_t, p_s) from log-probabilities at temperature T: (N, C), (N, C) -> (N,).

    * ``forward_kl``: KL(p_t || p_s) (Hinton et al. 2015). Mass-covering.
    * ``reverse_kl``: KL(p_s || p_t) (MiniLLM, Gu et al. 2023). Mode-seeking.
    * ``jsd``: generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024, Eq. 1), with beta defined exactly
      as TRL's ``GKDTrainer.generalized_jsd_loss`` (since huggingface/trl PR #3043): m = beta * p_t +
      (1 - beta) * p_s and JSD = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m) for 0 < beta < 1; beta = 0 is
      forward KL(p_t || p_s) and beta = 1 is reverse KL(p_s || p_t), as special cases. Note that the interior
      formula tends to 0 at both ends (it is ~beta * KL(p_t || p_s) near beta = 0), so the loss jumps there.
    * ``skew_kl``: KL(p_t || a * p_t + (1 - a) * p_s) with skew a = beta (DistiLLM, Ko et al. 2024, who use
      a = 0.1). a = 0 is forward KL; a = 1 gives 0.
    * ``tvd``: total variation 0.5 * sum |p_t - p_s|.
    """
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0):
        return _kl(lp_t, lp_s)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1):
        return _kl(lp_s, lp_t)
    if divergence == "jsd":
        lp_m = _log_mixture(lp_t, lp_s, beta)
        return beta * _kl(lp_t, lp_m) + (1 - beta) * _kl(lp_s, lp_m)
    if divergence == "skew_kl":
        return _kl(lp_t, _log_mixture(lp_t, lp_s, beta))
    if divergence == "tvd":
        return 0.5 * (lp_t.exp() - lp_s.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")


# ---------------------------------------------------------------- shared helpers


def check_args(divergence: str, beta: float, temperature: float, alpha: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _shared_vocab(v_student: int, v_teacher: int, vocab_size: int | None) -> int:
    """How many leading vocabulary columns both models are compared on."""
    if vocab_size is not None:
        if not 0 < vocab_size <= min(v_student, v_teacher):
            raise ValueError(f"vocab_size={vocab_size} must be in [1, min(student {v_student}, teacher "
                             f"{v_teacher})]")
        return vocab_size
    if v_teacher < v_student:
        raise ValueError(f"the teacher's vocabulary ({v_teacher}) is smaller than the student's ({v_student}): "
                         "student tokens past it have no teacher probability. Pass vocab_size=len(tokenizer) "
                         "if both cover the tokenizer")
    return v_student


def _shifted_targets(labels: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """(B, L) labels -> mask (B, L - 1) of counted positions and their targets (N,), in row-major order."""
    mask = counted(labels)
    targets = labels[:, 1:][mask]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"labels must be -100 or token ids in [0, {vocab})")
    return mask, targets


@torch.no_grad()
def _teacher_log_probs(logits: Tensor, temperature: float, *, overwrite: bool = False) -> Tensor:
    """log_softmax(logits / T) in float32, (N, C) -> (N, C), with a finite floor for -inf logits.

    In place on ``logits`` if ``overwrite`` and it is float32; otherwise on a new tensor, never the caller's.
    """
    if overwrite and logits.dtype == torch.float32:
        lp = logits.div_(temperature)
    else:
        lp = logits.float() / temperature
    lp -= torch.logsumexp(lp, dim=-1, keepdim=True)  # in place: one (N, C) buffer instead of two
    return lp.clamp_(min=_LOG_FLOOR)


def _ce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy at T = 1 over rows: (N, V) float32, (N,) -> 0-dim."""
    # Same value as F.cross_entropy(reduction="sum"), but for backward logsumexp keeps its input, which exists
    # anyway, and its (N,) result, where cross_entropy would keep a second (N, V) log-softmax.
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return (torch.logsumexp(logits, dim=-1) - picked).sum()


def _combine(kd_sum: Tensor, ce_sum: Tensor, n_tokens: int, temperature: float, alpha: float) -> KDLoss:
    # An empty selection sums to an exact 0 that still has a (zero) gradient; max(n, 1) avoids 0 / 0 = NaN.
    denom = max(n_tokens, 1)
    kd, ce = kd_sum / denom, ce_sum / denom
    # T^2 keeps the soft-target gradients on the scale of the hard-label ones as T changes (Hinton et al. 2015).
    return KDLoss(alpha * temperature**2 * kd + (1 - alpha) * ce, kd, ce, n_tokens)


def _student_sums(s: Tensor, lp_t: Tensor, targets: Tensor, temperature: float, alpha: float, divergence: str,
                  beta: float) -> tuple[Tensor, Tensor]:
    """(kd sum, ce sum) from student logits (N, V) float32 and teacher log-probs (N, V)."""
    ce_sum = _ce_sum(s, targets)  # first, so that its (N, V) temporary is gone before the divergence's exist
    # With alpha = 0 the divergence is only logged, so it gets no graph (the SFT baseline saves its memory).
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha > 0):
        lp_s = F.log_softmax(s / temperature, dim=-1)
        kd_sum = token_divergence(lp_s, lp_t, divergence, beta).sum()
    return kd_sum, ce_sum


# ---------------------------------------------------------------- public losses


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float = 3.0,
            alpha: float = 0.7, divergence: str = "forward_kl", beta: float = 0.5,
            vocab_size: int | None = None) -> KDLoss:
    """Distillation loss from full logits (see the module docstring for the formula and conventions).

    Shapes: student_logits (B, L, V_s), teacher_logits (B, L, V_t) with V_t >= V_s, labels (B, L) unshifted with
    -100 for ignored positions. ``divergence`` is one of ``DIVERGENCES`` (see ``token_divergence``; ``beta`` is
    the JSD interpolation or the skew of ``skew_kl``). Returns a ``KDLoss`` of 0-dim float32 tensors.
    """
    check_args(divergence, beta, temperature, alpha)
    if student_logits.shape[:2] != labels.shape or teacher_logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(student_logits.shape)} / {tuple(teacher_logits.shape)} do not match "
                         f"labels {tuple(labels.shape)} in (B, L)")
    vocab = _shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size)
    mask, targets = _shifted_targets(labels, vocab)
    # Counted rows are selected before any upcast or softmax: masked positions cost nothing and leak nothing.
    # The selection is a copy, so the teacher's log-probs can overwrite it.
    lp_t = _teacher_log_probs(teacher_logits[:, :-1, :vocab][mask], temperature, overwrite=True)  # (N, V)
    s = student_logits[:, :-1, :vocab][mask].float()  # (N, V)
    kd_sum, ce_sum = _student_sums(s, lp_t, targets, temperature, alpha, divergence, beta)
    return _combine(kd_sum, ce_sum, targets.numel(), temperature, alpha)


def chunked_kd_loss(student_hidden: Tensor, student_head_weight: Tensor, teacher_hidden: Tensor,
                    teacher_head_weight: Tensor, labels: Tensor, *, temperature: float = 3.0, alpha: float = 0.7,
                    divergence: str = "forward_kl", beta: float = 0.5, chunk_size: int = 1024,
                    vocab_size: int | None = None, student_head_bias: Tensor | None = None,
                    teacher_head_bias: Tensor | None = None) -> KDLoss:
    """``kd_loss`` on ``hidden @ W.T (+ b)`` of both models, computed ``chunk_size`` answer tokens at a time.

    Shapes: student_hidden (B, L, H_s) after the final norm, student_head_weight (V_s, H_s); teacher_hidden
    (B, L, H_t), teacher_head_weight (V_t, H_t) with V_t >= V_s; labels (B, L) unshifted. Only the N counted
    positions are projected, and at most (chunk_size, V) logits of each model exist at once, so memory is
    O(chunk_size x V + V x H_s) instead of O(N x V). Value and gradients equal ``kd_loss`` on the full logits.
    ``loss`` carries the gradient (to the student's hidden states, head weight and bias); here ``kd`` and ``ce``
    are detached, for logging. See ``fslib.engine.kd_chunked`` for how the backward is done.
    """
    check_args(divergence, beta, temperature, alpha)
    if student_hidden.shape[:2] != labels.shape or teacher_hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden states {tuple(student_hidden.shape)} / {tuple(teacher_hidden.shape)} do not "
                         f"match labels {tuple(labels.shape)} in (B, L)")
    vocab = _shared_vocab(student_head_weight.shape[0], teacher_head_weight.shape[0], vocab_size)
    mask, targets = _shifted_targets(labels, vocab)
    n = targets.numel()
    w_kd, w_ce = alpha * temperature**2 / max(n, 1), (1 - alpha) / max(n, 1)
    by_hand = divergence == "forward_kl" or (divergence in ("jsd", "skew_kl") and beta == 0)

    def chunk_fn(z_s: Tensor, z_t: Tensor, y: Tensor, need_grad: bool):
        lp_t = _teacher_log_probs(z_t, temperature, overwrite=True)  # z_t is this chunk's own buffer
        if by_hand:
            return forward_kl_and_ce(z_s, lp_t, y, temperature, w_kd, w_ce, need_grad)
        sums = (lambda z: _student_sums(z, lp_t, y, temperature, alpha, divergence, beta))  # noqa: E731
        return grad_by_autograd(z_s, sums, w_kd, w_ce, need_grad)

    loss, kd_sum, ce_sum = fused_linear_kd(
        student_hidden[:, :-1][mask], student_head_weight, student_head_bias,
        teacher_hidden[:, :-1][mask], teacher_head_weight, teacher_head_bias,
        targets, chunk_fn, w_kd=w_kd, w_ce=w_ce, chunk_size=chunk_size, vocab=vocab)
    return KDLoss(loss, kd_sum / max(n, 1), ce_sum / max(n, 1), n)


def topk_kd_loss(student_logits: Tensor, teacher_topk_values: Tensor, teacher_topk_indices: Tensor,
                 labels: Tensor, *, temperature: float = 3.0, alpha: float = 0.7, divergence: str = "forward_kl",
                 beta: float = 0.5, teacher_log_partition: Tensor | None = None) -> KDLoss:
    """``kd_loss`` against an offline teacher cache of its k largest logits per answer token.

    Shapes: student_logits (B, L, V); teacher_topk_values (N, k) raw teacher logits (e.g. fp16) and
    teacher_topk_indices (N, k) their token ids (e.g. int32), one row per counted position of the shifted labels,
    in row-major order (``labels[:, 1:] != -100``); labels (B, L) unshifted; teacher_log_partition (N,) float32,
    logsumexp(z_t / T) over the teacher's whole (student-sized) vocabulary at this ``temperature``, or None.

    Tail mass. Both distributions are compared over k + 1 buckets: the teacher's k ids, and one "tail" bucket for
    all other tokens; the student's softmax(z_s / T) is collapsed into them (its probabilities at the k ids, plus
    all its other mass). With the log-partition the teacher's buckets are exact: p_t,i = exp(z_i / T - logZ_T) at
    its k ids and 1 - sum of them in the tail, so D is the exact divergence of the teacher's and student's
    (k + 1)-bucket distributions (a lower bound on the full-vocabulary D, equal to it with k = V). Without it the
    teacher is renormalised over its k ids, softmax(values / T), with an empty tail bucket: forward KL then pushes
    the student's tail mass towards 0, and reverse KL (and ``jsd`` with beta = 1) would be infinite against the
    empty bucket, so they raise unless k = V.
    """
    check_args(divergence, beta, temperature, alpha)
    vocab = student_logits.shape[-1]
    mask, targets = _shifted_targets(labels, vocab)
    n, k = teacher_topk_values.shape
    if n != targets.numel() or teacher_topk_indices.shape != teacher_topk_values.shape:
        raise ValueError(f"top-k cache {tuple(teacher_topk_values.shape)} / {tuple(teacher_topk_indices.shape)} "
                         f"must be (N, k) with N = {targets.numel()} counted tokens")
    idx = teacher_topk_indices.long()
    if n and (int(idx.min()) < 0 or int(idx.max()) >= vocab):
        raise ValueError(f"top-k token ids must be in [0, {vocab}); cut the teacher to the student's vocabulary "
                         "before taking the top k")
    if teacher_log_partition is not None and teacher_log_partition.shape != (n,):
        raise ValueError(f"teacher_log_partition {tuple(teacher_log_partition.shape)} must be ({n},)")
    empty_tail = teacher_log_partition is None and k < vocab
    if empty_tail and (divergence == "reverse_kl" or (divergence == "jsd" and beta == 1)):
        raise ValueError(f"{divergence} (beta={beta}) is infinite against a renormalised top-{k} teacher; use "
                         "forward_kl, skew_kl, tvd or jsd with beta < 1, or give the teacher's log-partition (02: "
                         "teacher_cache_tail exact)")
    s = student_logits[:, :-1][mask].float()  # (N, V)
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha > 0):
        lp_s = _collapse_to_buckets(F.log_softmax(s / temperature, dim=-1), idx)  # (N, k + 1)
        # with k = V nothing is left for the tail (whatever fp16 rounding of the values says)
        lp_t = _teacher_buckets(teacher_topk_values, None if k >= vocab else teacher_log_partition, temperature)
        kd_sum = token_divergence(lp_s, lp_t, divergence, beta).sum()
    return _combine(kd_sum, _ce_sum(s, targets), n, temperature, alpha)


def _teacher_buckets(values: Tensor, log_partition: Tensor | None, temperature: float) -> Tensor:
    """Teacher log-probs (N, k + 1): its k ids, then its tail (exact with the log-partition; else empty, the k ids
    renormalised)."""
    if log_partition is None:
        floor = torch.full((values.shape[0], 1), _LOG_FLOOR, device=values.device)
        return torch.cat([_teacher_log_probs(values, temperature), floor], dim=1)
    lp = values.float() / temperature - log_partition.to(values.device, torch.float32)[:, None]
    # fp16 logits can put the k ids' sum a hair above 1; the tail is then clamped to the floor.
    head = torch.logsumexp(lp, dim=-1, keepdim=True).clamp(max=0.0)
    tail = torch.log(-torch.expm1(head)).clamp(min=_LOG_FLOOR)  # log(1 - sum p), accurate when the sum is small
    # the k ids renormalised to the head's mass, so the k + 1 buckets sum to exactly 1
    return torch.cat([lp - torch.logsumexp(lp, dim=-1, keepdim=True) + head, tail], dim=1)


def _collapse_to_buckets(lp_s: Tensor, idx: Tensor) -> Tensor:
    """Student log-probs (N, V) -> (N, k + 1): the k ids of ``idx`` (N, k), then log of all remaining mass."""
    # Setting the k ids to -inf and taking logsumexp gives the tail exactly (no 1 - sum(p) cancellation). With
    # k = V the tail is log 0; the floor keeps it finite, and scatter's backward zeroes the gradient there.
    rest = lp_s.scatter(1, idx, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1, keepdim=True).clamp(min=_LOG_FLOOR)
    return torch.cat([lp_s.gather(1, idx), tail], dim=1)
