"""Reading micrographs and masks from disk, with errors that name the file and the fix."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from pscl.constants import IGNORE_INDEX
from pscl.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tifffile

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})

# ITU-R BT.601 luma, the usual grey conversion of an RGB micrograph.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

PIXEL_LIMIT_VARIABLE = "PSCL_MAX_IMAGE_PIXELS"
# Pillow's default Image.MAX_IMAGE_PIXELS: it warns above it and refuses above twice it.
_PILLOW_WARNING_PIXELS = 1024 * 1024 * 1024 // 4 // 3
DEFAULT_MAX_IMAGE_PIXELS = 2 * _PILLOW_WARNING_PIXELS  # about 179 MP, where Pillow would refuse
# pscl checks every image it reads against max_image_pixels() from the file header, before decoding;
# Pillow's own check would warn, or refuse inside Image.open before the size is known, so it is off.
Image.MAX_IMAGE_PIXELS = None


def is_image_file(path: Path) -> bool:
    """True for files whose suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def max_image_pixels() -> int | None:
    """The most pixels pscl decodes from one image (None: no limit).

    ``PSCL_MAX_IMAGE_PIXELS`` sets it (a whole number; 0 or ``none``: no limit); unset, it is
    Pillow's decompression-bomb threshold. A bad value is a :class:`ConfigError`.
    """
    raw = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    if raw.lower() in {"0", "none"}:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(PIXEL_LIMIT_VARIABLE, f"must be a whole number of pixels, or 0 or none for no limit, "
                                                f"got {raw!r}",
                          f"e.g. {PIXEL_LIMIT_VARIABLE}=400000000, or unset it for the default of "
                          f"{DEFAULT_MAX_IMAGE_PIXELS} px")
    return value


def check_pixel_count(path: Path, width: int, height: int, planes: int = 1) -> None:
    """Refuse an image of more pixels than :func:`max_image_pixels` (a decompression bomb, or an
    image too large to decode), before any pixel is decoded."""
    limit = max_image_pixels()
    pixels = int(width) * int(height) * max(int(planes), 1)
    if limit is None or pixels <= limit:
        return
    size = f"{width}x{height} px" + (f" x {planes} planes" if planes > 1 else "")
    suggestion = math.ceil(pixels / 1_000_000) * 1_000_000
    raise DataError(
        f"is {size} ({pixels / 1e6:.1f} MP), over the limit of {limit} px ({limit / 1e6:.1f} MP) on the pixels "
        "pscl decodes from one image (a guard against decompression bombs); it was not decoded",
        path,
        f"if the image is genuine, raise the limit: {PIXEL_LIMIT_VARIABLE}={suggestion} (or "
        f"{PIXEL_LIMIT_VARIABLE}=none for no limit); otherwise replace or remove the file",
    )


