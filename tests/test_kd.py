"""Properties of the distillation losses in fslib.engine.kd: values against independent formulas, masking, shifting,
vocabulary cuts, dtypes, and the chunked and top-k variants against the full-logit loss."""

import math

import pytest
import torch
import torch.nn.functional as F

import fslib.engine.kd
from fslib.engine.kd import DIVERGENCES, KDLoss, chunked_kd_loss, kd_loss, topk_kd_loss

B, L, V = 2, 7, 11


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def _labels(rng, batch=B, length=L, vocab=V):
    """Prompt -100 at the start of each row, padding -100 at the end of the second row."""
    labels = torch.randint(0, vocab, (batch, length), generator=rng)
    labels[:, :2] = -100
    labels[-1, -2:] = -100
    return labels


def _logits(rng, vocab=V, batch=B, length=L, scale=2.0):
    return scale * torch.randn(batch, length, vocab, generator=rng)


def _counted(logits, labels):
    """Rows of the shifted, unmasked positions: (N, V)."""
    return logits[:, :-1][labels[:, 1:] != -100]


def _ref_kl(s, t, labels, temperature):
    """KL(p_t || p_s) mean over counted tokens, straight from F.kl_div."""
    # F.kl_div(input, target) computes KL(target || input): the expectation is under the target, so the teacher
    # goes second.
    lp_s = F.log_softmax(_counted(s, labels) / temperature, -1)
    lp_t = F.log_softmax(_counted(t, labels) / temperature, -1)
    return F.kl_div(lp_s, lp_t, log_target=True, reduction="sum") / lp_s.shape[0]


def _probs(s, t, labels, temperature):
    return (F.softmax(_counted(s, labels).double() / temperature, -1),
            F.softmax(_counted(t, labels).double() / temperature, -1))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_identical_logits_give_zero_kd(rng, divergence):
    s, labels = _logits(rng), _labels(rng)
    out = kd_loss(s, s.clone(), labels, divergence=divergence, beta=0.3)
    assert abs(out.kd.item()) < 1e-6
    h, w = torch.randn(B, L, 4, generator=rng), torch.randn(V, 4, generator=rng)
    chunked = chunked_kd_loss(h, w, h.clone(), w.clone(), labels, divergence=divergence, beta=0.3, chunk_size=3)
    assert abs(chunked.kd.item()) < 1e-6


def test_value_computed_by_hand():
    # One counted token: position 0's logits predict labels[1] = 2. Position 1 predicts nothing.
    s = torch.tensor([[[1.0, 2.0, 0.0], [9.0, -9.0, 3.0]]])
    t = torch.tensor([[[2.0, 0.0, 1.0], [-5.0, 5.0, 0.0]]])
    labels = torch.tensor([[-100, 2]])
    T, alpha = 2.0, 0.5

    def softmax(z):
        e = [math.exp(x / T) for x in z]
        return [x / sum(e) for x in e]

    p_s, p_t = softmax([1.0, 2.0, 0.0]), softmax([2.0, 0.0, 1.0])
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    ce = -(0.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0)))
    out = kd_loss(s, t, labels, temperature=T, alpha=alpha)
    assert out.n_tokens == 1
    assert float(out.kd) == pytest.approx(kl, rel=1e-6)
    assert float(out.ce) == pytest.approx(ce, rel=1e-6)
    assert float(out.loss) == pytest.approx(alpha * T**2 * kl + (1 - alpha) * ce, rel=1e-6)


def test_alpha_zero_is_cross_entropy_on_shifted_labels(rng):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    ref = F.cross_entropy(s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    out = kd_loss(s, t, labels, alpha=0.0)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.ce, ref)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_forward_and_reverse_kl_match_kl_div(rng, temperature):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    fwd = kd_loss(s, t, labels, temperature=temperature, alpha=1.0, divergence="forward_kl")
    torch.testing.assert_close(fwd.loss, temperature**2 * _ref_kl(s, t, labels, temperature))
    torch.testing.assert_close(fwd.kd, _ref_kl(s, t, labels, temperature))
    rev = kd_loss(s, t, labels, temperature=temperature, alpha=1.0, divergence="reverse_kl")
    torch.testing.assert_close(rev.loss, temperature**2 * _ref_kl(t, s, labels, temperature))


