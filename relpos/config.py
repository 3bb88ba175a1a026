"""Parameters of the pretext task. Defaults follow the authors' released training code."""

from __future__ import annotations

import dataclasses
import math
import numbers

COLOR_MODES = ("drop", "project", "none")
# Bounds that keep one plan small and fast to draw: a resize target beyond any real photograph, and a number
# of grids per image that no recipe needs, would otherwise hang sample_plan or allocate absurdly.
MAX_RESIZE_PIXELS = 100_000_000
MAX_GRIDS_PER_IMAGE = 256
MAX_PATCH = 1024


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """How patches and pairs are drawn from an image (Doersch et al. 2015, sec. 3 and their code)."""

    patch: int = 96
    gap: int = 48
    jitter: int = 7
    min_pixels: int = 150_000
    max_pixels: int = 450_000
    grids_per_image: int = 4
    downsample_prob: float = 1.0 / 3.0
    downsample_area: tuple[int, int] = (100, 9025)

    def __post_init__(self) -> None:
        for name in ("patch", "gap", "jitter", "min_pixels", "max_pixels", "grids_per_image"):
            value = getattr(self, name)  # a float here (96.5, nan) would pass the comparisons below
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"PatchConfig.{name} must be an integer, got {value!r}")
        for name in ("patch", "grids_per_image", "min_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"PatchConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gap", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"PatchConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_pixels > MAX_RESIZE_PIXELS:
            raise ValueError(f"PatchConfig.max_pixels must be <= {MAX_RESIZE_PIXELS}, got {self.max_pixels}")
        if self.grids_per_image > MAX_GRIDS_PER_IMAGE:
            raise ValueError(f"PatchConfig.grids_per_image must be <= {MAX_GRIDS_PER_IMAGE}, got {self.grids_per_image}")
        if self.patch > MAX_PATCH or self.gap > MAX_PATCH * 4 or self.jitter > MAX_PATCH * 4:
            raise ValueError(f"PatchConfig: patch must be <= {MAX_PATCH} and gap, jitter <= {MAX_PATCH * 4}, got "
                             f"patch={self.patch}, gap={self.gap}, jitter={self.jitter}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"PatchConfig.max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")
        if not 0.0 <= self.downsample_prob <= 1.0:
            raise ValueError(f"PatchConfig.downsample_prob must lie in [0, 1], got {self.downsample_prob}")
        low, high = self.downsample_area
        if not 1 <= low <= high or math.isqrt(high) > self.patch:
            raise ValueError(
                f"PatchConfig.downsample_area must satisfy 1 <= low <= high < (patch + 1)**2 (a down-sampled side of "
                f"at most the patch), got {self.downsample_area} for patch {self.patch}; PatchConfig.scaled(patch) "
                "gives the paper's range for any patch size"
            )

    @classmethod
    def scaled(cls, patch: int = 96, **fields) -> "PatchConfig":
        """A config whose down-sampling range is the paper's, 10..95 px of 96, scaled to the patch size."""
        area = (max(1, round(patch * 10 / 96) ** 2), max(1, round(patch * 95 / 96) ** 2))
        return cls(patch=patch, downsample_area=area, **fields)

    @property
    def min_side(self) -> int:
        """An image whose resized side is not larger than this cannot give one pair along that side."""
        return 2 * self.patch + self.gap + self.jitter

    @property
    def stride(self) -> int:
        return self.patch + self.gap
