"""Baselines the fused op is measured against, all producing the same kind of output from the same plan.

- `numpy_pil_pipeline`: the authors' approach (deepcontext): per image a PIL resize, per patch a numpy crop,
  PIL down/up-sampling, numpy colour dropping and normalisation. Runs on the host.
- `opencv_pipeline`: what a speed-minded user writes with OpenCV: per image a `cv2.resize` (INTER_LINEAR, uint8),
  per patch a numpy crop, `cv2.resize` down/up-sampling, numpy noise and RMS scaling. Needs
  `opencv-python-headless` (the `bench` extra).
- `per_sample_torch`: one patch at a time with PyTorch eager ops on the images' device.
- `batched_torch`: batched but unfused PyTorch: per-image resize, one gather of every crop, down/up-sampling
  grouped by size, colour and normalisation as whole-batch tensor ops.
They follow the same steps as the reference but not its exact arithmetic (PIL rounds to uint8, F.interpolate
rounds positions in float32), so they are compared for speed, and checked only for the right statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import PackedImages
from .plan import CHANNEL, DOWN, HEIGHT, IMAGE, LEFT, TOP, WIDTH, Plan


def _normalise_numpy(patch: np.ndarray, kept: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(patch)
    for c in range(3):
        if c == kept:
            out[..., c] = patch[..., c] - patch[..., c].mean()
        else:
            out[..., c] = rng.uniform(-0.5, 0.5, size=patch.shape[:2])
    return out * (50.0 / np.sqrt((out**2).mean() + 1e-8))


def _per_patch_pipeline(images: list[np.ndarray], plan: Plan, resize) -> np.ndarray:
    """[N, 3, P, P] float32 patches one at a time; `resize(array, width, height)` is the library's bilinear."""
    size = plan.patch_size
    rows = plan.patches.tolist()
    rng = np.random.default_rng(plan.seed)
    resized: dict[tuple[int, int, int], np.ndarray] = {}
    out = np.empty((len(rows), 3, size, size), dtype=np.float32)
    for n, row in enumerate(rows):
        key = (row[IMAGE], row[HEIGHT], row[WIDTH])
        if key not in resized:
            resized[key] = resize(images[row[IMAGE]], row[WIDTH], row[HEIGHT])
        crop = resized[key][row[TOP] : row[TOP] + size, row[LEFT] : row[LEFT] + size]
        if row[DOWN] > 0:
            crop = resize(resize(crop, row[DOWN], row[DOWN]), size, size)
        out[n] = _normalise_numpy(crop.astype(np.float32), row[CHANNEL], rng).transpose(2, 0, 1)
    return out


def _pil_resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def numpy_pil_pipeline(images: list[np.ndarray], plan: Plan) -> np.ndarray:
    """[N, 3, P, P] float32 patches, the deepcontext way (HWC uint8 numpy images in)."""
    return _per_patch_pipeline(images, plan, _pil_resize)


def opencv_pipeline(images: list[np.ndarray], plan: Plan) -> np.ndarray:
    """[N, 3, P, P] float32 patches with OpenCV resizes (HWC uint8 numpy images in)."""
    import cv2

    def resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
        return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)

    return _per_patch_pipeline(images, plan, resize)


def has_opencv() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def _colour_and_normalise(patches: torch.Tensor, kept: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    noise = torch.rand(patches.shape, generator=generator, device=patches.device) - 0.5
    keep = torch.arange(3, device=patches.device).view(1, 3, 1, 1) == kept.view(-1, 1, 1, 1)
    out = torch.where(keep, centred, noise)
    return out * (50.0 / out.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt())


def per_sample_torch(images: PackedImages, plan: Plan) -> torch.Tensor:
    """One patch at a time, PyTorch eager, on the images' device."""
    size = plan.patch_size
    device = images.device
    resized: dict[tuple[int, int, int], torch.Tensor] = {}
    outputs = []
    for row in plan.patches.tolist():
        key = (row[IMAGE], row[HEIGHT], row[WIDTH])
        if key not in resized:
            image = images.image(row[IMAGE]).float()[None]
            resized[key] = F.interpolate(image, size=(row[HEIGHT], row[WIDTH]), mode="bilinear", align_corners=False)
        patch = resized[key][:, :, row[TOP] : row[TOP] + size, row[LEFT] : row[LEFT] + size]
        if row[DOWN] > 0:
            patch = F.interpolate(F.interpolate(patch, size=(row[DOWN],) * 2, mode="bilinear"), size=(size, size),
                                  mode="bilinear")
        outputs.append(_colour_and_normalise(patch, torch.tensor([row[CHANNEL]], device=device), None))
    return torch.cat(outputs)


def batched_torch(images: PackedImages, plan: Plan) -> torch.Tensor:
    """Batched, unfused PyTorch: each step is one (or a few) whole-batch kernels, with intermediates in memory."""
    size = plan.patch_size
    device = images.device
    rows = plan.patches.to(device).long()
    crops = torch.empty((rows.shape[0], 3, size, size), device=device)
    offsets = torch.arange(size, device=device)
    keys = torch.unique(plan.patches[:, [IMAGE, HEIGHT, WIDTH]], dim=0).tolist()
    for index, height, width in keys:  # one resize per image, then one gather of all its crops
        resized = F.interpolate(images.image(index).float()[None], size=(height, width), mode="bilinear",
                                align_corners=False)[0]
        mine = ((rows[:, IMAGE] == index) & (rows[:, HEIGHT] == height) & (rows[:, WIDTH] == width)).nonzero()[:, 0]
        ys = (rows[mine, TOP][:, None] + offsets)[:, None, :, None]
        xs = (rows[mine, LEFT][:, None] + offsets)[:, None, None, :]
        channels = torch.arange(3, device=device)[None, :, None, None]
        crops[mine] = resized[channels, ys, xs]
    downs = plan.patches[:, DOWN]
    for down in downs.unique().tolist():
        if down == 0:
            continue
        mine = (downs == down).nonzero()[:, 0].to(device)
        small = F.interpolate(crops[mine], size=(down, down), mode="bilinear")
        crops[mine] = F.interpolate(small, size=(size, size), mode="bilinear")
    return _colour_and_normalise(crops, rows[:, CHANNEL], None)
