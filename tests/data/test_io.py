"""Reading images and masks: formats, conversions, and the errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from pscl.data.io import read_image, read_mask
from pscl.errors import DataError


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("rgb", [False, True])
def test_read_image_formats_give_the_same_grey_values(tmp_path: Path, suffix: str, bits: int, rgb: bool) -> None:
    if bits == 16 and (suffix == ".bmp" or (rgb and suffix == ".png")):
        pytest.skip("PIL writes neither 16-bit BMP nor 16-bit RGB PNG")
    image = np.linspace(0, 1, 30 * 50).reshape(30, 50)  # non-square
    path = tmp_path / f"im{suffix}"
    write_image(path, image, bits, rgb)
    out = read_image(path, in_channels=1)
    assert out.shape == (30, 50, 1) and out.dtype == np.float32
    tolerance = 1 / 255 if bits == 8 else 1 / 65535
    np.testing.assert_allclose(out[..., 0], image, atol=tolerance + 1e-6)


def test_read_image_jpeg_and_channel_conversion(tmp_path: Path) -> None:
    image = np.full((20, 24), 0.5)
    write_image(tmp_path / "a.jpg", image)
    assert abs(float(read_image(tmp_path / "a.jpg").mean()) - 0.5) < 0.01
    rgb = read_image(tmp_path / "a.jpg", in_channels=3)
    assert rgb.shape == (20, 24, 3)
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 2])


def test_rgb_becomes_luma_grey(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 3), np.uint8)
    array[..., 0] = 255  # pure red
    Image.fromarray(array).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png")[0, 0, 0] == pytest.approx(0.299, abs=1e-4)


def test_corrupt_and_non_image_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="broken.png") as info:
        read_image(bad)
    assert "fix:" in str(info.value)
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.tif"):
        read_image(text)


def test_read_mask_checks_size_values_and_presence(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 3, (2, 2)), mask)
    with pytest.raises(DataError, match="values \\[2\\].*only 2 classes"):
        read_mask(tmp_path / "m.png", 2, (2, 2))
    with pytest.raises(DataError, match="differs from its image"):
        read_mask(tmp_path / "m.png", 3, (2, 3))
    with pytest.raises(DataError, match="image has no mask"):
        read_mask(tmp_path / "absent.png", 3, (2, 2), image_path=tmp_path / "img.png")


def test_colour_mask_is_rejected(tmp_path: Path) -> None:
    array = np.zeros((3, 3, 3), np.uint8)
    array[0, 0] = (255, 0, 0)
    Image.fromarray(array).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour image"):
        read_mask(tmp_path / "colour.png", 3)
