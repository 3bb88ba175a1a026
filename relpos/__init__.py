"""relpos: fused kernels for relative-patch-position self-supervised pretraining (Doersch et al., 2015).

    images (ragged uint8) -> sample_plan (pairs, labels, per-patch choices) -> extract_patches (one fused pass)
"""

from . import backends
from .config import COLOR_MODES, PatchConfig
from .images import PackedImages, pack_images, to_rgb
from .ops import extract_patches
from .plan import LABEL_TO_OFFSET, OFFSET_TO_LABEL, Plan
from .reference import extract_patches_reference
from .sampler import sample_plan

__all__ = [
    "COLOR_MODES",
    "LABEL_TO_OFFSET",
    "OFFSET_TO_LABEL",
    "PackedImages",
    "PatchConfig",
    "Plan",
    "backends",
    "extract_patches",
    "extract_patches_reference",
    "pack_images",
    "sample_plan",
    "to_rgb",
]
__version__ = "0.1.0"
