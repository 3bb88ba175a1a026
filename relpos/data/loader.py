"""Batches per step: which images each step takes (a pure function of seed and step) and the DataLoader that
decodes them on the CPU, or reads their bytes for decoding on the GPU."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .batch import collate_images
from .dataset import ImageFiles
from .gpu_decode import RawFiles, collate_raw


class StepBatches(torch.utils.data.Sampler):
    """Image indices for each step, a pure function of (seed, step): a resumed run sees the same batches.

    Each epoch is a fresh permutation; with several processes (DDP) rank r takes every world_size-th slot.
    """

    def __init__(self, count: int, per_step: int, seed: int, start_step: int, steps: int, rank: int = 0,
                 world_size: int = 1):
        if count < 1:
            raise ValueError("no training images")
        self.count, self.per_step, self.seed = count, per_step, seed
        self.start_step, self.steps, self.rank, self.world_size = start_step, steps, rank, world_size

    def indices(self, step: int) -> list[int]:
        taken = self.per_step * self.world_size
        first = step * taken + self.rank * self.per_step
        out = []
        for position in range(first, first + self.per_step):
            epoch, offset = divmod(position, self.count)
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            out.append(int(order[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def make_loader(paths: Sequence[Path], per_step: int, seed: int, start_step: int, steps: int, workers: int,
                pin_memory: bool, rank: int = 0, world_size: int = 1, raw: bool = False) -> torch.utils.data.DataLoader:
    """Batches of decoded images (or, with raw=True, of file bytes for decoding on the GPU), per step."""
    sampler = StepBatches(len(paths), per_step, seed, start_step, steps, rank, world_size)
    if raw:
        dataset, collate = RawFiles(paths), collate_raw
    else:
        dataset, collate = ImageFiles(paths), collate_images
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
    )
