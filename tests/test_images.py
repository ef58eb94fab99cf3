"""Decoding: every mode to RGB, EXIF rotation, reduced JPEG decoding, clear errors."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

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


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_unparsable_exif_leaves_the_pixels_as_stored(fmt):
    """EXIF is metadata: a block PIL cannot parse (its TIFF header cut short, struct.error
    for PNG and WebP before) loses the orientation, not the image."""
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    out = decode_image(encode(img, fmt, exif=b"Exif\x00\x00MM\x00*\xcc\x00"), "x")
    assert out.size == (40, 20)
    assert np.abs(np.asarray(out)[5, 5].astype(int) - (10, 200, 30)).max() <= 3


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


# --- resource bounds: thin images, zip members, plain files ---------------------------------


def resize_then_crop(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """The oracle: resize the whole image so its shorter side is ``short_side``, then take
    the centre square (what preprocess_image did before it cropped in source coordinates)."""
    w, h = img.size
    short, size = pre.short_side(w, h), pre.input_size - 2 * (pre.pad_small * pre.is_small(w, h))
    new_w, new_h = (short, max(short, int(short * h / w))) if w <= h else (
        max(short, int(short * w / h)), short)  # fmt: skip
    filt = imgmod._INTERPOLATIONS[pre.interpolation]
    big = img.resize((new_w, new_h), filt) if (new_w, new_h) != (w, h) else img
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return np.asarray(big.crop((left, top, left + size, top + size)))


PRES = [
    Preprocessing(224, (0.5,) * 3, (0.5,) * 3),
    Preprocessing(224, (0.5,) * 3, (0.5,) * 3, "bilinear", 0.95, crop_small=False),
    Preprocessing(48, (0.5,) * 3, (0.5,) * 3, "lanczos", 0.9),
    Preprocessing(40, (0.5,) * 3, (0.5,) * 3, "bicubic", 1.0, crop_small=False, pad_small=4),
]


@pytest.mark.parametrize("pre", PRES)
def test_ordinary_images_keep_their_pixels_bit_for_bit(pre):
    from tests.synthetic import crop

    rng = np.random.default_rng(0)
    photo = crop("astronaut", rng, 300).resize((300, 200))
    noise = Image.fromarray(rng.integers(0, 256, (97, 41, 3), dtype=np.uint8))
    for img in [photo, photo.rotate(90, expand=True), noise, photo.crop((0, 0, 300, 40))]:
        if pre.pad_small and pre.is_small(*img.size):
            continue  # the oracle does not pad
        assert np.array_equal(preprocess_image(img, pre), resize_then_crop(img, pre)), img.size


@pytest.mark.needs_data
def test_cifar_photos_keep_their_pixels_bit_for_bit(cifar_zip):
    import zipfile

    with zipfile.ZipFile(cifar_zip) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")][::5000]
        images = [decode_image(zf.read(n), n) for n in names]
    for pre in PRES[:3]:
        for img in images:
            assert np.array_equal(preprocess_image(img, pre), resize_then_crop(img, pre))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos"])
def test_long_strips_of_a_photo_stay_within_rounding_of_resize_then_crop(interpolation):
    """Past WHOLE_RESIZE_AREA only the crop's region is resampled: PIL's two passes may
    round differently (measured on CIFAR strips: at most 2 levels, 1 value in 100,000).
    ``nearest`` may take the neighbouring pixel where a sample falls exactly between two."""
    from tests.synthetic import crop

    pre = Preprocessing(64, (0.5,) * 3, (0.5,) * 3, interpolation)
    photo = crop("coffee", np.random.default_rng(1), 96)
    for box in [(0, 40, 96, 43), (40, 0, 42, 96), (0, 0, 96, 1)]:
        strip = photo.crop(box)
        out, ref = preprocess_image(strip, pre).astype(int), resize_then_crop(strip, pre)
        assert out.shape == ref.shape and np.abs(out - ref).max() <= 2, box


def test_a_thin_image_is_cropped_from_its_middle():
    img = Image.new("RGB", (1, 4000), (0, 0, 255))
    img.paste((255, 0, 0), (0, 1995, 1, 2005))
    out = preprocess_image(img, PRES[0])
    assert out.shape == (224, 224, 3) and (out == [255, 0, 0]).all()
    wide = preprocess_image(img.transpose(Image.Transpose.TRANSPOSE), PRES[0])
    assert (wide == [255, 0, 0]).all()


PEAK = """
import sys
from tlearn.data.images import Preprocessing, decode_image, preprocess_image, read_bytes


def high_water():  # this process's own peak RSS (ru_maxrss would count the parent's too)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


