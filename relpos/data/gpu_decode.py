"""JPEG decoding on the GPU (torchvision + nvJPEG): workers only read bytes, the device decodes the batch.

Files that are not JPEG, or that nvJPEG refuses, are decoded on the host with PIL instead (and still skipped
with a reason if PIL cannot read them either). EXIF orientation, which nvJPEG ignores, is read from the
header on the host and applied on the device.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..images import pack_images
from ..regular_files import MAX_FILE_BYTES, FileRefused, os_reason, read_regular
from .batch import ImageBatch
from .decode import IMAGE_FORMATS, ImageError, check_size, load_rgb

_EXIF_ORIENTATION = 0x0112


def gpu_decode_error(device: torch.device) -> str | None:
    """None when batched GPU JPEG decoding is available on `device`, else why not."""
    if device.type != "cuda":
        return f"GPU decoding needs a CUDA device, got {device}"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as error:
        return f"GPU decoding needs torchvision ({error}); use --decode pil"
    return None


class RawFiles(torch.utils.data.Dataset):
    """Reads each file's bytes (in a worker); decoding happens later, on the device."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:  # the checks of PIL decoding: a FIFO had hung this worker's open, a huge file costs no more than the limit
            data = read_regular(path, MAX_FILE_BYTES)
        except OSError as error:
            return path, f"{path}: cannot read ({os_reason(error)})"
        except FileRefused as error:
            return path, f"{path}: {error}"
        if not data:
            return path, f"{path}: empty file"
        return path, torch.frombuffer(bytearray(data), dtype=torch.uint8)


def collate_raw(items):
    return list(items)


def jpeg_header(data: torch.Tensor, label: str) -> int | None:
    """The EXIF orientation of a JPEG the device may decode, from its header alone (no pixels are decoded);
    None when the header is not readable (the host decoder then reports why). Raises ImageError for an image
    over the size limits that host decoding applies, before nvJPEG allocates it."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes()), formats=IMAGE_FORMATS) as image:
            size, orientation = image.size, int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - any header PIL cannot parse
        return None
    check_size(*size, label)
    return orientation


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to a CHW image, as PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        image = image.flip(-1)
    elif orientation == 3:
        image = image.flip(-1).flip(-2)
    elif orientation == 4:
        image = image.flip(-2)
    elif orientation == 5:
        image = image.transpose(-1, -2)
    elif orientation == 6:
        image = image.rot90(-1, (1, 2))
    elif orientation == 7:
        image = image.transpose(-1, -2).flip(-1).flip(-2)
    elif orientation == 8:
        image = image.rot90(1, (1, 2))
    return image.contiguous()


def screen(items):
    """Split (path, bytes or failure reason) items into (every readable file, the JPEGs the device may decode
    with their orientation, failures): a JPEG over the size limits is a failure here, as it is for PIL."""
    raw, jpegs, failures = [], [], []
    for path, data in items:
        if isinstance(data, str):  # RawFiles could not read it: data is the reason
            failures.append((path, data))
            continue
        if len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8:
            try:
                orientation = jpeg_header(data, path)
            except ImageError as error:
                failures.append((path, str(error)))
                continue
            if orientation is not None:
                jpegs.append((path, data, orientation))
        raw.append((path, data))
    return raw, jpegs, failures


def decode_on_device(items, device: torch.device) -> ImageBatch:
    """Decode a list of (path, bytes or failure reason) into a packed batch on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw, jpegs, failures = screen(items)
    decoded: dict[str, torch.Tensor] = {}
    if jpegs:
        try:
            images = decode_jpeg([data for _, data, _ in jpegs], mode=ImageReadMode.RGB, device=device)
            for (path, _, orientation), image in zip(jpegs, images):
                decoded[path] = _orient(image, orientation)
        except RuntimeError:  # one bad file fails the batch call: decode one by one to find it
            for path, data, orientation in jpegs:
                try:
                    image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
                    decoded[path] = _orient(image, orientation)
                except RuntimeError:
                    pass  # left to PIL below, which reports the reason
    for path, data in raw:
        if path in decoded:
            continue
        try:
            image = load_rgb(io.BytesIO(data.numpy().tobytes()), name=path)
            decoded[path] = image.permute(2, 0, 1).contiguous().to(device)
        except ImageError as error:
            failures.append((path, str(error)))
    good = [path for path, _ in raw if path in decoded]
    packed = pack_images([decoded[path] for path in good]) if good else None
    return ImageBatch(packed, good, failures)
