"""Source images in any form a user has them -> (H, W, 3) uint8 RGB, or a named error."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 40_000_000  # ~ 8K x 5K; larger photos cost minutes per frame to paste and encode
MIN_SIDE = 32


def load_image(source: str | os.PathLike | np.ndarray | Image.Image, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A path, PIL image or array -> (H, W, 3) uint8 RGB.

    Any PIL mode is accepted (palette, greyscale, 16-bit, CMYK, alpha: composited on white, as the photo would
    look on a page); EXIF orientation is applied. Raises ImageError naming what is wrong.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, "the image", max_pixels)
    path = Path(source)
    with _opened(path, max_pixels) as img:
        try:
            return _from_pil(img, path.name, max_pixels)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path.name} could not be read as an image ({exc})") from exc


def image_warnings(source) -> list[str]:
    """What the user should know about how the image is used (an animated file: only its first frame).

    Reads the header only; a file that cannot be opened gives no warning here (load_image names the error)."""
    if not isinstance(source, (str, os.PathLike)):
        return []
    path = Path(source)
    try:
        with _opened(path, MAX_PIXELS) as img:
            frames = getattr(img, "n_frames", 1) if getattr(img, "is_animated", False) else 1
    except ImageError:
        return []
    if frames > 1:
        return [f"{path.name} is animated ({frames} frames); only its first frame is used"]
    return []


class _opened:
    """`with _opened(path) as img`: Image.open with its header checked (size limits) before any pixel is
    decoded, and Pillow's own decompression-bomb warning and error replaced by our ImageError."""

    def __init__(self, path: Path, max_pixels: int):
        self.path, self.max_pixels = path, max_pixels
        self.image: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        path = self.path
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path.name} is too large to open ({exc}); downscale it first") from None
        except UnidentifiedImageError as exc:
            raise ImageError(f"{path.name} is not an image file Pillow can read") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path.name} could not be read as an image ({exc})") from exc
        try:
            _check_pixels(self.image.size, path.name, self.max_pixels)
        except ImageError:
            self.image.close()
            raise
        return self.image

    def __exit__(self, *exc_info) -> None:
        if self.image is not None:
            self.image.close()


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP); the limit is "
                         f"{max_pixels / 1e6:.0f} MP: downscale it first")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height}; a face needs at least {MIN_SIDE} px on each side")


def _from_pil(img: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    _check_pixels(img.size, name, max_pixels)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and data.max() > 255 else max(float(data.max()), 1.0)
        grey = np.clip(data / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _from_array(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    _check_pixels((array.shape[1], array.shape[0]), "the image", max_pixels)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ImageError("the image array holds NaN or infinite values")
            scale = 255.0 if array.max() <= 1.0 else 1.0
            array = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.integer):
            top = 65535 if array.max() > 255 else 255
            array = np.clip(array.astype(np.float64) * 255.0 / top + 0.5, 0, 255).astype(np.uint8)
        else:
            raise ImageError(f"unsupported image array type {array.dtype}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def rgb_image(image: np.ndarray, what: str = "the image", *, min_side: int = 2) -> np.ndarray:
    """The one check of the face stages' input: an (H, W, 3) uint8 RGB array, each side >= min_side.

    Returns it C-contiguous. Converting other arrays is `load_image`'s job; here anything else is an ImageError.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{what} must be an (H, W, 3) uint8 RGB array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{what} must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    if min(image.shape[:2]) < min_side:
        raise ImageError(f"{what} is too small ({image.shape[1]}x{image.shape[0]}); "
                         f"at least {min_side} px on each side")
    return np.ascontiguousarray(image)
