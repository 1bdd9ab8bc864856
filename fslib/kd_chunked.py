"""Fused lm_head + distillation loss over token chunks, so that no (N, V) logits are ever held.

``fslib.kd.chunked_kd_loss`` is the public entry point; this module holds only the autograd machinery, and takes
the per-chunk loss as a function so that the formulas live in one place (``fslib.kd``).

Why the gradient is computed in the forward pass. Holding both models' logits for N answer tokens costs
2 x N x V x 4 bytes (5 GB for N = 4,096 and Qwen2-VL's V = 151,936) before any softmax. Here the logits exist
one chunk of C rows at a time. A backward that recomputed each chunk would redo both lm_head products (the
teacher's, with H = 3,584, is the largest matmul of the step); instead each chunk's gradient w.r.t. its student
logits is taken right away (exact, by autograd on that chunk alone) and folded into the gradients of the student's
hidden states (N, H_s) and head weight (V, H_s). Those are the only tensors kept for backward, and the head
weight's gradient has to exist in any implementation. This is the fused-linear approach of Liger-Kernel's
``LigerFusedLinearJSDLoss``. Peak memory is O(C x V + V x H_s); the matmul work equals the unchunked loss's.
Under ``torch.no_grad`` (evaluation) no gradient is computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# (student logits (C, V) float32, teacher logits (C, V) float32, targets (C,)) -> (kd sum, ce sum), 0-dim each.
# It may overwrite the teacher logits, which are a fresh buffer each chunk.
ChunkSums = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # The product runs in the weights' dtype, as the model's own lm_head does; only the (C, V) result is upcast.
    return F.linear(hidden, weight, bias).float()


class _FusedLinearKD(torch.autograd.Function):
    """loss = w_kd * sum(kd) + w_ce * sum(ce) over N tokens; see the module docstring."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, targets, chunk_sums, weights, chunk_size, vocab, needs):
        w_kd, w_ce = weights
        need_h, need_w, need_b = needs
        n = h_s.shape[0]
        g_h = torch.zeros_like(h_s) if need_h else None  # (N, H_s)
        # Float32 accumulators, since summing many chunk updates in bf16 would lose the small ones. Full size, with
        # the first V rows filled: cutting the weights outside this function would make autograd's slice backward
        # allocate a second (V_s, H_s) buffer.
        g_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None  # (V_s, H_s)
        g_b = torch.zeros(b_s.shape, dtype=torch.float32, device=w_s.device) if need_b else None  # (V_s,)
        w_s, b_s, w_t, b_t = (None if x is None else x[:vocab] for x in (w_s, b_s, w_t, b_t))
        kd_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            z_t = _chunk_logits(h_t[rows], w_t, b_t)  # (C, V); forward() runs without grad: the teacher is frozen
            z_s = _chunk_logits(h_s[rows], w_s, b_s)  # (C, V)
            if not (need_h or need_w or need_b):
                kd_c, ce_c = chunk_sums(z_s, z_t, targets[rows])
            else:
                with torch.enable_grad():
                    z_s.requires_grad_(True)
                    kd_c, ce_c = chunk_sums(z_s, z_t, targets[rows])
                    (dz,) = torch.autograd.grad(w_kd * kd_c + w_ce * ce_c, z_s)  # (C, V) float32
                _accumulate(dz, h_s[rows], w_s, g_h, g_w, g_b, rows, vocab)
            kd_sum += kd_c.detach()
            ce_sum += ce_c.detach()
        ctx.save_for_backward(g_h, g_w, g_b)
        ctx.param_dtypes = (w_s.dtype, None if b_s is None else b_s.dtype)
        ctx.used = False
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return w_kd * kd_sum + w_ce * ce_sum, kd_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        if ctx.used:
            raise RuntimeError("chunked_kd_loss: backward ran twice through the same graph; its stored gradients "
                               "are scaled in place (no second (V, H_s) buffer), so call chunked_kd_loss again")
        ctx.used = True
        g_h, g_w, g_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        # In place: an out-of-place product would hold a second (V, H_s) float32 gradient at the peak.
        g_h = None if g_h is None else g_h.mul_(grad_loss.to(g_h.dtype))
        g_w = None if g_w is None else g_w.mul_(grad_loss).to(w_dtype)
        g_b = None if g_b is None else g_b.mul_(grad_loss).to(b_dtype)
        return g_h, g_w, g_b, None, None, None, None, None, None, None, None, None


def _accumulate(dz, h_rows, w_s, g_h, g_w, g_b, rows, vocab) -> None:
    """Chain rule through logits = h @ W.T + b for one chunk: dh = dz @ W, dW += dz.T @ h, db += sum(dz)."""
    if g_h is not None:
        # dz is cast to the weights' dtype first, as autograd does for a bf16 lm_head
        g_h[rows] = (dz.to(w_s.dtype) @ w_s).to(g_h.dtype)
    if g_w is not None:
        g_w[:vocab].addmm_(dz.T, h_rows.float())  # in place: no second (V, H_s) buffer per chunk
    if g_b is not None:
        g_b[:vocab] += dz.sum(0)


def fused_linear_kd(h_s: Tensor, w_s: Tensor, b_s: Tensor | None, h_t: Tensor, w_t: Tensor, b_t: Tensor | None,
                    targets: Tensor, chunk_sums: ChunkSums, *, w_kd: float, w_ce: float, chunk_size: int,
                    vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, kd_sum, ce_sum)`` with ``loss = w_kd * kd_sum + w_ce * ce_sum``, summed over N token rows.

    Shapes: h_s (N, H_s), w_s (V_s, H_s), b_s (V_s,) or None; h_t (N, H_t), w_t (V_t, H_t), b_t (V_t,) or None;
    targets (N,). Both heads are used up to their first ``vocab`` rows. Only ``loss`` carries a gradient (to h_s, w_s and b_s);
    ``kd_sum`` and ``ce_sum`` are detached, for logging. The teacher's tensors never receive a gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (h_s, w_s, b_s))
    return _FusedLinearKD.apply(h_s, w_s, b_s, h_t.detach(), w_t.detach(),
                                None if b_t is None else b_t.detach(), targets, chunk_sums,
                                (w_kd, w_ce), chunk_size, vocab, needs)
