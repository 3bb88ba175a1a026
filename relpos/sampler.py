"""Draws a plan for a batch of images: resize, grids, jitter, pairs, labels, per-patch augmentation choices.

This is the cheap, random half of the pipeline; the pixel work is done by `relpos.extract_patches`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .config import PatchConfig
from .images import MAX_SIDE
from .plan import OFFSET_TO_LABEL, PLAN_COLUMNS, Plan

# The neighbours each grid cell pairs with (both orders are emitted): up-left, up, up-right, left.
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1))


# An image is resized to a random pixel count; one that would need more than this enlargement per side to get
# there (an icon, a thumbnail, a 1x1 pixel) has too little picture for it and is skipped as too small.
MAX_UPSCALE = 4.0


def resized_size(height: int, width: int, target_pixels: float) -> tuple[int, int]:
    """Size of an image scaled (aspect kept) to about `target_pixels` pixels."""
    scale = math.sqrt(target_pixels / (height * width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def holds_footprint(resized: tuple[int, int], min_side: int) -> bool:
    """Whether a resized image is larger than an item's footprint in both sides."""
    return min(resized) > min_side


def fits_at_some_scale(height: int, width: int, min_side: int, min_pixels: float, max_pixels: float) -> bool:
    """Whether an image of this size gives an item at some pixel count in [min_pixels, max_pixels] (one that fails
    only at some is not a bad file). The counts that work are one interval: the sides grow with the count (the
    footprint needs it large), enlargement and side limits need it small; so the smallest count whose sides are
    large enough decides, found by bisection."""

    def large_enough(target: float) -> bool:
        return holds_footprint(resized_size(height, width, target), min_side)

    if not large_enough(max_pixels):
        return False
    low, high = float(min_pixels), float(max_pixels)
    if not large_enough(low):
        for _ in range(64):  # far past float precision on a range of pixel counts
            middle = (low + high) / 2
            low, high = (low, middle) if large_enough(middle) else (middle, high)
        low = high
    return too_small(height, width, resized_size(height, width, low), min_side, "") is None


def too_small(height: int, width: int, resized: tuple[int, int], min_side: int, footprint: str) -> str | None:
    """Why an image of this size, resized to `resized`, cannot give an item whose `footprint` (named in the message)
    is `min_side` pixels, or would have a side over MAX_SIDE; None if it can."""
    rh, rw = resized
    if not holds_footprint(resized, min_side):
        return f"resizes to {rh}x{rw}, not larger than the {footprint} = {min_side} in both dimensions"
    if rh > MAX_UPSCALE * height or rw > MAX_UPSCALE * width:
        return f"would be enlarged {max(rh / height, rw / width):.1f}x to {rh}x{rw} (at most {MAX_UPSCALE:g}x)"
    if rh > MAX_SIDE or rw > MAX_SIDE:  # a long thin picture at a large --max-pixels: the kernels' int32 limit
        return f"resizes to {rh}x{rw}, over the {MAX_SIDE}-pixel limit of a side"
    return None


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator, low: int, high_inclusive: int, size: Sequence[int] = ()) -> torch.Tensor:
    return torch.randint(low, high_inclusive + 1, tuple(size), generator=generator)