def _tiff_size(tif: tifffile.TiffFile) -> tuple[int, int, int]:
    """``(width, height, planes)`` of a TIFF's first series, from its tags alone."""
    page = tif.pages[0]
    width, height = int(page.imagewidth), int(page.imagelength)
    # planes: what the series stacks beyond one (height, width, samples) image, e.g. a z-stack
    planes = math.prod(tif.series[0].shape) // max(width * height * int(page.samplesperpixel), 1)
    return width, height, planes


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` from the header alone; raises :class:`DataError` when over the pixel limit
    (:func:`max_image_pixels`) or not an image."""
    path = Path(path)
    if path.suffix.lower() not in {".tif", ".tiff"}:
        with open_checked(path) as img:
            return img.size
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            width, height, planes = _tiff_size(tif)
    except (OSError, ValueError, IndexError) as exc:
        raise _unreadable(path, exc) from None
    check_pixel_count(path, width, height, planes)
    return width, height


def open_checked(path: Path | str) -> Image.Image:
    """Pillow's (lazy) image of ``path``, opened once and held to :func:`max_image_pixels` from its
    header before any pixel is decoded; for the PNGs pscl writes and reads back (masks, predictions).

    Raises :class:`DataError` when the file is not an image or is over the limit.
    """
    path = Path(path)
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from None
    try:
        check_pixel_count(path, *image.size)
    except DataError:
        image.close()
        raise
    return image


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"cannot be read as an image (corrupt, truncated or not an image): {exc}",
        path,
        "replace the file with a valid PNG/TIFF/JPEG/BMP, or remove it",
    )


def _read_raw(path: Path) -> np.ndarray:
    """Pixel array exactly as stored: (H, W) or (H, W, C), integer or float dtype.

    The pixel count is checked from the header first (:func:`check_pixel_count`).
    """
    if not path.is_file():
        raise DataError("file not found", path, "check the path, or regenerate the data folder")
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                check_pixel_count(path, *_tiff_size(tif))
                array = np.asarray(tif.asarray())
        else:
            with open_checked(path) as img:  # lazy: the pixel count is checked from the header
                if img.mode in {"P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "HSV", "1"}:
                    img = img.convert("RGB")
                elif img.mode == "I;16B":
                    img = img.convert("I;16")
                array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, IndexError) as exc:
        raise _unreadable(path, exc) from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first TIFF
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(
            f"unsupported pixel layout {array.shape}; expected grey (H, W) or RGB (H, W, 3)",
            path,
            "save the micrograph as a single grey or RGB image",
        )
    return array


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale by the storage type's range: 8-bit /255, 16-bit /65535; floats are kept if in [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        top = 255.0 if array.max(initial=0) <= 255 else 65535.0
        return np.clip(array.astype(np.float32) / top, 0.0, 1.0)
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if out.min(initial=0.0) < 0.0 or out.max(initial=0.0) > 1.0:
            low, high = float(out.min()), float(out.max())
            out = (out - low) / max(high - low, 1e-12)
        return out
    raise DataError(f"unsupported pixel type {array.dtype}", path, "save as 8- or 16-bit PNG/TIFF")


def read_image(path: Path | str, in_channels: int = 1) -> np.ndarray:
    """Read a micrograph as float32 in [0, 1], shape (H, W, in_channels).

    8- and 16-bit grey and RGB files are accepted; RGB becomes grey (luma) when ``in_channels`` is 1
    and grey is replicated when it is 3.
    """
    path = Path(path)
    array = _to_unit_float(_read_raw(path), path)
    if in_channels == 1:
        if array.ndim == 3:
            array = array @ _LUMA
        return array[..., None]
    if in_channels == 3:
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        return np.ascontiguousarray(array)
    raise DataError(f"in_channels must be 1 or 3, got {in_channels}", None, "set data.in_channels=1 or 3")


def read_mask(path: Path | str, num_classes: int, image_shape: tuple[int, int] | None = None,
              image_path: Path | None = None) -> np.ndarray:
    """Read a class-index mask (uint8, 255 = ignore) and check it against the image and class list."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "image has no mask",
            image_path or path,
            f"add the mask {path} (uint8 PNG of class indices, 255 = ignore) or move the image to the "
            "`unlabeled/` folder",
        )
    raw = _read_raw(path)
    if raw.ndim == 3:
        if np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2]):
            raw = raw[..., 0]
        else:
            raise DataError(
                "mask is a colour image; masks must hold one class index per pixel",
                path,
                "save the mask as a single-channel uint8 PNG with values 0..C-1 (255 = ignore)",
            )
    if not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"mask has non-integer pixel type {raw.dtype}", path,
                        "save the mask as a uint8 PNG of class indices")
    if image_shape is not None and raw.shape != tuple(image_shape):
        raise DataError(
            f"mask size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from its image "
            f"{image_shape[1]}x{image_shape[0]}" + (f" ({image_path})" if image_path else ""),
            path,
            "masks must have exactly the pixel size of their image; re-export the mask",
        )
    bad = (raw >= num_classes) & (raw != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(raw[bad]))[:10]
        raise DataError(
            f"mask holds values {values} but classes.txt lists only {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, and 255 = ignore)",
            path,
            "fix the mask, or add the missing class names to classes.txt",
        )
    return raw.astype(np.uint8)
