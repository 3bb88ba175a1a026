"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): which of K permutations shuffled the 9 tiles of a 3x3 grid?

Per image: resize (aspect kept) to a random pixel count, place a 3x3 grid of `patch`-px tiles `gap` px apart at
a random position, move each tile by up to `jitter` px (the random gaps the paper uses so that tiles cannot be
matched by their edges), draw one of the K permutations. The plan lists the 9 tiles in grid order and the item's
index row lists them in shuffled order (slot j shows tile permutation[j]); the shared tower encodes each tile,
`head_input` concatenates the 9 features in that shuffled order, and the head names the permutation.

The tiles are rendered by the same fused op as relative-position patches, so every backend renders them
bit-exactly, and each tile is normalised on its own (mean removed per channel, scaled to RMS 50), as the paper
normalises every tile independently; `--color` picks the colour handling (see README, "Jigsaw puzzles").
"""

from __future__ import annotations

import functools
import itertools

import torch

from ..plan import PLAN_COLUMNS, Plan
from ..sampler import _check_sizes, _randint, _uniform, resized_size, too_small
from .base import Pretext

TILES = 9
DEFAULT_PERMUTATIONS = 100
MAX_PERMUTATIONS = 1000
PERMUTATION_SEED = 0  # the first permutation of the greedy selection; fixed, so every run gets the same set


@functools.lru_cache(maxsize=4)
def _all_permutations() -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(TILES))), dtype=torch.int8)  # [9!, 9]


@functools.lru_cache(maxsize=8)
def _permutation_set(count: int, seed: int) -> torch.Tensor:
    candidates = _all_permutations()
    first = int(torch.randint(0, candidates.shape[0], (), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    distance = (candidates != candidates[first]).sum(dim=1, dtype=torch.int32)
    nearest, total = distance.clone(), distance.clone()  # min and sum of distances to the chosen set
    taken = torch.zeros(candidates.shape[0], dtype=torch.bool)
    taken[first] = True
    for _ in range(count - 1):
        # greedy max-min: the candidate farthest from its nearest chosen permutation; among equals the one with
        # the largest summed distance (the paper's criterion), then the first in lexicographic order
        score = nearest * (TILES * MAX_PERMUTATIONS + 1) + total
        score[taken] = -1
        pick = int(score.argmax())
        chosen.append(pick)
        taken[pick] = True
        distance = (candidates != candidates[pick]).sum(dim=1, dtype=torch.int32)
        nearest = torch.minimum(nearest, distance)
        total += distance
    return candidates[chosen].to(torch.int64)


def permutation_set(count: int = DEFAULT_PERMUTATIONS, seed: int = PERMUTATION_SEED) -> torch.Tensor:
    """int64 [count, 9]: permutations of the 9 tiles chosen greedily for a large minimum Hamming distance.

    Deterministic for a given (count, seed); the first `count` of a larger set are the smaller set.
    """
    if not 2 <= count <= MAX_PERMUTATIONS:
        raise ValueError(f"permutations must lie in [2, {MAX_PERMUTATIONS}], got {count}")
    return _permutation_set(count, seed).clone()


def hamming_distances(permutations: torch.Tensor) -> dict:
    """Minimum and mean pairwise Hamming distance of a permutation set (the paper's Table 3 measures)."""
    pairwise = (permutations[:, None, :] != permutations[None, :, :]).sum(dim=2)
    off = ~torch.eye(len(permutations), dtype=torch.bool)
    return {"min": int(pairwise[off].min()), "mean": float(pairwise[off].double().mean())}


class Jigsaw(Pretext):
    name = "jigsaw"
    item_name = "puzzle"
    patches_per_item = TILES

    def __init__(self, config, permutations: torch.Tensor | int = DEFAULT_PERMUTATIONS):
        super().__init__(config)
        if isinstance(permutations, int):
            permutations = permutation_set(permutations)
        permutations = torch.as_tensor(permutations, dtype=torch.int64).cpu()
        if (permutations.ndim != 2 or permutations.shape[1] != TILES or len(permutations) < 2
                or not torch.equal(permutations.sort(dim=1).values, torch.arange(TILES).expand_as(permutations))):
            raise ValueError(f"permutations must be a [K >= 2, 9] table of permutations of 0..8, got "
                             f"{tuple(permutations.shape)}")
        self.permutations = permutations
        self.class_names = tuple(" ".join(map(str, p)) for p in permutations.tolist())

    @property
    def span(self) -> int:
        """Side of the 3x3 grid of tiles before jitter."""
        return 3 * self.config.patch + 2 * self.config.gap

    @property
    def min_side(self) -> int:
        return self.span + 2 * self.config.jitter - 1

    def state(self) -> dict:
        return {"task": self.name, "permutations": self.permutations.clone()}

    def draw(self, image_sizes, generator=None, seed=None, on_small="skip") -> Plan:
        if on_small not in ("skip", "raise"):
            raise ValueError(f"on_small must be 'skip' or 'raise', got {on_small!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        elif seed is not None:
            raise ValueError("pass either generator or seed, not both")
        config = self.config
        sizes = _check_sizes(image_sizes)
        stride, jitter = config.patch + config.gap, config.jitter
        cell = torch.arange(TILES)
        rows_out, index_out, labels_out, grid_ids, skipped, reasons = [], [], [], [], [], []
        for image, (height, width) in enumerate(sizes.tolist()):
            rh, rw = resized_size(height, width, _uniform(generator, config.min_pixels, config.max_pixels))
            reason = too_small(height, width, (rh, rw), self.min_side, "puzzle footprint 3*patch+2*gap+2*jitter-1")
            if reason:
                if on_small == "raise":
                    raise ValueError(f"image {image} ({height}x{width}) {reason}")
                skipped.append(image)
                reasons.append(f"{height}x{width} {reason}")
                continue
            for _ in range(config.grids_per_image):
                top0 = int(_randint(generator, jitter, rh - self.span - jitter))
                left0 = int(_randint(generator, jitter, rw - self.span - jitter))
                shift = _randint(generator, -jitter, jitter, (TILES, 2))
                channel = _randint(generator, 0, 2, (TILES,))
                label = int(_randint(generator, 0, len(self.permutations) - 1))
                rows = torch.stack([torch.full((TILES,), image), torch.full((TILES,), rh), torch.full((TILES,), rw),
                                    top0 + (cell // 3) * stride + shift[:, 0], left0 + (cell % 3) * stride + shift[:, 1],
                                    channel, torch.zeros(TILES, dtype=torch.int64)], dim=1)
                index_out.append(self.permutations[label] + TILES * len(rows_out))
                rows_out.append(rows)
                labels_out.append(label)
                grid_ids.append(torch.full((TILES,), len(grid_ids)))
        noise_seed = int(torch.randint(0, 2**62, (), generator=generator))
        empty = not rows_out
        return Plan(
            patches=torch.zeros((0, PLAN_COLUMNS), dtype=torch.int32) if empty else torch.cat(rows_out).to(torch.int32),
            pairs=torch.zeros((0, TILES), dtype=torch.int64) if empty else torch.stack(index_out),
            labels=torch.tensor(labels_out, dtype=torch.int64),
            seed=noise_seed, patch_size=config.patch, image_sizes=sizes, skipped=skipped, skip_reasons=reasons,
            grid_ids=torch.zeros((0,), dtype=torch.int64) if empty else torch.cat(grid_ids),
        )

    def draw_examples(self, patches, plan, path, count, seed):
        from ..show import draw_puzzles

        draw_puzzles(patches, plan, path, count=count, seed=seed)

