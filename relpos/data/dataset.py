"""Image files -> decoded images: listing, splitting, decoding one file at a time, resident storage.

A bad file (corrupt, truncated, not an image, huge) never stops a run: it is skipped, and the reason is
reported in the batch so the trainer can count and list it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..images import PackedImages
from ..regular_files import FileRefused, iter_regular
from ..run_folder import is_output_folder
from .batch import ImageBatch, collate_images
from .decode import ImageError, load_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every file under `root` (recursively) whose suffix looks like an image, sorted for reproducibility."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data: {root} is neither an image file nor a folder")
    found, runs = [], []
    for folder, subfolders, files in os.walk(root):  # like rglob: symlinked folders are not entered
        folder = Path(folder)
        if is_output_folder(folder):  # an --out inside --data: the next run must not train on its curves.png
            runs.append(folder)
            subfolders.clear()
            continue
        subfolders.sort()
        found += [folder / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES
                  and (folder / name).is_file()]
    found.sort()
    if not found:
        skipped = f" (skipped {len(runs)} relpos output folder(s): {runs[0]}...)" if runs else ""
        raise FileNotFoundError(f"data: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}{skipped}")
    return found


def split_holdout(paths: Sequence[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """A deterministic train / held-out split by a hash of each file name (stable as files come and go)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction}")
    if fraction == 0.0 or len(paths) < 2:
        return list(paths), []
    # os.fsencode: a name that is not valid UTF-8 (undecodable bytes kept as surrogates) still hashes
    score = lambda p: int(hashlib.sha1(os.fsencode(p.name)).hexdigest()[:8], 16)  # noqa: E731
    ranked = sorted(paths, key=score)
    count = max(1, int(round(len(paths) * fraction)))
    held = set(ranked[:count])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


class ImageFiles(torch.utils.data.Dataset):
    """Decodes one file per item (in a worker process); a failure comes back as (path, reason)."""

    def __init__(self, paths: Sequence[Path], max_pixels: int | None = None):
        self.paths = [str(p) for p in paths]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            kwargs = {} if self.max_pixels is None else {"max_pixels": self.max_pixels}
            return path, load_rgb(path, **kwargs)
        except ImageError as error:
            return path, str(error)
        except Exception as error:  # noqa: BLE001 - any decoder failure is a bad file, never a dead run
            return path, f"{path}: {type(error).__name__}: {error}"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in chunks (a 4-megapixel photograph is not held twice). Opened as every
    image is (iter_regular): a FIFO or device swapped in after the listing is refused (FileRefused), not waited on."""
    digest = hashlib.sha256()
    for chunk in iter_regular(path):
        digest.update(chunk)
    return digest.hexdigest()


def contents_digest(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the sorted sha256s of the files' bytes: equal for the same pictures wherever they lie and whatever
    they are called, so two runs can tell whether they saw the same photographs. A file that can no longer be read
    counts as its name."""
    hashes = []
    for path in paths:
        try:
            hashes.append(file_sha256(path))
        except (OSError, FileRefused):
            hashes.append(f"unreadable {Path(path).name}")
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def iter_decodable_images(paths: Sequence[Path], failures: list | None = None) -> Iterator[torch.Tensor]:
    """The images among `paths` that decode, one at a time; a bad file is left out, and (path, reason) appended
    to `failures` when given, so the caller can report it."""
    files = ImageFiles(paths)
    for index in range(len(files)):
        path, image = files[index]
        if isinstance(image, torch.Tensor):
            yield image
        elif failures is not None:
            failures.append((path, image))


def decodable_images(paths: Sequence[Path], failures: list | None = None) -> list[torch.Tensor]:
    return list(iter_decodable_images(paths, failures))


class ResidentImages:
    """Every decoded image kept packed on one device; a batch is a subset of rows of the table (no copy)."""

    def __init__(self, paths: Sequence[Path], device: torch.device):
        loaded = [ImageFiles(paths)[i] for i in range(len(paths))]
        batch = collate_images(loaded)
        if batch.images is None:
            raise ValueError("none of the images could be decoded")
        self.failures = batch.failures
        self.paths = batch.paths
        self.images = batch.images.to(device)

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, indices: Sequence[int]) -> ImageBatch:
        meta = self.images.meta[list(indices)]
        return ImageBatch(PackedImages(self.images.data, meta), [self.paths[i] for i in indices], [])


def images_per_step(patches_per_step: int, expected_patches_per_image: float) -> int:
    return max(1, math.ceil(patches_per_step / expected_patches_per_image))
