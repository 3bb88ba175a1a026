"""The bundled default data: real photographs shipped inside the scikit-image package (no download).

They are the colour and grayscale sample photographs of `skimage.data` (public domain or CC0; see
scikit-image's data/README.txt for each one's source and licence).
"""

from __future__ import annotations

import os
from pathlib import Path

# Real photographs only (no drawings, text or synthetic images), in a fixed order.
_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
)


def bundled_photos() -> list[Path]:
    """Paths of the bundled photographs (at least a dozen), read from the installed scikit-image package."""
    try:
        import skimage
    except ImportError as error:  # pragma: no cover - scikit-image is a dependency
        raise RuntimeError("the bundled photos come with scikit-image: pip install scikit-image") from error
    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    found = [folder / name for name in _PHOTOS if (folder / name).is_file()]
    if len(found) < 8:
        raise RuntimeError(f"scikit-image's sample photos were not found in {folder} (found {len(found)})")
    return found
