"""The one rule for which positions a loss scores, shared by collation, every loss, the cache and the step weights."""

from __future__ import annotations

IGNORE_INDEX = -100  # the label of a position no loss scores: the prompt, the visual tokens, padding


def counted(labels):
    """(B, L) labels -> (B, L - 1) bool: position t is scored when token t + 1 is an answer token (its label is not
    ``IGNORE_INDEX``), since position t's logits predict token t + 1, as in transformers' causal-LM loss."""
    return labels[:, 1:] != IGNORE_INDEX
