"""Greedy and sampled generation a batch at a time: evaluation's answers, the teacher's pseudo-labels and their
confidence, and the student's own samples (on-policy distillation)."""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate_batches(model, collator, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = 16,
                     desc: str = "generate", scores: bool = False):
    """Greedy generation a batch at a time: yields ``(output, new_token_ids)``; ``output`` carries the per-step
    scores when ``scores`` is set (for answer probabilities, ``fslib.engine.generate.generate_with_confidence``)."""
    model.eval()
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(records), batch_size), desc=desc, leave=False):
        batch = collator(records[i:i + batch_size])
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             return_dict_in_generate=True, output_scores=scores)
        yield out, out.sequences[:, inputs["input_ids"].shape[1]:]


def generate_answers(model, collator, records: list[dict], *, batch_size: int = 8, max_new_tokens: int = 16,
                     desc: str = "generate") -> list[str]:
    """Greedy answers, decoding only the new tokens (the prompt is stripped)."""
    tok = collator.processor.tokenizer
    return [a.strip() for _, new in generate_batches(model, collator, records, batch_size=batch_size,
                                                     max_new_tokens=max_new_tokens, desc=desc)
            for a in tok.batch_decode(new, skip_special_tokens=True)]


@torch.no_grad()
def generate_with_confidence(model, collator, records: list[dict], *, batch_size: int = 8,
                             max_new_tokens: int = 16) -> tuple[list[str], list[float]]:
    """Greedy answers and each answer's probability under the model: the product of its tokens' probabilities,
    the closing ``<|im_end|>`` included (what a confidence threshold on pseudo-labels filters on)."""
    tok = collator.processor.tokenizer
    stops = {tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id}
    texts, probs = [], []
    for out, new in generate_batches(model, collator, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     desc="teacher answers", scores=True):
        logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        for row, lp in zip(new.tolist(), logp):
            end = next((j for j, t in enumerate(row) if t in stops), len(row) - 1)
            probs.append(float(lp[:end + 1].sum().exp()))
        texts += [a.strip() for a in tok.batch_decode(new, skip_special_tokens=True)]
    return texts, probs


@torch.no_grad()
def sample_answers(model, records: list[dict], collator, *, max_new_tokens: int, temperature: float,
                   device) -> list[str]:
    """The student's own sampled answers (multinomial at ``temperature``); the torch RNG makes them reproducible."""
    gen = dataclasses.replace(collator, train=False)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in gen(records)["inputs"].items()}
    was_training = model.training
    model.eval()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                         top_k=0, top_p=1.0)
    model.train(was_training)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [a.strip() for a in collator.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
