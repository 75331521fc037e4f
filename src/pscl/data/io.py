"""Reading micrographs and masks from disk, with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pscl.errors import DataError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
IGNORE_INDEX = 255

# ITU-R BT.601 luma, the usual grey conversion of an RGB micrograph.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image_file(path: Path) -> bool:
    """True for files whose suffix is one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _read_raw(path: Path) -> np.ndarray:
    """Pixel array exactly as stored: (H, W) or (H, W, C), integer or float dtype."""
    if not path.is_file():
        raise DataError("file not found", path, "check the path, or regenerate the data folder")
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as img:
                if img.mode in {"P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "HSV", "1"}:
                    img = img.convert("RGB")
                elif img.mode == "I;16B":
                    img = img.convert("I;16")
                array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"cannot be read as an image (corrupt, truncated or not an image): {exc}",
            path,
            "replace the file with a valid PNG/TIFF/JPEG/BMP, or remove it",
        ) from None
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