def test_teacher_kl_summed_in_row_blocks(rng, monkeypatch):
    # the constant-teacher KL value is summed a block of rows at a time; blocks must not change it
    s, t, labels = _logits(rng).requires_grad_(True), _logits(rng), _labels(rng)
    whole = kd_loss(s, t, labels, alpha=1.0)
    monkeypatch.setattr(fslib.engine.kd, "_ROW_BLOCK", 2)
    blocks = kd_loss(s, t, labels, alpha=1.0)
    torch.testing.assert_close(blocks.kd, _ref_kl(s, t, labels, 3.0))
    torch.testing.assert_close(torch.autograd.grad(blocks.loss, [s])[0], torch.autograd.grad(whole.loss, [s])[0])


def test_jsd_endpoints_follow_trl(rng):
    # TRL's generalized_jsd_loss: beta = 0 is forward KL(teacher || student), beta = 1 reverse KL(student || teacher)
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    for beta, ref in [(0.0, _ref_kl(s, t, labels, 3.0)), (1.0, _ref_kl(t, s, labels, 3.0))]:
        out = kd_loss(s, t, labels, alpha=1.0, divergence="jsd", beta=beta)
        torch.testing.assert_close(out.kd, ref)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_interior_matches_probability_formula(rng, beta):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    p_s, p_t = _probs(s, t, labels, 3.0)
    m = beta * p_t + (1 - beta) * p_s  # TRL's mixture: beta weighs the teacher
    jsd = beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)
    out = kd_loss(s, t, labels, alpha=1.0, divergence="jsd", beta=beta)
    assert float(out.kd) == pytest.approx(float(jsd.mean()), rel=1e-5)


def test_jsd_matches_trl_if_installed(rng):
    trl_gkd = pytest.importorskip("trl.experimental.gkd")
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    for beta in (0.0, 0.3, 1.0):
        ref = trl_gkd.GKDTrainer.generalized_jsd_loss(s[:, :-1], t[:, :-1], labels=labels[:, 1:], beta=beta,
                                                      temperature=3.0)
        torch.testing.assert_close(kd_loss(s, t, labels, alpha=1.0, divergence="jsd", beta=beta).kd, ref)


def test_skew_kl_and_tvd_match_probability_formulas(rng):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    p_s, p_t = _probs(s, t, labels, 3.0)
    skew0 = kd_loss(s, t, labels, alpha=1.0, divergence="skew_kl", beta=0.0)
    torch.testing.assert_close(skew0.kd, _ref_kl(s, t, labels, 3.0))
    mix = 0.1 * p_t + 0.9 * p_s
    skew = kd_loss(s, t, labels, alpha=1.0, divergence="skew_kl", beta=0.1)
    assert float(skew.kd) == pytest.approx(float((p_t * (p_t / mix).log()).sum(-1).mean()), rel=1e-5)
    tvd = kd_loss(s, t, labels, alpha=1.0, divergence="tvd")
    assert float(tvd.kd) == pytest.approx(float(0.5 * (p_t - p_s).abs().sum(-1).mean()), rel=1e-5)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_temperature_changes_the_result(rng, divergence):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    a = kd_loss(s, t, labels, temperature=1.0, divergence=divergence).kd
    b = kd_loss(s, t, labels, temperature=4.0, divergence=divergence).kd
    assert abs(float(a) - float(b)) > 1e-3


def test_masked_positions_cannot_change_the_result(rng):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    masked = torch.ones(B, L, dtype=torch.bool)
    masked[:, :-1] = labels[:, 1:] == -100  # the last position predicts nothing
    s2, t2 = s.clone(), t.clone()
    s2[masked], t2[masked] = float("nan"), 1e4 * torch.randn(int(masked.sum()), V, generator=rng)
    s.requires_grad_(True)
    s2.requires_grad_(True)
    for divergence in DIVERGENCES:
        a = kd_loss(s, t, labels, divergence=divergence)
        b = kd_loss(s2, t2, labels, divergence=divergence)
        torch.testing.assert_close(a.loss, b.loss)
        (ga,), (gb,) = torch.autograd.grad(a.loss, [s]), torch.autograd.grad(b.loss, [s2])
        torch.testing.assert_close(ga, gb)
        assert ga[masked].abs().max() == 0