pre = Preprocessing(224, (0.5,) * 3, (0.5,) * 3)
preprocess_image(decode_image(read_bytes(sys.argv[2]), "warm-up"), pre)
before = high_water()
out = preprocess_image(decode_image(read_bytes(sys.argv[1]), sys.argv[1]), pre)
assert out.shape == (224, 224, 3)
print(high_water() - before)
"""


def peak_bytes(path: Path, tmp_path: Path, **env: str) -> int:
    """Peak memory that reading, decoding and preprocessing ``path`` adds, measured in a
    fresh interpreter (a long test run keeps freed memory that would hide it)."""
    import os
    import subprocess
    import sys

    warm = tmp_path / "warm.png"
    Image.new("RGB", (300, 200)).save(warm)
    r = subprocess.run(
        [sys.executable, "-c", PEAK, str(path), str(warm)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM: Linux")
@pytest.mark.parametrize(
    ("name", "img", "limit"),
    [
        ("thin.png", Image.new("RGB", (1, 1000), (9, 9, 9)), None),  # was 256 x 256,000
        ("rgba.png", Image.new("RGBA", (1000, 1000), (9, 9, 9, 99)), 1000 * 1000),
        ("float.tiff", Image.new("F", (1000, 1000), 0.5), 1000 * 1000),
    ],
)
def test_peak_memory_is_within_the_documented_budget(tmp_path, name, img, limit):
    """The module docstring's budget, E + 24 P + 64 S^2 bytes plus a few MiB of buffers,
    for an adversarial thin image and for big images at the pixel limit in the costliest
    modes."""
    path = tmp_path / name
    img.save(path)
    env = {} if limit is None else {"TLEARN_MAX_IMAGE_PIXELS": str(limit)}
    budget = path.stat().st_size + 24 * img.width * img.height + 64 * 256**2 + 4 * 2**20
    assert peak_bytes(path, tmp_path, **env) <= budget


def test_jpegs_with_more_scans_than_encoders_write_are_refused():
    """Each scan of a progressive JPEG is a pass over the whole image: thousands of tiny
    scans in a few kB cost minutes. A real progressive JPEG (10 scans) still decodes."""
    data = encode(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG", progressive=True)
    assert decode_image(data, "p.jpg").size == (64, 64)
    last_scan = data[data.rindex(b"\xff\xda") : -2]
    bomb = data[:-2] + last_scan * 200 + b"\xff\xd9"
    with pytest.raises(ImageReadError, match="scans") as info:
        decode_image(bomb, "scans.jpg")
    assert info.value.code == "corrupt_image"


def zip_member(path: Path, data: bytes, name: str = "a.png", method: int = 8) -> str:
    """Write a one-member zip; return the tlearn path of the member."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr(name, data)
    return f"{path}/{name}"


#: (offset in the local header, offset in the central directory, struct format)
HEADER_FIELDS = {
    "flags": (6, 8, "<H"),
    "method": (8, 10, "<H"),
    "crc": (14, 16, "<I"),
    "compress_size": (18, 20, "<I"),
    "file_size": (22, 24, "<I"),
}


def patch_member(path: Path, **fields: int) -> None:
    """Overwrite fields of a one-member zip's local header and central directory entry."""
    import struct

    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    for field, value in fields.items():
        at_local, at_central, fmt = HEADER_FIELDS[field]
        struct.pack_into(fmt, data, local + at_local, value)
        struct.pack_into(fmt, data, central + at_central, value)
    path.write_bytes(bytes(data))


PNG = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")


@pytest.mark.parametrize(
    ("method", "patch", "fragment"),
    [
        (8, {"flags": 1}, "encrypted"),  # was RuntimeError
        (0, {"method": 99}, "NotImplementedError"),  # an unknown compression method
        (8, {"crc": 12345}, "CRC"),
        (8, {"file_size": 20}, "damaged"),  # declares fewer bytes than it inflates to
    ],
)
def test_unreadable_zip_members_are_image_errors(tmp_path, method, patch, fragment):
    member = zip_member(tmp_path / "a.zip", PNG, method=method)
    patch_member(tmp_path / "a.zip", **patch)
    with pytest.raises(ImageReadError, match=fragment) as info:
        read_bytes(member)
    assert info.value.path == member


def test_a_broken_deflate_stream_is_an_image_error(tmp_path):
    """zlib.error went straight through on_error="skip" before."""
    member = zip_member(tmp_path / "a.zip", encode(Image.effect_noise((64, 64), 40), "BMP"))
    data = bytearray((tmp_path / "a.zip").read_bytes())
    data[60:90] = b"\xff" * 30  # the start of the deflate stream
    (tmp_path / "a.zip").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="damaged"):
        read_bytes(member)


def test_zip_bombs_are_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setattr(imgmod, "ZIP_RATIO_GRACE", 2**20)
    bomb = zip_member(tmp_path / "bomb.zip", bytes(4 * 2**20))  # 4 MiB of zeros: 4 kB stored
    with pytest.raises(ImageReadError, match="zip bomb"):
        read_bytes(bomb)
    # declared larger than the byte limit: refused from the header, whatever the ratio
    monkeypatch.setattr(imgmod, "MAX_IMAGE_BYTES", 1000)
    big = zip_member(tmp_path / "big.zip", encode(Image.effect_noise((64, 64), 40), "PNG"))
    with pytest.raises(ImageReadError, match="safety limit"):
        read_bytes(big)
    assert read_bytes(big, max_bytes=10**6)[:4] == b"\x89PNG"


