"""Reading images from disk and the bundled default photographs."""

from .bundled import bundled_photos
from .decode import ImageError, load_rgb

__all__ = ["ImageError", "bundled_photos", "load_rgb"]

from .batch import ImageBatch  # noqa: E402
from .dataset import (  # noqa: E402
    ImageFiles,
    ResidentImages,
    contents_digest,
    decodable_images,
    file_sha256,
    iter_decodable_images,
    list_images,
    split_holdout,
)
from .loader import StepBatches, make_loader  # noqa: E402

__all__ += ["ImageBatch", "ImageFiles", "ResidentImages", "StepBatches", "contents_digest", "decodable_images", "file_sha256", "iter_decodable_images", "list_images", "make_loader", "split_holdout"]
