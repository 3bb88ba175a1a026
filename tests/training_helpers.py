"""Small real-photo datasets and a tiny training configuration for the training and fault tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from relpos.data import bundled_photos
from relpos.training import TrainConfig


def small_photo_folder(folder: Path, count: int = 8, side: int = 140) -> Path:
    """`count` bundled photographs shrunk to about `side` px, saved as JPEG and PNG, in nested folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(bundled_photos()[:count]):
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            target = folder / ("nested" if index % 3 == 0 else ".") / f"photo{index}.{'png' if index % 2 else 'jpg'}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
    return folder


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    config = TrainConfig(
        data=str(data), out=str(out), steps=6, batch=48, lr=2e-3, warmup=2, arch="caffenet", width=0.125,
        workers=0, holdout=0.25, eval_every=3, eval_plans=1, checkpoint_every=3, log_every=1, patch=48, gap=24,
        jitter=3, min_pixels=30_000, max_pixels=50_000, progress=False, seed=3,
    )
    return dataclasses.replace(config, **overrides)
