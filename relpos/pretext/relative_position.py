"""Relative patch position (Doersch, Gupta & Efros, ICCV 2015): which of the 8 neighbours is the second patch?"""

from __future__ import annotations

import torch

from ..plan import LABEL_NAMES, LABEL_TO_OFFSET, OFFSET_TO_LABEL
from .base import Pretext

# Class k is the second patch's position relative to the first (relpos.plan.OFFSET_TO_LABEL):  0 1 2
#                                                                                             3 _ 4
#                                                                                             5 6 7
# left-right mirror: the neighbour's column offset changes sign, its row offset stays
MIRRORED_LABEL = tuple(OFFSET_TO_LABEL[(dr, -dc)] for dr, dc in (LABEL_TO_OFFSET[k] for k in range(len(LABEL_NAMES))))


class RelativePosition(Pretext):
    name = "relpos"
    item_name = "pair"
    patches_per_item = 2
    class_names = LABEL_NAMES

    @property
    def min_side(self) -> int:
        return self.config.min_side

    def draw(self, image_sizes, generator=None, seed=None, on_small="skip"):
        from ..sampler import sample_plan

        return sample_plan(image_sizes, self.config, generator=generator, seed=seed, on_small=on_small)

    def mirrored(self, patches, labels):
        # flipping every patch's columns mirrors the image around each patch; the neighbour's offset flips sign in x
        return patches.flip(-1), torch.tensor(MIRRORED_LABEL, device=labels.device)[labels]

    def draw_examples(self, patches, plan, path, count, seed):
        from ..show import draw_pairs

        draw_pairs(patches, plan, path, count=count, seed=seed)
