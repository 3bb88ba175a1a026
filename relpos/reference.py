"""The executable spec: a pure-PyTorch (and numpy, for the noise) rendering of a plan into patches.

Slow and plain on purpose. Every fast backend (C++ CPU, Triton, CUDA) must match this function for the
same images and plan; see csrc/relpos_math.h for the same steps written once for the compiled backends.

Per patch, in order:
1. resize the whole image (aspect kept, to the plan's size) with bilinear interpolation, align_corners=False
   (`resize_bilinear`: torch's F.interpolate, with the sampling positions computed exactly);
2. crop the patch at the plan's (top, left);
3. if the plan says so, downsample the crop to down x down pixels and upsample it back (both bilinear);
4. colour: "drop" keeps one channel (mean-subtracted) and replaces the other two with uniform noise in
   [-0.5, 0.5); "project" removes the green-magenta axis and subtracts each channel's mean; "none" only
   subtracts each channel's mean;
5. scale the whole patch (all channels) to RMS 50.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import PackedImages
from .plan import CHANNEL, DOWN, HEIGHT, IMAGE, LEFT, TOP, WIDTH, Plan

_PHILOX_ROUND_A, _PHILOX_ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_KEY_A, _PHILOX_KEY_B = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(seed: int, counter: np.ndarray, patch: int) -> list[np.ndarray]:
    """Philox4x32-10 of counters (counter, patch, 0, 0) under key (seed low, seed high): the four words.

    Same function as Triton's ``tl.randint4x(seed, (patch << 32) | counter)``.
    """
    c0 = counter.astype(np.uint64) & _MASK32
    c1 = np.full_like(c0, patch & 0xFFFFFFFF)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    shift = np.uint64(32)
    for _ in range(10):
        prev_c0, prev_c2 = c0, c2
        c0 = ((_PHILOX_ROUND_B * prev_c2) >> shift) ^ c1 ^ k0  # products of two 32-bit words fit in 64 bits
        c2 = ((_PHILOX_ROUND_A * prev_c0) >> shift) ^ c3 ^ k1
        c1 = (_PHILOX_ROUND_B * prev_c2) & _MASK32
        c3 = (_PHILOX_ROUND_A * prev_c0) & _MASK32
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return [c0, c1, c2, c3]


def patch_noise(seed: int, patch_index: int, patch_size: int) -> torch.Tensor:
    """The [3, P, P] noise of one patch in [-0.5, 0.5).

    Element e (= c*P*P + y*P + x) takes word e % 4 of the Philox block at counter (e // 4, patch), and keeps
    its top 24 bits, which float32 holds exactly.
    """
    element = np.arange(3 * patch_size * patch_size, dtype=np.uint64)
    words = np.stack(philox4x32_10(seed, element >> np.uint64(2), patch_index))
    word = words[(element & np.uint64(3)).astype(np.int64), np.arange(element.size)]
    uniform = (word >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return torch.from_numpy(uniform - np.float32(0.5)).reshape(3, patch_size, patch_size)


def linear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of a bilinear resize with align_corners=False (torch's convention).

    Output index j reads source position (j + 0.5) * in_size / out_size - 0.5, clamped at 0. The position is
    computed exactly in integers and its fractional part rounded once to float32, so every backend gets
    the same taps bit for bit (F.interpolate computes the position in float32 and can differ by an ulp).
    """
    dst = torch.arange(out_size, dtype=torch.int64)
    numerator = (in_size * (2 * dst + 1) - out_size).clamp(min=0)  # position times 2 * out_size
    denominator = 2 * out_size
    i0 = numerator // denominator
    last = i0 >= in_size - 1
    w1 = (numerator % denominator).to(torch.float32) / torch.tensor(denominator, dtype=torch.float32)
    w1 = torch.where(last, torch.zeros_like(w1), w1)
    i0 = i0.clamp(max=in_size - 1)
    i1 = torch.where(last, i0, i0 + 1)
    return i0, i1, 1.0 - w1, w1


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float32 [C, H, W] image to `size` (no antialiasing, like F.interpolate)."""
    y0, y1, wy0, wy1 = linear_taps(image.shape[1], size[0])
    x0, x1, wx0, wx1 = linear_taps(image.shape[2], size[1])
    top, bottom = image[:, y0], image[:, y1]
    wy0, wy1 = wy0[:, None], wy1[:, None]
    return wy0 * (wx0 * top[:, :, x0] + wx1 * top[:, :, x1]) + wy1 * (wx0 * bottom[:, :, x0] + wx1 * bottom[:, :, x1])


def render_patch(
    image: torch.Tensor, row: list[int], patch_index: int, seed: int, patch_size: int, color: str, resized=None
) -> torch.Tensor:
    """One float32 [3, P, P] patch from a float32 [3, H, W] image and its plan row."""
    height, width, top, left, kept, down = row[HEIGHT], row[WIDTH], row[TOP], row[LEFT], row[CHANNEL], row[DOWN]
    if resized is None:
        resized = resize_bilinear(image, (height, width))
    patch = resized[:, top : top + patch_size, left : left + patch_size]
    if down > 0:
        patch = resize_bilinear(resize_bilinear(patch, (down, down)), (patch_size, patch_size))
    if color == "project":
        r, g, b = patch
        d = (2.0 * g - r - b) / 6.0
        patch = torch.stack([r + d, g - 2.0 * d, b + d])
    mean = patch.double().mean(dim=(1, 2)).float()[:, None, None]
    out = patch - mean
    if color == "drop":
        noise = patch_noise(seed, patch_index, patch_size)
        keep = torch.arange(3)[:, None, None] == kept
        out = torch.where(keep, out, noise)
    mean_square = out.double().pow(2).mean()
    scale = torch.tensor(50.0 / float(torch.sqrt(mean_square + 1e-8)), dtype=torch.float32)
    return out * scale


def extract_patches_reference(
    images: PackedImages,
    plan: Plan,
    color: str = "drop",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Render every patch of `plan` from `images` (float [N, 3, P, P]); inputs are assumed checked."""
    size = plan.patch_size
    rows = plan.patches.cpu().tolist()
    out = torch.empty((len(rows), 3, size, size), dtype=torch.float32)
    resized_cache: dict[tuple[int, int, int], torch.Tensor] = {}
    float_images: dict[int, torch.Tensor] = {}
    for n, row in enumerate(rows):
        index = row[IMAGE]
        if index not in float_images:
            float_images[index] = images.image(index).cpu().float()
        key = (index, row[HEIGHT], row[WIDTH])
        if key not in resized_cache:
            resized_cache[key] = resize_bilinear(float_images[index], (row[HEIGHT], row[WIDTH]))
        out[n] = render_patch(float_images[index], row, n, plan.seed, size, color, resized_cache[key])
    return out.to(device=images.device, dtype=dtype)
