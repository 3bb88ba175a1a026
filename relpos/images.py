"""Ragged uint8 image batches: checking them, converting odd channel counts, packing them into one buffer.

A batch is either a list of uint8 RGB tensors (HWC as decoded by PIL/numpy, or CHW as decoded by
torchvision), all on one device, or a `PackedImages`: one flat uint8 buffer plus an int64 table with, per
image, its offset into the buffer, its height and width, and its channel/row/column strides. The fused op
reads the packed buffer in place; nothing is ever padded to the largest image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

MAX_SIDE = 32767  # keeps the exact resize arithmetic of the kernels inside int32 (csrc/relpos_math.h)

# Columns of PackedImages.meta; the same order is used by csrc/relpos_math.h and kernels/.
OFFSET, ROWS, COLS, STRIDE_C, STRIDE_Y, STRIDE_X = range(6)
META_COLUMNS = 6


@dataclasses.dataclass
class PackedImages:
    data: torch.Tensor  # uint8 [total], contiguous
    meta: torch.Tensor  # int64 [B, 6] on the CPU: offset, height, width, stride_c, stride_y, stride_x

    def __post_init__(self) -> None:
        check_packed(self.data, self.meta)

    def __len__(self) -> int:
        return int(self.meta.shape[0])

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def sizes(self) -> torch.Tensor:
        """int64 [B, 2]: (height, width) of each image."""
        return self.meta[:, ROWS : COLS + 1].clone()

    def image(self, index: int) -> torch.Tensor:
        """Image `index` as a uint8 [3, H, W] view of the buffer (no copy)."""
        offset, rows, cols, sc, sy, sx = self.meta[index].tolist()
        return self.data.as_strided((3, rows, cols), (sc, sy, sx), offset)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedImages":
        return PackedImages(self.data.to(device, non_blocking=non_blocking), self.meta)

    def pin_memory(self) -> "PackedImages":
        return PackedImages(self.data.pin_memory(), self.meta)


def check_packed(data: torch.Tensor, meta: torch.Tensor) -> None:
    if not isinstance(data, torch.Tensor) or not isinstance(meta, torch.Tensor):
        raise TypeError(f"PackedImages needs tensors, got data={type(data).__name__}, meta={type(meta).__name__}")
    if data.dtype != torch.uint8:
        raise TypeError(f"PackedImages.data must be uint8, got {data.dtype}")
    if data.ndim != 1 or not data.is_contiguous():
        raise ValueError(f"PackedImages.data must be a contiguous 1-D buffer, got shape {tuple(data.shape)}")
    if meta.dtype != torch.int64 or meta.ndim != 2 or meta.shape[1] != META_COLUMNS:
        raise ValueError(f"PackedImages.meta must be int64 [B, {META_COLUMNS}], got {meta.dtype} {tuple(meta.shape)}")
    if meta.device.type != "cpu":
        raise ValueError(f"PackedImages.meta must live on the CPU (it is tiny and checked there), got {meta.device}")
    if meta.shape[0] == 0:
        raise ValueError("PackedImages is empty: a batch needs at least one image")
    if torch.compiler.is_compiling():
        return  # value checks would be data-dependent guards in a traced graph; the op checks values as it runs
    offset, rows, cols, sc, sy, sx = meta.T
    if bool((rows < 1).any() | (cols < 1).any() | (offset < 0).any() | (sc < 0).any() | (sy < 0).any() | (sx < 0).any()):
        raise ValueError("PackedImages.meta has a negative offset or stride, or an empty image")
    if bool((meta[:, [OFFSET, STRIDE_C, STRIDE_Y, STRIDE_X]] > data.numel()).any()):
        raise ValueError(f"PackedImages.meta has an offset or stride larger than data ({data.numel()} bytes)")
    if bool((rows > MAX_SIDE).any() | (cols > MAX_SIDE).any()):
        raise ValueError(f"PackedImages holds an image with a side over {MAX_SIDE} pixels; downscale it first")
    last = offset + 2 * sc + (rows - 1) * sy + (cols - 1) * sx
    if bool((last >= data.numel()).any()):
        bad = int((last >= data.numel()).nonzero()[0])
        raise ValueError(f"PackedImages.meta row {bad} reaches past the end of data ({data.numel()} bytes)")


def _layout_of(image: torch.Tensor, layout: str, where: str) -> str:
    if layout in ("hwc", "chw"):
        channels = image.shape[-1] if layout == "hwc" else image.shape[0]
        if channels != 3:
            raise ValueError(
                f"{where} has {channels} channels in layout {layout!r}; RGB (3) is required. "
                "Convert grayscale or RGBA with relpos.to_rgb."
            )
        return layout
    if layout != "auto":
        raise ValueError(f"layout must be 'auto', 'hwc' or 'chw', got {layout!r}")
    if image.shape[-1] == 3:
        return "hwc"
    if image.shape[0] == 3:
        return "chw"
    raise ValueError(
        f"{where} has shape {tuple(image.shape)}: expected RGB as [H, W, 3] or [3, H, W]. "
        "Grayscale or RGBA images can be converted with relpos.to_rgb."
    )


def check_image(image: object, where: str = "image", layout: str = "auto") -> str:
    """Check one image tensor; return its layout ('hwc' or 'chw')."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"{where} must be uint8 (decoded pixels 0..255), got {image.dtype}")
    if image.ndim != 3:
        raise ValueError(
            f"{where} must have 3 dimensions ([H, W, 3] or [3, H, W]), got shape {tuple(image.shape)}; "
            "grayscale [H, W] images can be converted with relpos.to_rgb"
        )
    found = _layout_of(image, layout, where)
    if not image.is_contiguous():
        raise ValueError(f"{where} is not contiguous (strides {image.stride()}); call .contiguous() first")
    if image.shape[0] * image.shape[1] * image.shape[2] == 0:
        raise ValueError(f"{where} is empty: shape {tuple(image.shape)}")
    if max(image.shape) > MAX_SIDE:
        raise ValueError(f"{where} has shape {tuple(image.shape)}: sides up to {MAX_SIDE} pixels are supported")
    return found