def test_zip_reads_are_bounded_whatever_the_member_declares(tmp_path, monkeypatch):
    """The stream is read for at most the allowed bytes + 1, not for what the header says."""
    import zipfile

    asked = []
    read = zipfile.ZipExtFile.read

    def spy(self, n=-1):
        asked.append(n)
        return read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    monkeypatch.setattr(imgmod, "MAX_IMAGE_BYTES", 10**6)
    assert read_bytes(zip_member(tmp_path / "a.zip", PNG)) == PNG
    assert asked and all(0 < n <= 10**6 + 1 for n in asked)


def test_skip_goes_past_an_encrypted_zip_member(tmp_path):
    import zipfile

    from tlearn.data.loader import iter_batches

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("locked.png", PNG)
    patch_member(tmp_path / "a.zip", flags=1)
    good = tmp_path / "good.png"
    good.write_bytes(PNG)
    X = [str(good), f"{tmp_path}/a.zip/locked.png", str(good)]
    (batch,) = iter_batches(X, PRES[2], batch_size=8, on_error="skip")
    assert batch.indices.tolist() == [0, 2] and batch.images.shape == (2, 48, 48, 3)
    assert [e[0] for e in batch.errors] == [1] and "encrypted" in batch.errors[0][2]


def test_plain_files_over_the_byte_limit_are_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.effect_noise((64, 64), 40), "PNG"))
    monkeypatch.setattr(imgmod, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ImageReadError, match="safety limit of 1,000 bytes"):
        read_bytes(str(path))
    assert read_bytes(str(path), max_bytes=10**6) == path.read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero: POSIX")
def test_pipes_and_devices_are_refused_without_blocking(tmp_path):
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody writes: opening it for reading would wait forever
    results: list[BaseException] = []

    def read(path: str) -> None:
        try:
            read_bytes(path)
        except BaseException as e:
            results.append(e)

    for path in [str(fifo), "/dev/zero"]:
        worker = threading.Thread(target=read, args=(path,), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), f"read_bytes({path!r}) blocked"
        assert isinstance(results[-1], ImageReadError) and "regular file" in str(results[-1])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_an_unreadable_file_is_an_image_error(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    path.chmod(0)
    with pytest.raises(ImageReadError, match="permission"):
        read_bytes(str(path))


# --- 16-bit and float samples ---------------------------------------------------------------


def sixteen_bit(values: list[int], fmt: str) -> bytes:
    img = Image.frombytes("I;16", (len(values), 1), np.asarray(values, "<u2").tobytes())
    return encode(img, fmt)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "PPM"])  # I;16, I;16, and I (PGM)
def test_16bit_grey_is_scaled_by_its_bit_depth_not_by_its_maximum(fmt):
    dark = np.asarray(decode_image(sixteen_bit([200, 250, 0], fmt), "x"))[0, :, 0]
    bright = np.asarray(decode_image(sixteen_bit([200, 51400, 65535], fmt), "x"))[0, :, 0]
    assert dark.tolist() == [0, 0, 0] and bright.tolist() == [0, 200, 255]  # 200 -> 0 in both


def test_16bit_big_endian_grey_is_read_by_value():
    img = Image.frombytes("I;16B", (2, 1), np.asarray([51400, 257], ">u2").tobytes())
    assert np.asarray(imgmod.to_rgb(img))[0, :, 0].tolist() == [200, 1]


def test_float_grey_is_read_as_0_to_1_clipped():
    arr = np.array([[0.5, 2.0, -1.0, np.nan]], dtype=np.float32)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "TIFF"), "x"))[0, :, 0]
    assert out.tolist() == [128, 255, 0, 0]
    alone = np.asarray(decode_image(encode(Image.fromarray(arr[:, :1]), "TIFF"), "x"))
    assert alone[0, 0, 0] == 128  # the same value, whatever the other pixels hold


def test_a_jpeg_cut_inside_its_header_is_called_truncated():
    """Issue 27.6: a 300-byte truncated JPEG was a "broken image header"."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageReadError, match="truncated: the file ends after 300 bytes") as e:
        decode_image(buf.getvalue()[:300], "cut.jpg")
    assert "broken image header" not in str(e.value)


def test_only_photo_formats_are_decoded_from_untrusted_bytes():
    """PIL's other plugins are not tried on a file's bytes: an ICO named .jpg is decoded
    before any pixel limit, EPS would run Ghostscript."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "ICO")
    with pytest.raises(ImageReadError, match="not a recognised image format") as e:
        decode_image(buf.getvalue(), "icon.jpg")
    assert e.value.code == "unsupported_format"
    assert decode_image(buf.getvalue(), "icon.ico", formats=("ICO",)).size == (32, 32)
