"""Robust image decoding and the evaluation-time resize + centre crop.

Every image, whatever its mode (grey, palette, RGBA, CMYK, 16-bit), becomes 8-bit RGB;
EXIF orientation is applied; large JPEGs are decoded at reduced size (libjpeg scaling
through PIL's ``draft``) when the model needs fewer pixels. Failures raise
:class:`~tlearn.exceptions.ImageReadError` naming the file and the reason: every failure
to read or decode one image, whatever raised it inside PIL or zipfile, so that
``on_error="skip"`` skips that image and nothing else.

Paths may point inside a zip archive: ``"photos.zip/cat/001.jpg"`` reads member
``cat/001.jpg`` of ``photos.zip`` in place, without extracting.

Resource budget of one image (read, decode, preprocess), checked before the cost is paid:

- reading: at most ``E = min(size on disk, MAX_IMAGE_BYTES)`` bytes, refused beforehand
  from the file's size or a zip member's declared sizes; a zip member also at most
  ``max(ZIP_RATIO_GRACE, MAX_ZIP_RATIO * stored size)``, and never more than that is
  inflated, whatever the member declares. Pipes and devices are refused.
- decoding: ``P`` pixels, at most ``MAX_IMAGE_PIXELS`` from the header before any is
  decoded (fewer for a JPEG decoded at reduced scale); at most 24 bytes a pixel at the
  peak (measured: 4 for RGB, 8-13 for CMYK and 16-bit grey, 16-21 for alpha and float).
  A JPEG is one pass over its pixels per scan, at most ``MAX_JPEG_SCANS``. PIL itself
  inflates at most 64 MiB of a PNG's compressed text chunks
  (``PngImagePlugin.MAX_TEXT_MEMORY``), a constant beside these terms.
- preprocessing: at most ``64 * S**2`` bytes more for resize size ``S``
  (:attr:`Preprocessing.resize_size`), whatever the shape: only the part of the image
  the crop keeps is resampled (:data:`WHOLE_RESIZE_AREA`).

So memory peaks under ``E + 24 * P + 64 * S**2`` bytes (plus a few MiB of buffers) and
time is linear in ``E + P + S**2``; a thread of the loader holds one such image at a time.
At the default limits, a worst case is 0.5 GB read and 4.3 GB decoded: lower
``TLEARN_MAX_IMAGE_PIXELS`` (and the byte limit derived from it) on a small machine.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import threading
import warnings
import zipfile
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlearn.exceptions import ImageReadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_JPEG_SCANS",
    "MAX_ZIP_RATIO",
    "WHOLE_RESIZE_AREA",
    "ZIP_RATIO_GRACE",
    "Preprocessing",
    "decode_image",
    "is_image_name",
    "load_array_image",
    "preprocess_image",
    "read_bytes",
    "split_zip_path",
    "to_rgb",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
#: The PIL formats read from untrusted bytes by default: those of the extensions above
#: (PPM covers .pgm and .pbm; MPO is a JPEG with more frames).
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
#: Images with more pixels than this are refused (decompression-bomb guard). Override with
#: the environment variable ``TLEARN_MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS = int(os.environ.get("TLEARN_MAX_IMAGE_PIXELS", 178_956_970))
#: Files (and inflated zip members) larger than this are refused before they are read: an
#: uncompressed 8-bit RGB file at the pixel limit (3 bytes a pixel, as BMP, PPM or TIFF
#: store it) plus 1 MiB of headers and metadata. Override with ``TLEARN_MAX_IMAGE_BYTES``.
MAX_IMAGE_BYTES = int(os.environ.get("TLEARN_MAX_IMAGE_BYTES", 3 * MAX_IMAGE_PIXELS + 2**20))
#: A zip member larger than ``ZIP_RATIO_GRACE`` bytes may inflate to at most this many
#: times its stored size (image formats hardly compress; a blank 16 MiB bitmap reaches
#: 1,000): what a read costs stays proportional to the bytes in the archive.
MAX_ZIP_RATIO = 100
ZIP_RATIO_GRACE = 16 * 2**20
#: JPEGs with more scans (SOS markers) are refused: each scan of a progressive JPEG is a
#: pass over the whole image, so a few kB of tiny scans would cost minutes.
MAX_JPEG_SCANS = 100

#: An image whose resized copy has at most this many times ``short_side ** 2`` pixels (an
#: aspect ratio up to 8:1) is resized whole, then cropped; a longer one has only the region
#: the crop keeps resampled, so that a 1 x 100,000 image costs no more than a square one.
WHOLE_RESIZE_AREA = 8

_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its input: travels with the weights, never hard-coded.

    Parameters
    ----------
    input_size : int
        Side of the square crop fed to the network.
    mean, std : tuple of 3 floats
        Per-channel normalisation applied to pixels scaled to [0, 1].
    interpolation : str
        Resampling filter for the resize (``"bicubic"``, ``"bilinear"``, ...).
    crop_pct : float
        The shorter side is resized to ``floor(input_size / crop_pct)``, then the centre
        ``input_size`` square is cropped (timm's evaluation transform).
    crop_small : bool
        Whether images smaller than the input (their shorter side below ``input_size``) are
        cropped like the others. ``False``: they are enlarged so the shorter side is exactly
        ``input_size`` and only the longer side is cropped to a square, so a 32 px image
        keeps its border (measured in docs/accuracy.md).
    pad_small : int
        With ``crop_small`` off: pixels of reflected border added on each side of a small
        image, which is enlarged to ``input_size - 2 * pad_small`` first. Fine-tuning's
        random crops use it, so that a small image is seen at the scale it is evaluated at
        (whole, at the evaluation size), shifted, rather than zoomed in.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_small: bool = True
    pad_small: int = 0

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing.interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"Preprocessing.crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.input_size < 8:
            raise ValueError(f"Preprocessing.input_size must be at least 8, got {self.input_size}")
        if not 0 <= 4 * self.pad_small < self.input_size:
            raise ValueError(
                f"Preprocessing.pad_small must be in [0, input_size / 4), got {self.pad_small}"
            )
        # they divide and shift three channels: a model file or an export's metadata with
        # two values, or a zero std, made an IndexError or predictions from inf pixels
        for name, values in (("mean", self.mean), ("std", self.std)):
            v = np.asarray(values, dtype=np.float64)
            if v.shape != (3,) or not np.isfinite(v).all() or (name == "std" and (v <= 0).any()):
                raise ValueError(
                    f"Preprocessing.{name} must be 3 finite numbers (std above 0), got "
                    f"{list(values)[:5]}"
                )

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size / self.crop_pct))

    def with_size(self, input_size: int | None) -> Preprocessing:
        """The same preprocessing at another input size (``None`` keeps this one)."""
        return self if input_size is None else replace(self, input_size=int(input_size))

    def is_small(self, width: int, height: int) -> bool:
        """Whether a ``width`` x ``height`` image is enlarged whole (``crop_small`` off and
        its shorter side below the size it is enlarged to)."""
        return not self.crop_small and min(width, height) < self.input_size - 2 * self.pad_small

    def short_side(self, width: int, height: int) -> int:
        """The length the shorter side of a ``width`` x ``height`` image is resized to."""
        if self.is_small(width, height):
            return self.input_size - 2 * self.pad_small
        return self.resize_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bicubic")),
            crop_pct=float(d.get("crop_pct", 0.875)),
            crop_small=bool(d.get("crop_small", True)),
            pad_small=int(d.get("pad_small", 0)),
        )


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def split_zip_path(path: str) -> tuple[str, str] | None:
    """Split ``"a/b.zip/c/d.jpg"`` into ``("a/b.zip", "c/d.jpg")``; ``None`` if no zip part."""
    norm = str(path)
    lower = norm.lower()
    start = 0
    while True:
        i = lower.find(".zip/", start)
        if i < 0:
            return None
        archive = norm[: i + 4]
        if os.path.isfile(archive):
            return archive, norm[i + 5 :]
        start = i + 5


class _Archive:
    """One open zip per archive and process, shared by every thread: opening an archive
    parses its whole index (0.5 s for the 60,000-member CIFAR-10 zip), which per thread
    and per call was a tenth of a 500-image featurising call. Reads take the archive's
    lock (a member read is microseconds; decoding happens outside it). A file replaced
    on disk (new size, mtime or inode) is opened again."""

    _lock = threading.Lock()
    _open: dict[str, _Archive] = {}

    def __init__(self, path: str, signature: tuple[int, int, int]) -> None:
        self.signature = signature
        self.zip = zipfile.ZipFile(path)
        self.lock = threading.Lock()

    @classmethod
    def read(cls, path: str, member: str, max_bytes: int) -> bytes:
        st = os.stat(path)
        signature = (st.st_size, st.st_mtime_ns, st.st_ino)
        with cls._lock:
            archive = cls._open.get(path)
            if archive is None or archive.signature != signature:
                if archive is not None:
                    with archive.lock:
                        archive.zip.close()
                archive = cls._open[path] = cls(path, signature)
        with archive.lock:
            if archive.zip.fp is not None:
                return _read_member(archive.zip, member, f"{path}/{member}", max_bytes)
        return cls.read(path, member, max_bytes)  # replaced on disk and closed meanwhile

    @classmethod
    def forget(cls) -> None:
        """In a forked child: the parent's handles share their file offsets with it."""
        cls._lock = threading.Lock()
        cls._open = {}


