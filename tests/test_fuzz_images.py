"""Image reading, decoding and preprocessing on untrusted bytes: whatever a file or a zip
member holds (any mode and format, truncated or bit-flipped data, thin images, huge
declared sizes, EXIF junk, zip bombs, encrypted or damaged members), the answer is a
``(size, size, 3)`` uint8 array or an :class:`ImageReadError` on one line, within the
resource budget of ``tlearn.data.images`` (time, and peak memory as a function of the
bytes, the pixels the header declares and the output size).

Inputs that once broke it are kept in tests/corpus/images/ and replayed every run."""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from tests.test_images import patch_member
from tlearn.data import images as imgmod
from tlearn.data.images import Preprocessing, decode_image, preprocess_image, read_bytes
from tlearn.exceptions import ImageReadError

CORPUS = Path(__file__).parent / "corpus" / "images"
PRE = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)  # resize size 73
MAX_PIXELS = 2**20  # what the fuzzed images may declare: keeps each example light
SECONDS = 3.0  # per input; every one here decodes in milliseconds when all is well
SLACK = 8 * 2**20  # allocator and library buffers outside the budget's terms
HWM = Path("/proc/self/status")
FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP", "PPM"]
MODES = ["1", "L", "P", "PA", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "I", "F"]

# what users get: PIL's warnings (corrupt EXIF, odd palettes...) printed, not raised
pytestmark = pytest.mark.filterwarnings("ignore:::PIL")


def _high_water() -> int:
    """This process's peak resident memory since the last :func:`_reset_high_water`
    (0 where /proc does not say)."""
    if not HWM.exists():
        return 0
    return int(HWM.read_text().split("VmHWM:")[1].split()[0]) * 1024


def _reset_high_water() -> int:
    """Restart the peak at the current resident size, and return that size."""
    if not HWM.exists():
        return 0
    Path("/proc/self/clear_refs").write_text("5")
    return int(HWM.read_text().split("VmRSS:")[1].split()[0]) * 1024