def test_labels_are_shifted():
    s, t = torch.randn(1, 4, V), torch.randn(1, 4, V)
    labels = torch.tensor([[-100, -100, 5, -100]])  # counted: position 1 predicts token 5
    base = kd_loss(s, t, labels)
    assert base.n_tokens == 1
    torch.testing.assert_close(base.ce, F.cross_entropy(s[0, 1:2], torch.tensor([5])))
    s_at_label = s.clone()
    s_at_label[0, 2] += 10 * torch.randn(V)  # the label's own position: unshifted code would read these
    torch.testing.assert_close(kd_loss(s_at_label, t, labels).loss, base.loss)
    s_before = s.clone()
    s_before[0, 1] += 10 * torch.randn(V)
    assert abs(float(kd_loss(s_before, t, labels).loss) - float(base.loss)) > 1e-3


def test_padded_teacher_vocabulary_is_cut(rng):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    padded = torch.cat([t, 50 + 10 * torch.rand(B, L, 5, generator=rng)], dim=-1)  # huge logits past V_s
    for divergence in DIVERGENCES:
        torch.testing.assert_close(kd_loss(s, padded, labels, divergence=divergence).loss,
                                   kd_loss(s, t, labels, divergence=divergence).loss)
    with pytest.raises(ValueError, match="smaller than the student"):
        kd_loss(s, t[..., :-1], labels)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "skew_kl", "tvd"])
def test_minus_inf_teacher_logits_stay_finite(rng, divergence):
    # A teacher that masks part of its vocabulary with -inf: 0 * log 0 must count as 0, not NaN.
    s, t, labels = _logits(rng).requires_grad_(True), _logits(rng), _labels(rng)
    t[..., :3] = float("-inf")
    out = kd_loss(s, t, labels, divergence=divergence)
    (grad,) = torch.autograd.grad(out.loss, [s])
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    if divergence == "forward_kl":  # the masked columns simply drop out of KL(p_t || p_s)
        lp_s = F.log_softmax(_counted(s, labels) / 3.0, -1)
        p_t = F.softmax(_counted(t, labels) / 3.0, -1)[:, 3:]
        kl = (p_t * (p_t.log() - lp_s[:, 3:])).sum(-1).mean()
        torch.testing.assert_close(out.kd, kl)


def test_vocab_size_cuts_both(rng):
    s, t = _logits(rng), _logits(rng, vocab=V + 5)
    labels = _labels(rng, vocab=8)
    torch.testing.assert_close(kd_loss(s, t, labels, vocab_size=8).loss,
                               kd_loss(s[..., :8], t[..., :8], labels).loss)
    with pytest.raises(ValueError, match="vocab_size"):
        kd_loss(s, t, labels, vocab_size=V + 1)


def test_all_labels_ignored_gives_zero_not_nan(rng):
    s = _logits(rng).requires_grad_(True)
    t, labels = _logits(rng), torch.full((B, L), -100)
    h_s, w_s = torch.randn(B, L, 4, requires_grad=True), torch.randn(V, 4, requires_grad=True)
    outs = [kd_loss(s, t, labels, divergence=d) for d in DIVERGENCES]
    outs.append(chunked_kd_loss(h_s, w_s, torch.randn(B, L, 6), torch.randn(V, 6), labels))
    outs.append(topk_kd_loss(s, torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int32), labels))
    for out in outs:
        assert out.n_tokens == 0
        for value in (out.loss, out.kd, out.ce):
            assert value.item() == 0.0
    grads = torch.autograd.grad(sum(o.loss for o in outs), [s, h_s, w_s])
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().max() == 0


def test_bf16_inputs_are_computed_in_float32(rng):
    s, t, labels = _logits(rng).bfloat16(), _logits(rng).bfloat16(), _labels(rng)
    for divergence in DIVERGENCES:
        out = kd_loss(s, t, labels, divergence=divergence)
        assert out.loss.dtype == torch.float32
        torch.testing.assert_close(out.loss, kd_loss(s.float(), t.float(), labels, divergence=divergence).loss)


def test_unknown_divergence_lists_valid_names(rng):
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd, skew_kl, tvd"):
        kd_loss(_logits(rng), _logits(rng), _labels(rng), divergence="kl")


def test_result_reads_as_attributes_and_mapping(rng):
    out = kd_loss(_logits(rng), _logits(rng), _labels(rng))
    assert isinstance(out, KDLoss) and out["loss"] is out.loss and dict(out)["n_tokens"] == out.n_tokens


