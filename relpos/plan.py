"""The plan: everything random about a batch, drawn once, so that every backend renders the same patches.

A plan holds one int32 row per patch (columns below), the item index tensor with labels (neighbour pairs or jigsaw
puzzles, drawn by relpos.pretext), the noise seed, and the sizes of the images it was drawn for (so a plan cannot
silently be applied to another batch).
"""

from __future__ import annotations

import dataclasses

import torch

# Columns of Plan.patches; the same order is used by csrc/relpos_math.h and kernels/.
IMAGE, HEIGHT, WIDTH, TOP, LEFT, CHANNEL, DOWN = range(7)
PLAN_COLUMNS = 7

# Label of the second patch's position relative to the first:   0 1 2
#                                                                 3 _ 4
#                                                                 5 6 7
OFFSET_TO_LABEL = {(-1, -1): 0, (-1, 0): 1, (-1, 1): 2, (0, -1): 3, (0, 1): 4, (1, -1): 5, (1, 0): 6, (1, 1): 7}
LABEL_TO_OFFSET = {label: offset for offset, label in OFFSET_TO_LABEL.items()}
LABEL_NAMES = ("up-left", "up", "up-right", "left", "right", "down-left", "down", "down-right")


@dataclasses.dataclass
class Plan:
    patches: torch.Tensor  # int32 [N, 7]: image, resized height, resized width, top, left, kept channel, down size
    # int64 [M, k]: the rows of `patches` each item's head reads, in order: k = 2 for relative position (first,
    # second), k = 9 for jigsaw (the tiles in shuffled order); the name is from the first task
    pairs: torch.Tensor
    labels: torch.Tensor  # int64 [M]: the item's class (relative position 0..7, jigsaw permutation 0..K-1)
    seed: int  # key of the counter-based noise
    patch_size: int  # side of every patch, in pixels
    image_sizes: torch.Tensor  # int64 [B, 2]: (height, width) of the batch the plan was drawn for
    skipped: list[int] = dataclasses.field(default_factory=list)  # images too small to give a pair
    skip_reasons: list[str] = dataclasses.field(default_factory=list)  # why, for each of `skipped` (the size)
    grid_ids: torch.Tensor | None = None  # int64 [N]: which grid of its image each patch belongs to

    @property
    def num_patches(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pairs.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Plan":
        """The same plan with its tensors on `device` (image_sizes stay on the CPU for cheap checks)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return dataclasses.replace(self, patches=move(self.patches), pairs=move(self.pairs), labels=move(self.labels))