def _declared_pixels(data: bytes) -> int:
    """The pixels the header declares (0 if PIL cannot even read it), at most the limit."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return min(img.width * img.height, MAX_PIXELS)
    except Exception:
        return 0


def within_budget(
    name: str, run: Callable[[], object], encoded: int, pixels: Callable[[], int]
) -> None:
    """``run()`` gives a (64, 64, 3) uint8 array or an ImageReadError naming ``name`` on one
    line, in bounded time, its peak memory under the module docstring's budget
    ``E + 24 P + 64 S^2`` (plus SLACK)."""
    base = _reset_high_water()
    start = time.perf_counter()
    try:
        out = run()
    except ImageReadError as e:
        assert e.path == name and e.reason and "\n" not in str(e), repr(e)
        assert len(str(e)) < 2000, str(e)[:300]
    else:
        assert isinstance(out, np.ndarray) and out.shape == (64, 64, 3) and out.dtype == np.uint8
    seconds = time.perf_counter() - start
    assert seconds < SECONDS, f"{name}: {seconds:.1f} s"
    if base:
        peak = _high_water() - base
        budget = encoded + 24 * pixels() + 64 * PRE.resize_size**2 + SLACK
        assert peak <= budget, f"{name}: {peak / 2**20:.1f} MiB > {budget / 2**20:.1f} MiB"


def check_bytes(data: bytes, name: str = "fuzz") -> None:
    def run() -> np.ndarray:
        img = decode_image(data, name, min_side=PRE.resize_size, max_pixels=MAX_PIXELS)
        return preprocess_image(img, PRE)

    # the budget's constant term: PIL inflates up to 64 MiB of a PNG's compressed text
    text = data.startswith(b"\x89PNG") and (b"zTXt" in data or b"iTXt" in data)
    encoded = len(data) + (PngImagePlugin.MAX_TEXT_MEMORY if text else 0)
    within_budget(name, run, encoded, lambda: _declared_pixels(data))


def check_path(path: str, archive_bytes: int) -> None:
    """Through read_bytes, as the loader reads; the budget counts the bytes read (at most
    ``archive_bytes``) and the pixels the read bytes declare."""
    declared = [MAX_PIXELS]

    def run() -> np.ndarray:
        data = read_bytes(path)
        declared[0] = _declared_pixels(data)
        img = decode_image(data, path, min_side=PRE.resize_size, max_pixels=MAX_PIXELS)
        return preprocess_image(img, PRE)

    within_budget(path, run, archive_bytes, lambda: declared[0])


# --- images of every mode and format, thin ones, EXIF junk ----------------------------------


def render(case: dict) -> bytes:
    """The file a drawn case describes; saved as RGB where the format refuses the mode."""
    w, h = case["size"]
    rng = np.random.default_rng(case["seed"])
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mode = case["mode"]
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (h, w))
        img = Image.fromarray((values / 65535.0).astype(np.float32)) if mode == "F" else (
            Image.fromarray(values.astype(np.uint16)).convert(mode) if mode == "I" else
            Image.frombytes("I;16", (w, h), values.astype("<u2").tobytes()))  # fmt: skip
    elif mode != "RGB":
        try:
            img = img.convert(mode)
        except ValueError:  # no direct conversion (PA): through P
            img = img.convert("P").convert(mode)
    kw: dict = {}
    if case["exif"] is not None:
        kw["exif"] = case["exif"]
    if case["transparency"] and mode in ("P", "L"):
        kw["transparency"] = 0
    # the format refuses the mode, or the size (WebP: 16,383 px a side): RGB, then PNG
    for image, fmt, options in [(img, case["format"], kw), (img.convert("RGB"), case["format"], {}),
                                (img.convert("RGB"), "PNG", {})]:  # fmt: skip
        buf = io.BytesIO()
        try:
            image.save(buf, format=fmt, **options)
            return buf.getvalue()
        except Exception:  # PIL's writers raise many types (SyntaxError for TIFF EXIF junk)
            continue
    raise AssertionError(f"cannot render {case}")


def _exif(orientation: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


SIDES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 3, 300, 4000, 20_000]))
EXIFS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, 3, 6, 8, 9, 65535]).map(_exif),
    st.binary(max_size=40).map(lambda b: b"Exif\x00\x00MM\x00*" + b),  # junk after the header
    st.binary(max_size=40),
)
CASES = st.fixed_dictionaries(
    {
        "size": st.tuples(SIDES, SIDES).filter(lambda s: s[0] * s[1] <= 200_000),
        "mode": st.sampled_from(MODES),
        "format": st.sampled_from(FORMATS),
        "exif": EXIFS,
        "transparency": st.booleans(),
        "seed": st.integers(0, 3),
    }
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_images_of_any_mode_format_and_shape_give_pixels_or_one_error(case):
    check_bytes(render(case))


# --- truncated and bit-flipped files --------------------------------------------------------

SEEDS = [
    render({"size": s, "mode": m, "format": f, "exif": x, "transparency": False, "seed": 0})
    for f in FORMATS
    for s, m, x in [((23, 17), "RGB", _exif(6)), ((9, 31), "L", None), ((12, 12), "RGBA", None)]
] + [render({"size": (8, 8), "mode": "I;16", "format": "PNG", "exif": None,
             "transparency": False, "seed": 1})]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 4] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data[: draw(st.integers(1, len(data)))])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_truncated_and_bit_flipped_files_give_pixels_or_one_error(data):
    check_bytes(data)


# --- headers that declare huge or thin images -----------------------------------------------


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b"")


def _seed(fmt: str) -> bytearray:
    return bytearray(SEEDS[FORMATS.index(fmt) * 3 + 1])  # the grey 9 x 31 one, no EXIF


def _jpeg(width: int, height: int) -> bytes:
    data = _seed("JPEG")
    struct.pack_into(
        ">HH", data, data.index(b"\xff\xc0") + 5, min(height, 65535), min(width, 65535)
    )
    return bytes(data)


def _bmp(width: int, height: int) -> bytes:
    data = _seed("BMP")
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def _gif(width: int, height: int) -> bytes:
    data = _seed("GIF")
    size = (min(width, 65535), min(height, 65535))
    struct.pack_into("<HH", data, 6, *size)  # the logical screen
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[at] == 0x21:  # extension blocks, up to the image descriptor
        at += 2
        while data[at]:
            at += data[at] + 1
        at += 1
    struct.pack_into("<HH", data, at + 5, *size)
    return bytes(data)


def _ppm(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + bytes(300)


DIMENSIONS = st.sampled_from(
    [(1, 10**6), (10**6, 1), (1, 65535), (65535, 1), (65535, 65535), (2**31 - 1, 1),
     (3, 2**31 - 1), (0, 10), (10, 0), (1000, 1000), (1024, 1024), (1025, 1024)]
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(make=st.sampled_from([_png, _jpeg, _bmp, _gif, _ppm]), size=DIMENSIONS)
def test_declared_sizes_are_checked_before_decoding(make, size):
    check_bytes(make(*size))


# --- zip members: bombs, encryption, unknown methods, lies, damage --------------------------

ZIP_LIMIT = 2**20  # the byte limit during the zip fuzz, with a 256 KiB ratio grace
MEMBERS = st.sampled_from(
    [SEEDS[0], SEEDS[3], bytes(ZIP_LIMIT + 1), bytes(300_000), b"", b"\x89PNG\r\n\x1a\n"]
)
LIES = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"flags": st.sampled_from([1, 0x40, 0x08, 0x801])}),
    st.fixed_dictionaries({"method": st.sampled_from([0, 8, 9, 12, 14, 93, 99])}),
    st.fixed_dictionaries({"crc": st.integers(0, 2**32 - 1)}),
    st.fixed_dictionaries({"file_size": st.sampled_from([0, 1, 100, 2**20 + 1, 2**32 - 1])}),
    st.fixed_dictionaries({"compress_size": st.sampled_from([0, 1, 2**31, 2**32 - 1])}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    member=MEMBERS,
    method=st.sampled_from(
        [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
    ),  # fmt: skip
    lie=LIES,
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3),
)
def test_zip_members_give_pixels_or_one_error(tmp_path_factory, member, method, lie, flips):
    path = tmp_path_factory.getbasetemp() / "fuzz.zip"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("x.png", member)
    patch_member(path, **lie)
    data = bytearray(path.read_bytes())
    for at, xor in flips:
        data[at % len(data)] ^= xor
    path.write_bytes(bytes(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imgmod, "MAX_IMAGE_BYTES", ZIP_LIMIT)
        mp.setattr(imgmod, "ZIP_RATIO_GRACE", ZIP_LIMIT // 4)
        try:
            # read at most ZIP_LIMIT, holding at most the archive's compressed bytes beside
            check_path(f"{path}/x.png", len(data) + 2 * ZIP_LIMIT)
        finally:
            close_archives()


def close_archives() -> None:
    """Forget the shared open archives: the next example rewrites the same file."""
    for archive in imgmod._Archive._open.values():
        archive.zip.close()
    imgmod._Archive.forget()


# --- inputs that once broke it --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_replays(name):
    """Every input that once crashed, hung or blew up reading now gets an answer in budget:
    an image file through decoding, a zip through each of its members."""
    path = CORPUS / name
    if path.suffix != ".zip":
        check_bytes(path.read_bytes(), name)
        return
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
    except zipfile.BadZipFile:
        members = ["image.png"]
    # at the default limits a member inflates to at most this, held once more while read
    size = path.stat().st_size
    inflated = max(imgmod.ZIP_RATIO_GRACE, imgmod.MAX_ZIP_RATIO * size)
    try:
        for member in members:
            check_path(f"{path}/{member}", size + 2 * inflated)
    finally:
        close_archives()
