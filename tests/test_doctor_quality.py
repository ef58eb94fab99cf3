"""The doctor's scan on camera-sized photos: image quality measured on a reduced copy agrees
with cleanvision's every-pixel formulas, and the threaded decoding keeps order and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from tests.synthetic import _photo
from tlearn.doctor.duplicates import iter_decoded
from tlearn.doctor.quality import QUALITY_SIDE, THRESHOLDS, image_properties, quality_scores


def _every_pixel(img: Image.Image) -> dict[str, float]:
    """cleanvision's measurements on all the pixels (the reference)."""
    arr = np.asarray(img).astype(np.float64)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    brightness = np.sqrt(0.241 * r * r + 0.691 * g * g + 0.068 * b * b) / 255
    p5, p99 = np.percentile(brightness, [5, 99])
    w, h = img.size
    return {"brightness_p5": p5, "brightness_p99": p99, "entropy": img.entropy(),
            "aspect_ratio": min(w / h, h / w), "size": math.sqrt(w * h)}  # fmt: skip


@pytest.fixture(scope="module")
def camera_photos() -> dict[str, Image.Image]:
    """12 MP-class photos (scikit-image's, enlarged, with sensor-like noise): sharp, dark,
    blurred."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(_photo("chelsea")).resize((3456, 2304), Image.Resampling.BICUBIC)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-6, 7, (2304, 3456, 3))
    sharp = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return {
        "sharp": sharp,
        "dark": ImageEnhance.Brightness(sharp).enhance(0.12),
        # blur is judged at 64 px, as cleanvision does: a blur of 2.5% of the side
        "blurred": sharp.filter(ImageFilter.GaussianBlur(90)),
    }


def test_large_photos_are_measured_reduced_like_every_pixel(camera_photos):
    for name, img in camera_photos.items():
        assert max(img.size) > 2 * QUALITY_SIDE
        got, want = image_properties(img), _every_pixel(img)
        assert got["size"] == pytest.approx(want["size"]), name  # the original's
        assert got["aspect_ratio"] == pytest.approx(want["aspect_ratio"]), name
        for key in ("brightness_p5", "brightness_p99"):
            assert abs(got[key] - want[key]) < 0.01, (name, key, got[key], want[key])
        assert abs(got["entropy"] - want["entropy"]) < 0.15, (name, got["entropy"])
    # and the verdicts are the ones the photos call for
    props = [image_properties(img) for img in camera_photos.values()]
    props += [image_properties(Image.fromarray(_photo(n))) for n in ("astronaut", "coffee")]
    scores = quality_scores(props)
    flagged = {issue: [name for name, s in zip([*camera_photos, "a", "c"], v, strict=True)
                       if s < THRESHOLDS[issue]] for issue, v in scores.items()}  # fmt: skip
    assert flagged["dark"] == ["dark"]
    assert "blurred" in flagged["blurry"] and "sharp" not in flagged["blurry"]  # dark: weak edges
    assert not flagged["odd_size"] and not flagged["low_information"]


@pytest.mark.parametrize("side", [8, 200])  # one thread for tiny images, a pool for others
def test_decoding_keeps_order_and_reasons(tmp_path, side, monkeypatch):
    import tlearn.data.loader as loader  # its ordered_map runs the threads

    pools = []
    real_pool = loader.ThreadPoolExecutor
    monkeypatch.setattr(loader, "ThreadPoolExecutor",
                        lambda *a, **k: pools.append(a) or real_pool(*a, **k))  # fmt: skip
    paths = []
    for i in range(40):
        path = tmp_path / f"{i:02d}.png"
        Image.new("RGB", (side + i, 160), (i, 0, 0)).save(path)
        paths.append(str(path))
    (tmp_path / "07.png").write_bytes(b"")  # empty
    (tmp_path / "31.png").write_bytes(b"not an image at all")
    got = list(iter_decoded(paths, then=lambda a: (a.shape[1], int(a[0, 0, 0])), n_workers=3))
    assert [index for index, _, _ in got] == list(range(40))
    assert [i for i, value, _ in got if value is None] == [7, 31]
    assert all(value == (side + i, i) for i, value, _ in got if value is not None)
    assert "empty" in got[7][2] and got[31][2]
    raw = list(iter_decoded(paths, n_workers=3))
    assert raw[3][1].shape == (160, side + 3, 3) and raw[7][1] is None
    assert len(pools) == (2 if side == 200 else 0), pools
