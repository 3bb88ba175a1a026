"""Reading images from disk and the bundled default photographs."""

from .bundled import bundled_photos
from .decode import ImageError, load_rgb

__all__ = ["ImageError", "bundled_photos", "load_rgb"]
