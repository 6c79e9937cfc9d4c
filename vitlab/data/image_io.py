"""Decoding image files with PIL into RGB or grayscale, whatever mode they are stored in."""

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ImageDecodeError(OSError):
    """An image file could not be opened or decoded; the message names the file."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images to 8-bit "L" (PIL's own convert clips instead of scaling)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    elif img.mode.startswith("I;16") or arr.max(initial=0) > 255:  # "I" holding 16-bit data
        arr = arr / 257.0
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def convert_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("RGB" or "L"): EXIF orientation applied, palette transparency through RGBA, alpha dropped,
    16/32-bit scaled to 8 bits. Files (:func:`load_image`) and shard samples are converted alike."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PIL's "palette with transparency" note
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            img = _to_8bit(img)
        elif img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert(mode)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open an image file and convert it to ``mode``.

    Handles every PIL mode (CMYK, P, RGBA, LA, I;16, I, F, L, 1): palette images with transparency go
    through RGBA, alpha is dropped, high-bit-depth images are scaled (not clipped) to 8 bits, and the EXIF
    orientation is applied. The image is fully decoded here, so truncated files fail here.

    Args:
        path: Image file.
        mode: "RGB" or "L".

    Returns:
        A loaded PIL image in ``mode``.

    Raises:
        ImageDecodeError: The file is missing, empty, truncated or not an image; the message names it.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return convert_mode(img, mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode image file {os.fspath(path)!r}: {e}") from e
