"""Decoding one image file into a uint8 RGB tensor, whatever PIL mode or orientation it arrives in."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..regular_files import FileRefused, open_regular, os_reason

# The one pixel limit of every decode path, checked from the header before any pixel is decoded. PIL's own
# warning (at 89.5M pixels) is silenced so that it does not lower this limit; its error (179M) lies above it.
MAX_IMAGE_PIXELS = 120_000_000
MAX_SIDE = 32767
# The raster formats a photograph comes in (PPM covers PGM; JPEG's opener also gives cameras' MPO files). PIL is
# never asked to guess among all its plugins: a user's "x.jpg" holding EPS would be handed to Ghostscript, an
# interpreter of a programming language (files given by users are data, never code).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# What PIL raises for truncated or corrupt data (every decode path catches these, one file at a time).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class ImageError(ValueError):
    """An image file that cannot be used: corrupt, truncated, not an image, or absurdly large."""


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16/32-bit grayscale: rescale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":  # float grayscale: its finite range spread over 0..255; NaN and infinities become black
        array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)
        if not finite.any():
            raise ValueError("a floating-point image with no finite pixel value")
        low, high = array[finite].min(), array[finite].max()
        scaled = np.where(finite, (array - low) / max(high - low, 1e-12) * 255.0 + 0.5, 0.0)
        gray = np.clip(scaled, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite transparency on white
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


def check_size(width: int, height: int, label: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse, from the header alone, an image too large to decode (every decode path applies the same limits)."""
    if width * height > max_pixels or max(width, height) > MAX_SIDE:
        raise ImageError(f"{label}: {width}x{height} is too large (limit {max_pixels} pixels, {MAX_SIDE} a side)")


def load_rgb(path: str | os.PathLike | io.BytesIO, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None
             ) -> torch.Tensor:
    """Decode `path` into a contiguous uint8 [H, W, 3] tensor.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB.
    Raises ImageError (a ValueError) naming the file for corrupt, truncated, non-image or huge files.
    """
    path = path if isinstance(path, io.BytesIO) else os.fspath(path)
    label = name or str(path)  # how errors name the file (bytes in memory have no path of their own)
    if isinstance(path, io.BytesIO):
        source = contextlib.nullcontext(path)  # the caller's buffer: not closed here
    else:
        try:
            source = open_regular(path)
        except OSError as error:
            raise ImageError(f"{label}: cannot read ({os_reason(error)})") from error
        except FileRefused as error:
            raise ImageError(f"{label}: {error}") from error
    try:
        with source as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=IMAGE_FORMATS) as image:
                check_size(*image.size, label, max_pixels)
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                image.load()
                image = ImageOps.exif_transpose(image)
                array = _to_rgb_array(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{label}: too large, refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:  # PIL's message would name the descriptor, not the file
        raise ImageError(f"{label}: cannot identify image file (not {', '.join(IMAGE_FORMATS)})") from error
    except DECODE_ERRORS as error:
        raise ImageError(f"{label}: cannot decode ({error})") from error
    if array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise ImageError(f"{label}: decoded to an unexpected shape {array.shape}")
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C", copy=True))
