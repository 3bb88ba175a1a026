"""Image files -> ragged uint8 batches: listing, splitting, decoding in DataLoader workers, resident storage.

A bad file (corrupt, truncated, not an image, huge) never stops a run: it is skipped, and the reason is
reported in the batch so the trainer can count and list it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..images import PackedImages, pack_images
from .decode import ImageError, load_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jfif"}


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every file under `root` (recursively) whose suffix looks like an image, sorted for reproducibility."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data: {root} is neither an image file nor a folder")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"data: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
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


@dataclasses.dataclass
class ImageBatch:
    """One decoded batch: the images that decoded, and the files that did not, with the reason."""

    images: PackedImages | None
    paths: list[str]
    failures: list[tuple[str, str]]

    def pin_memory(self) -> "ImageBatch":
        return dataclasses.replace(self, images=self.images.pin_memory() if self.images is not None else None)


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


def iter_decodable_images(paths: Sequence[Path]) -> Iterator[torch.Tensor]:
    """The images among `paths` that decode, one at a time (bad files are left out; training reports them)."""
    files = ImageFiles(paths)
    for index in range(len(files)):
        _, image = files[index]
        if isinstance(image, torch.Tensor):
            yield image


def decodable_images(paths: Sequence[Path]) -> list[torch.Tensor]:
    return list(iter_decodable_images(paths))


def collate_images(items) -> ImageBatch:
    good = [(path, image) for path, image in items if isinstance(image, torch.Tensor)]
    failures = [(path, reason) for path, reason in items if not isinstance(reason, torch.Tensor)]
    images = pack_images([image for _, image in good]) if good else None
    return ImageBatch(images, [path for path, _ in good], failures)


class StepBatches(torch.utils.data.Sampler):
    """Image indices for each step, a pure function of (seed, step): a resumed run sees the same batches.

    Each epoch is a fresh permutation; with several processes (DDP) rank r takes every world_size-th slot.
    """

    def __init__(self, count: int, per_step: int, seed: int, start_step: int, steps: int, rank: int = 0,
                 world_size: int = 1):
        if count < 1:
            raise ValueError("no training images")
        self.count, self.per_step, self.seed = count, per_step, seed
        self.start_step, self.steps, self.rank, self.world_size = start_step, steps, rank, world_size

    def indices(self, step: int) -> list[int]:
        taken = self.per_step * self.world_size
        first = step * taken + self.rank * self.per_step
        out = []
        for position in range(first, first + self.per_step):
            epoch, offset = divmod(position, self.count)
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            out.append(int(order[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


def make_loader(paths: Sequence[Path], per_step: int, seed: int, start_step: int, steps: int, workers: int,
                pin_memory: bool, rank: int = 0, world_size: int = 1, raw: bool = False) -> torch.utils.data.DataLoader:
    """Batches of decoded images (or, with raw=True, of file bytes for decoding on the GPU), per step."""
    sampler = StepBatches(len(paths), per_step, seed, start_step, steps, rank, world_size)
    if raw:
        from .gpu_decode import RawFiles, collate_raw

        dataset, collate = RawFiles(paths), collate_raw
    else:
        dataset, collate = ImageFiles(paths), collate_images
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
    )


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