def pack_images(images: Sequence[torch.Tensor] | PackedImages, layout: str = "auto") -> PackedImages:
    """Check a batch and return it packed into one buffer (a PackedImages is returned as it is)."""
    if isinstance(images, PackedImages):
        return images
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:  # a dense [B, ...] batch of equal-sized images
            images = list(images.unbind(0))
        else:
            raise TypeError(
                f"images must be a list of [H, W, 3] / [3, H, W] uint8 tensors, a [B, ...] tensor or a "
                f"PackedImages; got a tensor of shape {tuple(images.shape)}"
            )
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of uint8 tensors or a PackedImages, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images is empty: a batch needs at least one image")
    layouts = [check_image(img, f"images[{i}]", layout) for i, img in enumerate(images)]
    device = images[0].device
    for i, img in enumerate(images):
        if img.device != device:
            raise ValueError(f"images[{i}] is on {img.device} but images[0] is on {device}: use one device")
    meta, offset = [], 0
    for img, found in zip(images, layouts):
        if found == "hwc":
            rows, cols, _ = img.shape
            strides = (1, cols * 3, 3)
        else:
            _, rows, cols = img.shape
            strides = (rows * cols, cols, 1)
        meta.append((offset, rows, cols, *strides))
        offset += img.numel()
    data = torch.cat([img.reshape(-1) for img in images])
    return PackedImages(data, torch.tensor(meta, dtype=torch.int64))


def to_rgb(image: torch.Tensor, layout: str = "auto") -> torch.Tensor:
    """Convert a uint8 grayscale ([H, W], [H, W, 1], [1, H, W]), gray+alpha or RGBA image to RGB.

    The layout (HWC or CHW) is kept; alpha is dropped (composited on nothing). RGB passes through.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image.unsqueeze(-1).expand(*image.shape, 3).contiguous()
    if image.ndim != 3:
        raise ValueError(f"image must have 2 or 3 dimensions, got shape {tuple(image.shape)}")
    if layout == "auto":
        layout = "hwc" if image.shape[-1] in (1, 2, 3, 4) else "chw"
    channel_dim = -1 if layout == "hwc" else 0
    channels = image.shape[channel_dim]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"image has {channels} channels along its {layout} channel axis; expected 1, 2, 3 or 4")
    color = image.narrow(channel_dim, 0, 1 if channels <= 2 else 3)
    if color.shape[channel_dim] == 1:
        color = color.expand(*[3 if d == (color.ndim + channel_dim) % color.ndim else -1 for d in range(color.ndim)])
    return color.contiguous()
