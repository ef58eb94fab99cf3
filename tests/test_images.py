"""Decoding: every mode to RGB, EXIF rotation, reduced JPEG decoding, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tlearn.data import images as imgmod
from tlearn.data.images import Preprocessing, decode_image, preprocess_image, read_bytes
from tlearn.exceptions import ImageReadError


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("img", "fmt", "expected"),
    [
        (Image.new("L", (10, 8), 77), "PNG", (77, 77, 77)),
        (Image.new("1", (10, 8), 1), "PNG", (255, 255, 255)),
        (Image.new("RGB", (10, 8), (10, 200, 30)), "PNG", (10, 200, 30)),
        (Image.new("RGBA", (10, 8), (255, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent
        (Image.new("RGBA", (10, 8), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (Image.new("LA", (10, 8), (0, 255)), "PNG", (0, 0, 0)),
        (Image.new("CMYK", (10, 8), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("RGB", (10, 8), (0, 0, 255)).convert("P"), "GIF", (0, 0, 255)),
    ],
)
def test_every_mode_becomes_8bit_rgb(img, fmt, expected):
    out = decode_image(encode(img, fmt), "x")
    assert out.mode == "RGB" and out.size == (10, 8)
    assert np.abs(np.asarray(out)[4, 4].astype(int) - expected).max() <= 3


def test_16bit_png_is_scaled_to_8bit():
    arr = np.full((6, 6), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG"), "x"))
    assert out.dtype == np.uint8 and out[3, 3].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_palette_with_transparency_composites_on_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    data = encode(img, "PNG", transparency=0)
    assert np.asarray(decode_image(data, "x"))[1, 1].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "x")
    assert out.size == (20, 40)
    arr = np.asarray(out).mean(axis=(1, 2))
    assert arr[:15].mean() > 200 and arr[25:].mean() < 60  # white half now on top


def test_large_jpeg_is_decoded_at_reduced_size():
    data = encode(Image.new("RGB", (2048, 1536), (120, 30, 200)), "JPEG")
    full = decode_image(data, "x")
    small = decode_image(data, "x", min_side=256)
    assert full.size == (2048, 1536)
    assert small.size == (512, 384)  # libjpeg's 1/4 scale, still >= 256 on the short side


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not a recognised image"),
    ],
)
def test_unreadable_bytes_name_the_file(data, fragment):
    with pytest.raises(ImageReadError, match=fragment) as info:
        decode_image(data, "folder/bad.jpg")
    assert info.value.path == "folder/bad.jpg" and "folder/bad.jpg" in str(info.value)


def test_truncated_jpeg_is_reported():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageReadError, match="truncated"):
        decode_image(data[: len(data) // 2], "cut.jpg")


def test_images_above_the_pixel_limit_are_refused(monkeypatch):
    monkeypatch.setattr(imgmod, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageReadError, match="safety limit"):
        decode_image(encode(Image.new("RGB", (101, 100)), "PNG"), "huge.png")


def test_read_bytes_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_bytes(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageReadError, match="folder"):
        read_bytes(str(tmp_path))


def test_preprocess_resizes_short_side_and_centre_crops():
    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.5)  # resize to 64, crop 32
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (90, 40, 110, 60))  # 20 px white square in the centre
    out = preprocess_image(img, pre)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # scaled by 0.64: a ~13 px square centred in the 32 px crop, black corners
    assert out[12:20, 12:20].min() > 200 and out[0, 0].max() < 50 and out[31, 31].max() < 50


def test_preprocessing_rejects_bad_values():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "cubic-ish")
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bicubic", 1.5)
