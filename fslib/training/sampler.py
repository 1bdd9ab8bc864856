"""Data order for training: a function of (seed, epoch) alone, sliced per process.

Every process takes its slice of each global batch (``EpochBatchSampler``), so a run resumed mid-epoch skips exactly
the micro-batches it had consumed, and N processes with per-process batch B see the same global batches as one process
with batch N x B.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class EpochBatchSampler(Sampler):
    """Batches of a permutation seeded by ``seed + epoch``; each of ``world`` processes takes one contiguous slice of
    every global batch of ``batch_size * world`` indices. ``set_epoch(e, skip)`` starts epoch e after ``skip`` global
    batches. A last global batch too small to give every process a sample is dropped (it would stall DDP).

    ``samples_per_epoch`` (below n) makes an epoch a window of that many samples over one endless stream of
    permutations (permutation c seeded by ``seed + c``), so every sample is still used but each epoch, and so each
    run, has as many optimizer steps as one over ``samples_per_epoch`` records: how a KD student with extra
    teacher-answered questions keeps the SFT baseline's number of steps."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, samples_per_epoch: int | None = None):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.per_epoch = min(n, samples_per_epoch) if samples_per_epoch else n
        self.rank, self.world, self.epoch, self.skip = 0, 1, 1, 0

    def shard(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _permutation(self, c: int) -> list[int]:
        return (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + c))
                if self.shuffle else torch.arange(self.n)).tolist()

    def _global_batches(self) -> list[list[int]]:
        if self.per_epoch == self.n:
            order = self._permutation(self.epoch)
        else:
            start = (self.epoch - 1) * self.per_epoch
            first, last = start // self.n, (start + self.per_epoch - 1) // self.n
            stream = [i for c in range(first, last + 1) for i in self._permutation(1 + c)]
            order = stream[start - first * self.n:][:self.per_epoch]
        size = self.batch_size * self.world
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        return [b for b in batches if len(b) >= self.world]

    def __iter__(self):
        for batch in self._global_batches()[self.skip:]:
            per, extra = divmod(len(batch), self.world)  # near-equal slices when the last batch is short
            start = self.rank * per + min(self.rank, extra)
            yield batch[start:start + per + (self.rank < extra)]

    def __len__(self) -> int:
        return len(self._global_batches())


class _WithRecords:
    """The collator's batch plus its records (on-policy sampling re-collates them with the student's answers)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, records):
        return {**self.collator(records), "records": records}


def make_loader(records: list, collator, *, batch_size: int, shuffle: bool, seed: int,
                samples_per_epoch: int | None = None) -> DataLoader:
    sampler = EpochBatchSampler(len(records), batch_size, shuffle=shuffle, seed=seed,
                                samples_per_epoch=samples_per_epoch)
    return DataLoader(records, batch_sampler=sampler, collate_fn=_WithRecords(collator), num_workers=0)