def grid_pairs(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (into a row-major rows x cols grid) and labels for every neighbour pair, both orders."""
    firsts, seconds, labels = [], [], []
    for r in range(rows):
        for c in range(cols):
            for dr, dc in _NEIGHBOURS:
                nr, nc = r + dr, c + dc
                if 0 <= nr < rows and 0 <= nc < cols:
                    here, there = r * cols + c, nr * cols + nc
                    firsts += [here, there]
                    seconds += [there, here]
                    labels += [OFFSET_TO_LABEL[(dr, dc)], OFFSET_TO_LABEL[(-dr, -dc)]]
    pairs = torch.tensor([firsts, seconds], dtype=torch.int64).T.reshape(-1, 2)
    return pairs, torch.tensor(labels, dtype=torch.int64)


def _check_sizes(image_sizes: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    sizes = torch.as_tensor(image_sizes, dtype=torch.int64).cpu()
    if sizes.numel() == 0:
        raise ValueError("image_sizes is empty: a batch needs at least one image")
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"image_sizes must have shape [B, 2] (height, width), got {tuple(sizes.shape)}")
    if bool((sizes < 1).any()):
        raise ValueError(f"image_sizes must be positive, got {sizes.tolist()}")
    return sizes


def sample_plan(
    image_sizes: torch.Tensor | Sequence[Sequence[int]],
    config: PatchConfig = PatchConfig(),
    generator: torch.Generator | None = None,
    seed: int | None = None,
    on_small: str = "skip",
) -> Plan:
    """Draw the plan for a batch of images of the given (height, width) sizes.

    Images whose resized size is not larger than ``config.min_side`` in both dimensions, or that would be enlarged
    more than ``MAX_UPSCALE`` times per side, are listed in ``plan.skipped`` and contribute nothing
    (``on_small="raise"`` makes that a ValueError instead).
    Pass either a ``generator`` or a ``seed``.
    """
    if on_small not in ("skip", "raise"):
        raise ValueError(f"on_small must be 'skip' or 'raise', got {on_small!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    elif seed is not None:
        raise ValueError("pass either generator or seed to sample_plan, not both")
    sizes = _check_sizes(image_sizes)
    rows_out, pairs_out, labels_out, grid_ids, skipped, reasons = [], [], [], [], [], []
    num_patches = 0
    grid_counter = 0
    for index, (height, width) in enumerate(sizes.tolist()):
        target = _uniform(generator, config.min_pixels, config.max_pixels)
        rh, rw = resized_size(height, width, target)
        reason = too_small(height, width, (rh, rw), config.min_side, "pair footprint 2*patch+gap+jitter")
        if reason:
            if on_small == "raise":
                raise ValueError(f"image {index} ({height}x{width}) at {target:.0f} pixels {reason}")
            skipped.append(index)
            reasons.append(f"{height}x{width} {reason}")
            continue
        for _ in range(config.grids_per_image):
            start_y, start_x = _randint(generator, 0, config.stride - 1, (2,)).tolist()
            grid_rows = (rh + config.gap - start_y) // config.stride
            grid_cols = (rw + config.gap - start_x) // config.stride
            cells = grid_rows * grid_cols
            jitter = _randint(generator, -config.jitter, config.jitter, (cells, 2))
            cell_index = torch.arange(cells)
            top = start_y + (cell_index // grid_cols) * config.stride + jitter[:, 0]
            left = start_x + (cell_index % grid_cols) * config.stride + jitter[:, 1]
            channel = _randint(generator, 0, 2, (cells,))
            area = config.downsample_area[0] + (config.downsample_area[1] - config.downsample_area[0]) * torch.rand(
                cells, generator=generator, dtype=torch.float64
            )
            down = torch.where(
                torch.rand(cells, generator=generator, dtype=torch.float64) < config.downsample_prob,
                area.sqrt().floor().to(torch.int64),
                torch.zeros(cells, dtype=torch.int64),
            )
            if cells < 2:  # a 1x1 grid has no neighbour: nothing to pair, nothing to extract
                continue
            rows = torch.stack(
                [
                    torch.full((cells,), index),
                    torch.full((cells,), rh),
                    torch.full((cells,), rw),
                    top.clamp(0, rh - config.patch),
                    left.clamp(0, rw - config.patch),
                    channel,
                    down,
                ],
                dim=1,
            )
            pairs, labels = grid_pairs(grid_rows, grid_cols)
            rows_out.append(rows)
            pairs_out.append(pairs + num_patches)
            labels_out.append(labels)
            grid_ids.append(torch.full((cells,), grid_counter))
            grid_counter += 1
            num_patches += cells
    noise_seed = int(torch.randint(0, 2**62, (), generator=generator))
    empty = not rows_out
    return Plan(
        patches=torch.zeros((0, PLAN_COLUMNS), dtype=torch.int32) if empty else torch.cat(rows_out).to(torch.int32),
        pairs=torch.zeros((0, 2), dtype=torch.int64) if empty else torch.cat(pairs_out),
        labels=torch.zeros((0,), dtype=torch.int64) if empty else torch.cat(labels_out),
        seed=noise_seed,
        patch_size=config.patch,
        image_sizes=sizes,
        skipped=skipped,
        skip_reasons=reasons,
        grid_ids=torch.zeros((0,), dtype=torch.int64) if empty else torch.cat(grid_ids),
    )
