"""One decoded batch as the training loop receives it, whichever way the files were decoded."""

from __future__ import annotations

import dataclasses

import torch

from ..images import PackedImages, pack_images


@dataclasses.dataclass
class ImageBatch:
    """One decoded batch: the images that decoded, and the files that did not, with the reason."""

    images: PackedImages | None
    paths: list[str]
    failures: list[tuple[str, str]]

    def pin_memory(self) -> "ImageBatch":
        return dataclasses.replace(self, images=self.images.pin_memory() if self.images is not None else None)


def collate_images(items) -> ImageBatch:
    good = [(path, image) for path, image in items if isinstance(image, torch.Tensor)]
    failures = [(path, reason) for path, reason in items if not isinstance(reason, torch.Tensor)]
    images = pack_images([image for _, image in good]) if good else None
    return ImageBatch(images, [path for path, _ in good], failures)
