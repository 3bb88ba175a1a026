"""Pictures for checking the pipeline by eye: sampled grids on an image, sheets of augmented pairs and of puzzles."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .plan import HEIGHT, LABEL_NAMES, LEFT, TOP, WIDTH, Plan  # noqa: E402


def _display(patch: torch.Tensor) -> torch.Tensor:
    """A normalised [3, P, P] patch as an [P, P, 3] image in [0, 1] for showing (each patch stretched)."""
    patch = patch.float().cpu()
    low, high = patch.amin(), patch.amax()
    return ((patch - low) / (high - low + 1e-6)).permute(1, 2, 0)


def save_atomically(figure, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp.png"
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)
    plt.close(figure)


def draw_grids(image_hwc: torch.Tensor, plan: Plan, image_index: int, path: str) -> None:
    """The image with every sampled patch of `image_index` outlined (one colour per grid) and its pairs linked."""
    rows = (plan.patches[:, 0] == image_index).nonzero().flatten()
    figure, axis = plt.subplots(figsize=(8, 8 * image_hwc.shape[0] / image_hwc.shape[1]))
    axis.imshow(image_hwc.cpu().numpy())
    if len(rows):
        row0 = plan.patches[rows[0]]
        # plan coordinates live in the resized image; draw them back in source pixels
        sy, sx = image_hwc.shape[0] / int(row0[HEIGHT]), image_hwc.shape[1] / int(row0[WIDTH])
        colours = plt.cm.tab10.colors
        grid_ids = plan.grid_ids if plan.grid_ids is not None else torch.zeros(plan.num_patches, dtype=torch.int64)
        size = plan.patch_size
        for n in rows.tolist():
            top, left = int(plan.patches[n, TOP]), int(plan.patches[n, LEFT])
            colour = colours[int(grid_ids[n]) % len(colours)]
            axis.add_patch(mpatches.Rectangle((left * sx, top * sy), size * sx, size * sy, fill=False, lw=1.5,
                                              ec=colour))
        centre = lambda n: ((int(plan.patches[n, LEFT]) + size / 2) * sx, (int(plan.patches[n, TOP]) + size / 2) * sy)  # noqa: E731
        for first, second in (plan.pairs.tolist() if plan.pairs.shape[1] == 2 else []):  # puzzles: no links
            if first in set(rows.tolist()) and first < second:
                (x0, y0), (x1, y1) = centre(first), centre(second)
                axis.plot([x0, x1], [y0, y1], color="white", lw=0.6, alpha=0.7)
    axis.set_title(f"{len(rows)} patches in {plan.grid_ids[rows].unique().numel() if len(rows) else 0} grids")
    axis.axis("off")
    save_atomically(figure, path)


def draw_pairs(patches: torch.Tensor, plan: Plan, path: str, count: int = 16, seed: int = 0) -> None:
    """A sheet of augmented patch pairs: the first patch in the centre cell, the second at its label's cell."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(plan.num_pairs, generator=generator)[:count].tolist()
    columns = 4
    rows = (len(chosen) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, k in zip(axes.flat, chosen):
        first, second = plan.pairs[k].tolist()
        label = int(plan.labels[k])
        size = patches.shape[-1]
        canvas = torch.ones((3 * size + 4, 3 * size + 4, 3))
        row, column = divmod(label + (label >= 4), 3)  # skip the centre cell
        canvas[size + 2 : 2 * size + 2, size + 2 : 2 * size + 2] = _display(patches[first])
        canvas[row * (size + 2) : row * (size + 2) + size, column * (size + 2) : column * (size + 2) + size] = (
            _display(patches[second])
        )
        axis.imshow(canvas.numpy())
        axis.set_title(f"label {label} ({LABEL_NAMES[label]})", fontsize=9)
    figure.suptitle("augmented pairs: first patch in the centre, second where its label puts it")
    save_atomically(figure, path)


def draw_puzzles(patches: torch.Tensor, plan: Plan, path: str, count: int = 8, seed: int = 0) -> None:
    """A sheet of jigsaw puzzles: each as the network sees it (tiles in shuffled order, left) and solved (right),
    titled with its class (the permutation's index) and the permutation (slot j shows tile perm[j])."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(plan.num_pairs, generator=generator)[:count].tolist()
    columns = 2
    rows = (len(chosen) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 3.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    size = patches.shape[-1]
    step = size + 2
    for axis, k in zip(axes.flat, chosen):
        order = plan.pairs[k].tolist()
        canvas = torch.ones((3 * step, 7 * step, 3))
        for slot, row in enumerate(order):
            tile = _display(patches[row])
            y, x = divmod(slot, 3)
            canvas[y * step : y * step + size, x * step : x * step + size] = tile  # shuffled
            y, x = divmod(row - min(order), 3)
            canvas[y * step : y * step + size, (4 + x) * step : (4 + x) * step + size] = tile  # solved
        axis.imshow(canvas.numpy())
        permutation = [row - min(order) for row in order]
        axis.set_title(f"class {int(plan.labels[k])}: permutation {' '.join(map(str, permutation))}", fontsize=9)
    figure.suptitle("jigsaw puzzles: shuffled as the network sees them (left), solved (right)")
    save_atomically(figure, path)