# ---------------------------------------------------------------- chunked


def _heads(rng, bias=False):
    """Student (H_s = 5, V) and teacher (H_t = 6, V + 3: padded output layer) hidden states and heads."""
    h_s = torch.randn(B, L, 5, generator=rng, requires_grad=True)
    w_s = (0.7 * torch.randn(V, 5, generator=rng)).requires_grad_(True)
    h_t, w_t = torch.randn(B, L, 6, generator=rng), 0.7 * torch.randn(V + 3, 6, generator=rng)
    b_s = torch.randn(V, generator=rng, requires_grad=True) if bias else None
    b_t = torch.randn(V + 3, generator=rng) if bias else None
    return h_s, w_s, b_s, h_t, w_t, b_t


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_equals_unchunked(rng, divergence, chunk_size):
    h_s, w_s, _, h_t, w_t, _ = _heads(rng)
    labels = _labels(rng)
    kw = dict(temperature=2.0, alpha=0.6, divergence=divergence, beta=0.3)
    ref = kd_loss(h_s @ w_s.T, h_t @ w_t.T, labels, **kw)
    out = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, chunk_size=chunk_size, **kw)
    for key in ("loss", "kd", "ce"):
        torch.testing.assert_close(out[key], ref[key].detach(), rtol=1e-5, atol=1e-7)
    assert out.n_tokens == ref.n_tokens
    for g, g_ref in zip(torch.autograd.grad(out.loss, [h_s, w_s]), torch.autograd.grad(ref.loss, [h_s, w_s])):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_chunked_forward_kl_gradient_by_hand(rng, alpha):
    # forward_kl (and its aliases jsd/skew_kl with beta = 0) takes the hand-written gradient; check every weighting
    h_s, w_s, _, h_t, w_t, _ = _heads(rng)
    labels = _labels(rng)
    ref = kd_loss(h_s @ w_s.T, h_t @ w_t.T, labels, alpha=alpha)
    for divergence in ("forward_kl", "jsd", "skew_kl"):
        out = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, alpha=alpha, divergence=divergence, beta=0.0,
                              chunk_size=3)
        torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-5, atol=1e-7)
        for g, g_ref in zip(torch.autograd.grad(out.loss, [h_s, w_s]),
                            torch.autograd.grad(ref.loss, [h_s, w_s], retain_graph=True)):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def test_chunked_bf16_heads(rng):
    h_s, w_s, _, h_t, w_t, _ = _heads(rng)
    h_s, w_s = h_s.detach().bfloat16().requires_grad_(True), w_s.detach().bfloat16().requires_grad_(True)
    h_t, w_t, labels = h_t.bfloat16(), w_t.bfloat16(), _labels(rng)
    ref = kd_loss(h_s @ w_s.T, h_t @ w_t.T, labels)
    out = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, chunk_size=4)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-2, atol=1e-3)
    grads = torch.autograd.grad(out.loss, [h_s, w_s])
    for g, g_ref, x in zip(grads, torch.autograd.grad(ref.loss, [h_s, w_s]), (h_s, w_s)):
        assert g.dtype == x.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=2e-2, atol=2e-3)


def test_chunked_with_bias_and_without_grad(rng):
    h_s, w_s, b_s, h_t, w_t, b_t = _heads(rng, bias=True)
    labels = _labels(rng)
    ref = kd_loss(F.linear(h_s, w_s, b_s), F.linear(h_t, w_t, b_t), labels)
    out = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, chunk_size=3, student_head_bias=b_s, teacher_head_bias=b_t)
    for g, g_ref in zip(torch.autograd.grad(out.loss, [h_s, w_s, b_s]),
                        torch.autograd.grad(ref.loss, [h_s, w_s, b_s])):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        evaluated = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, student_head_bias=b_s, teacher_head_bias=b_t)
    assert evaluated.loss.grad_fn is None
    torch.testing.assert_close(evaluated.loss, ref.loss.detach(), rtol=1e-5, atol=1e-7)


def test_chunked_scales_with_the_outer_gradient(rng):
    h_s, w_s, _, h_t, w_t, _ = _heads(rng)
    labels = _labels(rng)
    (g1,) = torch.autograd.grad(chunked_kd_loss(h_s, w_s, h_t, w_t, labels, chunk_size=2).loss, [w_s])
    out = chunked_kd_loss(h_s, w_s, h_t, w_t, labels, chunk_size=2)
    (g3,) = torch.autograd.grad(3 * out.loss, [w_s], retain_graph=True)
    torch.testing.assert_close(g3, 3 * g1)
    with pytest.raises(RuntimeError, match="backward ran twice"):  # its stored gradients were scaled in place
        torch.autograd.grad(out.loss, [w_s])


