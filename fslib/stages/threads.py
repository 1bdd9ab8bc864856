"""Torch's CPU threads in a notebook's kernel (``cpu_threads``, read by 01 and 02; 03's processes have
``bench_threads``)."""

from __future__ import annotations


def cpu_threads(n: int) -> int:
    """Torch's CPU threads in this kernel: ``n``, or torch's default (every core) for 0. Measured on a shared
    2-core machine (load average near 12): one tiny-teacher training step of 8 questions took 0.40 s with 1 thread
    and 22.5 s with 2, whose threads wait for each other while other jobs hold the cores."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()
