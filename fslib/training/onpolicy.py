"""On-policy distillation (GKD, Agarwal et al. 2024): with probability lambda, a micro-batch's answers are replaced
by the student's own samples, which the teacher then scores; the loss on them is the divergence alone (no reference).
"""

from __future__ import annotations

from fslib.engine.generate import sample_answers


def onpolicy_batch(model, batch: dict, collator, *, max_new_tokens: int, temperature: float, device) -> dict:
    """``batch`` with every answer replaced by the student's sample, re-collated (labels on the sampled tokens).

    The sample is decoded and re-tokenised, so its tokens can differ from the sampled ids where BPE merges
    differently; the teacher scores the re-tokenised text, which is what the student is then trained on.
    """
    records = batch["records"]
    answers = sample_answers(model, records, collator, max_new_tokens=max_new_tokens, temperature=temperature,
                             device=device)
    sampled = [{**r, "answer": a} for r, a in zip(records, answers)]
    return {**collator(sampled), "records": sampled}