# ---------------------------------------------------------------- top-k cache


def _topk(t, labels, k):
    values, indices = _counted(t, labels).topk(k, dim=-1)
    return values.half(), indices.int()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_with_k_equal_to_vocab_is_kd_loss(rng, divergence):
    s = _logits(rng).requires_grad_(True)
    t = _logits(rng).half().float()  # the cache stores fp16 values: compare on the same values
    labels = _labels(rng)
    values, indices = _topk(t, labels, V)
    ref = kd_loss(s, t, labels, divergence=divergence, beta=0.3)
    out = topk_kd_loss(s, values, indices, labels, temperature=3.0, alpha=0.7, divergence=divergence, beta=0.3)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out.loss, [s])[0], torch.autograd.grad(ref.loss, [s])[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_with_the_log_partition_is_the_exact_bucketed_divergence(rng, divergence):
    """With logZ_T the teacher's k + 1 buckets are its true probabilities: D equals the divergence of both models'
    full-vocabulary distributions collapsed into those buckets, computed here independently."""
    from fslib.engine.kd import token_divergence

    T, k = 2.0, 5
    s = _logits(rng).requires_grad_(True)
    t, labels = _logits(rng).half().float(), _labels(rng)
    values, indices = _topk(t, labels, k)
    log_z = torch.logsumexp(_counted(t, labels) / T, dim=-1)
    out = topk_kd_loss(s, values, indices, labels, temperature=T, alpha=1.0, divergence=divergence, beta=0.3,
                       teacher_log_partition=log_z)

    def buckets(logits):  # (N, V) -> (N, k + 1) probabilities: the teacher's k ids, then everything else
        p = torch.softmax(logits / T, dim=-1)
        head = p.gather(1, indices.long())
        return torch.cat([head, (1 - head.sum(1, keepdim=True)).clamp(min=1e-30)], dim=1)

    p_s, p_t = buckets(_counted(s, labels)), buckets(_counted(t, labels))
    ref = token_divergence(p_s.log(), p_t.log(), divergence, 0.3).mean() * T ** 2
    torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(out.loss, [s])[0], torch.autograd.grad(ref, [s])[0],
                               rtol=1e-3, atol=1e-6)
    # and k = V with logZ is kd_loss again (the tail buckets are empty on both sides)
    values, indices = _topk(t, labels, V)
    full = topk_kd_loss(s, values, indices, labels, temperature=T, divergence=divergence, beta=0.3,
                        teacher_log_partition=log_z)
    torch.testing.assert_close(full.loss, kd_loss(s, t, labels, temperature=T, divergence=divergence, beta=0.3).loss,
                               rtol=1e-5, atol=1e-6)


def test_topk_log_partition_must_match_the_rows(rng):
    s, t, labels = _logits(rng), _logits(rng), _labels(rng)
    values, indices = _topk(t, labels, 4)
    with pytest.raises(ValueError, match="teacher_log_partition"):
        topk_kd_loss(s, values, indices, labels, teacher_log_partition=torch.zeros(values.shape[0] + 1))


def test_topk_smaller_k_is_close_and_finite(rng):
    s = _logits(rng).requires_grad_(True)
    t, labels = _logits(rng, scale=6.0), _labels(rng)  # a peaked teacher: most mass in its top 6
    values, indices = _topk(t, labels, 6)
    for divergence in ("forward_kl", "jsd", "skew_kl", "tvd"):
        out = topk_kd_loss(s, values, indices, labels, divergence=divergence)
        ref = kd_loss(s, t, labels, divergence=divergence)
        (grad,) = torch.autograd.grad(out.loss, [s])
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
        assert out.kd.item() == pytest.approx(ref.kd.item(), rel=0.25, abs=0.05)
    with pytest.raises(ValueError, match="infinite"):
        topk_kd_loss(s, values, indices, labels, divergence="reverse_kl")
    with pytest.raises(ValueError, match="counted tokens"):
        topk_kd_loss(s, values[1:], indices[1:], labels)