os.register_at_fork(after_in_child=_Archive.forget)


def _read_member(zf: zipfile.ZipFile, member: str, name: str, max_bytes: int) -> bytes:
    """One member's bytes: encryption and the declared sizes checked before anything is
    inflated, and the read itself bounded (a declared size is only a claim)."""
    info = zf.getinfo(member)
    if info.flag_bits & 0x1:
        raise ImageReadError(name, "the zip member is encrypted; extract it with its password")
    allowed = min(max_bytes, max(ZIP_RATIO_GRACE, MAX_ZIP_RATIO * info.compress_size))
    if info.file_size > max_bytes:
        raise ImageReadError(name, _too_large(info.file_size, max_bytes, "the zip member"))
    if info.file_size > allowed:
        raise ImageReadError(
            name,
            f"the zip member would inflate {info.compress_size:,} stored bytes into "
            f"{info.file_size:,}, more than {MAX_ZIP_RATIO} times (the limit past "
            f"{ZIP_RATIO_GRACE // 2**20} MiB): a zip bomb, or an image with nothing in it; "
            "extract it and look at it",
        )
    with zf.open(info) as f:
        data = f.read(allowed + 1)
    if len(data) > allowed:
        raise ImageReadError(
            name, f"the zip member inflates past its declared {info.file_size:,} bytes; "
            "the archive is damaged",
        )  # fmt: skip
    return data


