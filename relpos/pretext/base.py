"""What a pretext task is to the rest of relpos: a plan drawn from image sizes, targets, and a head input.

A task draws, for a batch of image sizes and a seed, the plan (which patches the fused op renders) and, per
item, the patch rows the head reads together (`plan.pairs`, int64 [M, k]) and the item's class (`plan.labels`).
The tower encodes each patch once; the head classifies every item from the k features of its patches in the
order the plan lists them (`ClassifierHead.classify`: fc7 per patch, or `head_input`'s features side by side).
Everything else (loop, data, backends) is shared by every task.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import PatchConfig
from ..models import ClassifierHead, PretextNet, build_tower, head_input  # noqa: F401 - head_input: interface
from ..plan import Plan
from ..sampler import fits_at_some_scale


def compute_loss(model, patches, index, labels, autocast_dtype):
    """Cross-entropy of the model's classes for the items of a plan; also the number right and the logits."""
    device_type = patches.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(patches, index)
    loss = F.cross_entropy(logits.float(), labels)
    correct = (logits.argmax(dim=1) == labels).sum()
    return loss, correct, logits


class Pretext:
    """Base of the pretext tasks. Subclasses set the class attributes and implement `draw`."""

    name: str  # the --task value
    item_name: str  # what one classified item is called in messages ("pair", "puzzle")
    patches_per_item: int  # k: patch rows per item, read in order by the head
    class_names: tuple[str, ...]

    def __init__(self, config: PatchConfig):
        self.config = config

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess; the majority baseline of an evaluation comes from its confusion matrix."""
        return 1.0 / self.num_classes

    @property
    def min_side(self) -> int:
        """An image whose resized size is not larger than this in both sides gives no item."""
        raise NotImplementedError

    def fits_at_some_scale(self, height: int, width: int) -> bool:
        """Whether an image of this size gives an item at some of the scales `draw` picks from."""
        return fits_at_some_scale(height, width, self.min_side, self.config.min_pixels, self.config.max_pixels)

    def with_config(self, **changes) -> "Pretext":
        """The same task (classes, permutations, model) drawing with these PatchConfig fields changed."""
        other = copy.copy(self)
        other.config = dataclasses.replace(self.config, **changes)
        return other

    def draw(self, image_sizes: torch.Tensor | Sequence[Sequence[int]], generator: torch.Generator | None = None,
             seed: int | None = None, on_small: str = "skip") -> Plan:
        """The plan and targets for a batch of images of these (height, width) sizes; a generator or a seed."""
        raise NotImplementedError

    def state(self) -> dict:
        """Plain data (tensors, numbers, strings) the task needs to be rebuilt exactly: saved in checkpoints."""
        return {"task": self.name}

    def mirrored(self, patches: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items of these rendered patches as they would be drawn from the left-right mirrored images."""
        raise NotImplementedError(f"--task {self.name} has no mirrored form")

    def build_model(self, arch: str, width: float, dropout: float = 0.0):
        tower = build_tower(arch, width, self.config.patch)
        head = ClassifierHead(tower.out_dim, self.patches_per_item, self.num_classes, width, dropout=dropout)
        return PretextNet(tower, head)

    def expected_patches_per_image(self) -> float:
        """Patches per image of a typical photograph (480x640), to size a step's batch of images."""
        plan = self.draw([[480, 640]] * 32, seed=12345)
        return max(1.0, plan.num_patches / 32)

    def draw_examples(self, patches: torch.Tensor, plan: Plan, path: str, count: int, seed: int) -> None:
        """A PNG sheet of rendered items with their classes, for `relpos show` and `relpos eval`."""
        raise NotImplementedError


@torch.no_grad()
def evaluate(model, pretext: Pretext, images, device, *, color: str, backend: str, plans: int,
             autocast_dtype=None) -> tuple[float | None, torch.Tensor]:
    """Pretext accuracy and K x K confusion matrix (rows: true class) on held-out images (any iterable, so they
    can stream from disk), with fixed plans: image i, draw k uses seed 10000 + 97 i + k every evaluation."""
    from ..ops import extract_patches

    was_training = model.training
    model.eval()
    classes = pretext.num_classes
    confusion = torch.zeros((classes, classes), dtype=torch.int64)
    for index, image in enumerate(images):
        for k in range(plans):
            plan = pretext.draw([image.shape[:2]], seed=10_000 + 97 * index + k)
            if plan.num_pairs == 0:
                continue
            patches = extract_patches([image.to(device)], plan, color=color, channels_last=True, backend=backend)
            _, _, logits = compute_loss(model, patches, plan.pairs.to(device), plan.labels.to(device), autocast_dtype)
            predicted = logits.argmax(dim=1).cpu()
            confusion += torch.bincount(plan.labels * classes + predicted, minlength=classes**2).reshape(classes,
                                                                                                         classes)
    model.train(was_training)
    total = int(confusion.sum())
    return (float(confusion.diag().sum()) / total if total else None), confusion
