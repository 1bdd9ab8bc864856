"""Fused lm_head + distillation loss over token chunks, so that no (N, V) logits are ever held.

``fslib.engine.kd.chunked_kd_loss`` is the public entry point; this module holds the autograd machinery. The formulas
stay in ``fslib.engine.kd``: the machinery takes a per-chunk function that returns the chunk's loss sums and their
gradient w.r.t. the chunk's student logits, either by autograd on that chunk alone (``grad_by_autograd``, any
divergence) or by hand (``forward_kl_and_ce``, the default divergence, with half the (C, V) buffers).

Why the gradient is computed in the forward pass. Holding both models' logits for N answer tokens costs
2 x N x V x 4 bytes (5 GB for N = 4,096 and Qwen2-VL's V = 151,936) before any softmax. Here the logits exist
one chunk of C rows at a time. A backward that recomputed each chunk would redo both lm_head products (the
teacher's, with H = 3,584, is the largest matmul of the step); instead each chunk's gradient w.r.t. its logits is
taken at once and folded into the gradients of the student's hidden states (N, H_s) and head weight (V, H_s).
Those are the only tensors kept for backward, and the head weight's gradient has to exist in any implementation.
This is the fused-linear approach of Liger-Kernel's ``LigerFusedLinearJSDLoss``. Peak memory is
O(C x V + V x H_s); the matmul work equals the unchunked loss's. Under ``torch.no_grad`` no gradient is computed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# (student logits (C, V), teacher logits (C, V), targets (C,), need_grad) -> (kd sum, ce sum, d loss / d student
# logits (C, V) or None). Logits are float32 buffers of this chunk alone, so the function may overwrite them.
ChunkFn = Callable[[Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor, Tensor | None]]


def grad_by_autograd(z_s: Tensor, sums: Callable[[Tensor], tuple[Tensor, Tensor]], w_kd: float, w_ce: float,
                     need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(kd sum, ce sum, d(w_kd * kd + w_ce * ce) / d z_s) by autograd through ``sums(z_s)``, one chunk's graph."""
    if not need_grad:
        kd_sum, ce_sum = sums(z_s)
        return kd_sum, ce_sum, None
    with torch.enable_grad():  # autograd.Function.forward runs under no_grad
        z_s.requires_grad_(True)
        kd_sum, ce_sum = sums(z_s)
        (dz,) = torch.autograd.grad(w_kd * kd_sum + w_ce * ce_sum, z_s)
    return kd_sum.detach(), ce_sum.detach(), dz


def forward_kl_and_ce(z_s: Tensor, lp_t: Tensor, targets: Tensor, temperature: float, w_kd: float, w_ce: float,
                      need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sums of KL(p_t || softmax(z_s / T)) and CE(z_s, targets) over a chunk, and the gradient by hand.

    d KL / d z_s = (p_s - p_t) / T and d CE / d z_s = softmax(z_s) - onehot(targets). Same values as autograd
    through ``fslib.engine.kd``'s formulas, with three (C, V) buffers instead of about eight: z_s (C, V) and the teacher's
    log-probabilities lp_t (C, V) are overwritten, and one more is allocated. targets (C,).
    """
    lse = torch.logsumexp(z_s, dim=-1)  # (C,), log-partition at T = 1
    ce_sum = (lse - z_s.gather(1, targets[:, None]).squeeze(1)).sum()
    lp_s = z_s.div_(temperature)  # z_s's buffer holds log p_s from here on
    lse_t = torch.logsumexp(lp_s, dim=-1)  # (C,), log-partition at T
    lp_s.sub_(lse_t[:, None])
    buf = torch.sub(lp_t, lp_s)
    p_t = lp_t.exp_()  # lp_t is not needed after the difference
    kd_sum = buf.mul_(p_t).sum()
    if not need_grad:
        return kd_sum, ce_sum, None
    # softmax(z_s) = exp(T * log p_s + T * lse_t - lse), since T * log p_s = z_s - T * lse_t: z_s is gone by now
    torch.mul(lp_s, temperature, out=buf).add_((temperature * lse_t - lse)[:, None]).exp_()
    dz = lp_s.exp_().sub_(p_t).mul_(w_kd / temperature).add_(buf, alpha=w_ce)
    dz[torch.arange(targets.numel(), device=dz.device), targets] -= w_ce
    return kd_sum, ce_sum, dz


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # The product runs in the weights' dtype, as the model's own lm_head does; only the (C, V) result is upcast.
    return F.linear(hidden, weight, bias).float()


class _FusedLinearKD(torch.autograd.Function):
    """loss = kd_sum * w_kd + ce_sum * w_ce over N tokens (weights applied inside chunk_fn); see the module doc."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, targets, chunk_fn, weights, chunk_size, vocab, needs):
        need_h, need_w, need_b = needs
        g_h = torch.zeros_like(h_s) if need_h else None  # (N, H_s)
        # Float32 accumulators, since summing many chunk updates in bf16 would lose the small ones. Full size, with
        # the first V rows filled: cutting the weights outside this function would make autograd's slice backward
        # allocate a second (V_s, H_s) buffer.
        g_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if need_w else None  # (V_s, H_s)
        g_b = torch.zeros(b_s.shape, dtype=torch.float32, device=w_s.device) if need_b else None  # (V_s,)
        w_s, b_s, w_t, b_t = (None if x is None else x[:vocab] for x in (w_s, b_s, w_t, b_t))
        kd_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=h_s.device)
        for start in range(0, h_s.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            z_t = _chunk_logits(h_t[rows], w_t, b_t)  # (C, V); no graph: forward() runs under no_grad
            z_s = _chunk_logits(h_s[rows], w_s, b_s)  # (C, V)
            kd_c, ce_c, dz = chunk_fn(z_s, z_t, targets[rows], any(needs))
            del z_t, z_s
            if dz is not None:
                _accumulate(dz, h_s[rows], w_s, g_h, g_w, g_b, rows, vocab)
            del dz  # before the next chunk's logits exist
            kd_sum += kd_c
            ce_sum += ce_c
        ctx.save_for_backward(g_h, g_w, g_b)
        ctx.param_dtypes = (w_s.dtype, None if b_s is None else b_s.dtype)
        ctx.used = False
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return weights[0] * kd_sum + weights[1] * ce_sum, kd_sum, ce_sum

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
                    targets: Tensor, chunk_fn: ChunkFn, *, w_kd: float, w_ce: float, chunk_size: int,
                    vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, kd_sum, ce_sum)`` with ``loss = w_kd * kd_sum + w_ce * ce_sum``, summed over N token rows.

    Shapes: h_s (N, H_s), w_s (V_s, H_s), b_s (V_s,) or None; h_t (N, H_t), w_t (V_t, H_t), b_t (V_t,) or None;
    targets (N,). Both heads are used up to their first ``vocab`` rows. ``chunk_fn`` must return gradients of
    ``w_kd * kd + w_ce * ce``. Only ``loss`` carries a gradient (to h_s, w_s and b_s); ``kd_sum`` and ``ce_sum``
    are detached, for logging. The teacher's tensors never receive a gradient.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (h_s, w_s, b_s))
    return _FusedLinearKD.apply(h_s, w_s, b_s, h_t.detach(), w_t.detach(),
                                None if b_t is None else b_t.detach(), targets, chunk_fn,
                                (w_kd, w_ce), chunk_size, vocab, needs)