def _too_large(size: int, limit: int, what: str) -> str:
    return (
        f"{what} is {size:,} bytes, above the safety limit of {limit:,} bytes for one image "
        "(TLEARN_MAX_IMAGE_BYTES or max_bytes); resize or re-encode it, or raise the limit "
        "if you trust the file"
    )


def _read_file(path: str, max_bytes: int) -> bytes | None:
    """The bytes of the regular file at ``path``, or ``None`` if no file is there (the path
    may name a zip member). Pipes, devices and files over ``max_bytes`` are refused
    before reading; opening never blocks (``O_NONBLOCK``: a pipe without a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        if os.path.isdir(path):
            raise ImageReadError(path, "this is a folder, not an image file") from None
        advice = "check its permissions" if isinstance(e, PermissionError) else "check the path"
        raise ImageReadError(path, f"cannot open the file ({e}); {advice}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(path, "this is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(path, "not a regular file (a pipe, socket or device)")
        if st.st_size > max_bytes:
            raise ImageReadError(path, _too_large(st.st_size, max_bytes, "the file"))
        with open(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size + 1)  # one byte more tells a file still growing
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({e})") from None
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise ImageReadError(path, "the file grew while it was read; is it still being written?")
    return data


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The raw bytes of an image file, or of a member inside a zip archive.

    Parameters
    ----------
    path : str
        A file, or ``"archive.zip/member"``.
    max_bytes : int, optional
        Refuse a file (or an inflated member) larger than this, before reading it
        (default: :data:`MAX_IMAGE_BYTES`).

    Raises
    ------
    ImageReadError
        For any failure: missing, a folder, a pipe or device, too large, an encrypted,
        damaged or too compressed zip member.
    """
    path = os.fspath(path)
    limit = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    data = _read_file(path, limit)
    if data is not None:
        return data
    parts = split_zip_path(path)
    if parts is None:
        raise ImageReadError(
            path,
            "no such file; check the path (relative paths start from the "
            f"current folder, {os.getcwd()!r})",
        )
    archive, member = parts
    try:
        return _Archive.read(archive, member, limit)
    except ImageReadError:
        raise
    except KeyError:
        raise ImageReadError(path, f"no member {member!r} in archive {archive!r}") from None
    except Exception as e:  # zipfile: BadZipFile, zlib.error, EOFError, NotImplementedError...
        # zipfile's messages can quote the archive's own bytes (a damaged header, whole):
        # the reason stays one readable line
        detail = str(e) if len(str(e)) <= 200 else f"{str(e)[:200]}..."
        raise ImageReadError(
            path, f"the archive {archive!r} is damaged ({type(e).__name__}: {detail})"
        ) from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparent pixels are composited onto white.

    Samples wider than 8 bits are scaled by their mode's range, never by the image's own
    values (a pixel keeps its value whatever the others are): 16-bit grey (``I;16*``, and
    ``I``, in which PIL opens 16-bit PGM and some TIFFs) keeps its high byte, ``v >> 8``
    (so ``257 * k`` becomes ``k``; ``I`` is clipped to 0-65535 first); 32-bit float grey
    (``F``) is read as 0-1, the convention of float images in scikit-image and
    torchvision, clipped, NaN as 0.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_8bit(np.asarray(img))).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(arr: np.ndarray) -> np.ndarray:
    """16-bit integer or 0-1 float samples -> uint8, by the type's range (see ``to_rgb``).
    The first step copies (``arr`` is PIL's read-only buffer), the others work in place:
    a large image costs one copy, not five."""
    if arr.dtype.kind == "f":
        out = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(out, 0.0, 1.0, out=out)
        out *= 255.0
        out += 0.5
    elif arr.dtype.itemsize > 2:  # mode I: int32 holding 16-bit samples
        out = np.clip(arr, 0, 65535)
        out >>= 8
    else:
        out = arr >> 8
    return out.astype(np.uint8)


def decode_image(
    data: bytes | bytearray,
    path: str = "<bytes>",
    min_side: int | None = None,
    *,
    formats: tuple[str, ...] | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB PIL image.

    Parameters
    ----------
    data : bytes
        The encoded file.
    path : str
        Used in error messages only.
    min_side : int, optional
        The shortest side the caller needs. JPEGs larger than that are decoded at a
        reduced scale (1/2, 1/4 or 1/8), which is several times faster.
    formats : tuple of str, optional
        PIL format names to accept (an allow-list: no other decoder is even tried);
        default: :data:`IMAGE_FORMATS`, the photo formats of :data:`IMAGE_EXTENSIONS`
        (never PIL's other plugins, such as EPS, which runs Ghostscript, or ICO, which
        decodes before the pixel limit is checked).
    max_pixels : int, optional
        Refuse images with more pixels than this, from the header, before decoding
        (default: :data:`MAX_IMAGE_PIXELS`).

    Raises
    ------
    ImageReadError
        With ``code`` ``empty_image``, ``unsupported_format``, ``too_many_pixels`` or
        ``corrupt_image``.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    Image.init()  # PIL registers its openers lazily; MPO is opened by the JPEG one
    formats = tuple(f for f in (formats or IMAGE_FORMATS) if f in Image.OPEN)
    if not data:
        raise ImageReadError(
            path, "the file is empty (0 bytes); re-export or remove it", "empty_image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        allowed = ", ".join(formats) if formats else "JPEG or PNG"
        raise ImageReadError(
            path,
            f"not a recognised image format (is it an image at all?); send {allowed}",
            "unsupported_format",
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"{e}; resize it first", "too_many_pixels") from None
    except Exception as e:  # PIL raises many types for broken headers
        why = f"{type(e).__name__}: {e}"
        if "truncat" in str(e).lower():  # ends inside the header: not a broken one
            why = f"the file ends after {len(data):,} bytes, inside its header ({e})"
            raise ImageReadError(
                path, f"the file is truncated: {why}; re-export or remove it", "corrupt_image"
            ) from None
        raise ImageReadError(path, f"broken image header ({why})", "corrupt_image") from None
    _check_cost(
        img, data, path, limit, "TLEARN_MAX_IMAGE_PIXELS" if max_pixels is None else "max_pixels"
    )
    return _load_upright(img, path, min_side)


def _check_cost(
    img: Image.Image, data: bytes | bytearray, path: str, limit: int, knob: str
) -> None:
    """Refuse, from the header alone, an image whose decoding would cost more than its
    pixels: too many of them, none, or too many JPEG scans (a pass over the image each)."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageReadError(
            path, f"the header says {width}x{height} pixels; the file is corrupt", "corrupt_image"
        )
    scans = data.count(b"\xff\xda") if img.format in ("JPEG", "MPO") else 0
    if scans > MAX_JPEG_SCANS:
        raise ImageReadError(
            path,
            f"the JPEG has {scans:,} scans, over the {MAX_JPEG_SCANS} that any encoder "
            "writes (about 10 for a progressive one): each scan is a pass over the whole "
            "image; re-encode it",
            "corrupt_image",
        )
    if width * height > limit:
        raise ImageReadError(
            path,
            f"the image is {width}x{height} = {width * height:,} pixels, above the safety "
            f"limit of {limit:,}; resize it, or raise the limit ({knob}) if you trust the file",
            "too_many_pixels",
        )


def _load_upright(img: Image.Image, path: str, min_side: int | None) -> Image.Image:
    try:
        if min_side is not None and img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
            img.draft(img.mode, (min_side, min_side))
        img.load()
        _turn_upright(img)
        return to_rgb(img)
    except ImageReadError:
        raise
    except Exception as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            msg = f"the file is truncated or corrupt ({msg}); re-export or remove it"
        raise ImageReadError(path, msg, "corrupt_image") from None


def _turn_upright(img: Image.Image) -> None:
    """Apply the EXIF orientation, in place (not a copy of every image). An EXIF block PIL
    cannot parse is metadata lost, not a broken image: the pixels stay as stored (it made
    a third of the files with junk EXIF unreadable before)."""
    with contextlib.suppress(Exception):  # struct.error, SyntaxError, ValueError, ...
        ImageOps.exif_transpose(img, in_place=True)


def preprocess_image(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Resize the shorter side to ``pre.short_side(...)`` (``resize_size``, or the input
    size itself for a small image when ``crop_small`` is off) and centre-crop
    ``pre.input_size`` (a small image with ``pad_small``: crop less, then reflect the
    border out to the input size).

    The work is bounded by the output size, whatever the shape: an image of ordinary
    shape is resized whole, then cropped; a longer one has only the region the crop
    keeps resampled (a 1 x 100,000 image is not first enlarged to 256 x 25,600,000).

    Returns a ``(input_size, input_size, 3)`` uint8 array. Normalisation happens later,
    on whole batches.
    """
    w, h = img.size
    pad = pre.pad_small if pre.is_small(w, h) else 0
    size = pre.input_size - 2 * pad
    if (w, h) != (size, size):
        img = _resize_centre_crop(img, pre.short_side(w, h), size, pre.interpolation)
    arr = np.array(img, dtype=np.uint8)  # writable, so torch.from_numpy may take it
    if pad:
        arr = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return arr


def _resize_centre_crop(img: Image.Image, short: int, size: int, interpolation: str) -> Image.Image:
    """The centre ``size`` square of ``img`` resized so its shorter side is ``short``.

    An image of ordinary shape (the resized image at most :data:`WHOLE_RESIZE_AREA` times
    ``short ** 2``) is resized whole and cropped, as always. A longer one would cost its
    length times ``short``, so only the region the crop keeps is resampled (PIL's ``box``,
    in source coordinates: same filter and scale, the neighbours outside the box
    included). Its pixels can differ from resize-then-crop by the rounding of PIL's
    two passes (measured in the tests), not by position."""
    w, h = img.size
    if w <= h:
        new_w, new_h = short, max(short, int(short * h / w))
    else:
        new_w, new_h = max(short, int(short * w / h)), short
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    filt = _INTERPOLATIONS[interpolation]
    if new_w * new_h <= WHOLE_RESIZE_AREA * short * short:
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), filt)
        return img.crop((left, top, left + size, top + size))
    # integer numerators, one rounding each: the far edges never pass the image's own
    box = (left * w / new_w, top * h / new_h, (left + size) * w / new_w, (top + size) * h / new_h)
    return img.resize((size, size), filt, box=box)


def load_array_image(arr: np.ndarray, index: int = 0) -> Image.Image:
    """One uint8 array image, ``(h, w)`` grey or ``(h, w, 3)`` RGB, as a PIL RGB image."""
    if arr.dtype != np.uint8:
        raise ImageReadError(
            f"X[{index}]",
            f"array images must be uint8 (0-255), got dtype {arr.dtype}; "
            "convert with (x * 255).clip(0, 255).astype(np.uint8) if they are floats in [0, 1]",
        )
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(arr))
    if arr.ndim == 3 and arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0])).convert("RGB")
    raise ImageReadError(
        f"X[{index}]", f"array images must have shape (h, w) or (h, w, 3), got {arr.shape}"
    )
