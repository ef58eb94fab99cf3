"""Evaluation reports: metrics, plots, and a self-contained HTML page checked in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tlearn import FineTuneClassifier, LinearProbe
from tlearn.evaluation import evaluate


@pytest.fixture(scope="module")
def report(shapes3):
    X, y, X_test, y_test = shapes3
    probe = LinearProbe(image_size=32, Cs=[1.0]).fit(X, y)
    return evaluate(probe, X_test, y_test)


def test_metrics_are_consistent(report):
    cm = np.array(report.confusion_matrix)
    assert report.accuracy == pytest.approx(np.trace(cm) / cm.sum())
    recalls = cm.diagonal() / cm.sum(axis=1)
    assert report.balanced_accuracy == pytest.approx(recalls.mean())
    assert report.top_k == 2 and report.top_k_accuracy >= report.accuracy
    assert 0.0 <= report.expected_calibration_error <= 1.0
    assert sum(b["count"] for b in report.reliability) == report.n_images
    probs = [m["probability"] for m in report.confident_mistakes]
    assert probs == sorted(probs, reverse=True)
    assert all(m["true"] != m["predicted"] for m in report.confident_mistakes)
    assert len(report.confident_mistakes) == min(24, cm.sum() - np.trace(cm))
    for pair in report.confused_pairs:
        i, j = report.classes.index(pair["true"]), report.classes.index(pair["predicted"])
        assert cm[i, j] == pair["count"]
    data = json.loads(report.to_json())
    assert {
        "balanced_accuracy",
        "macro_f1",
        "weighted_f1",
        "top_2_accuracy",
        "log_loss",
        "expected_calibration_error",
        "per_class",
        "confusion_matrix",
        "failed",
    } <= set(data)


def test_report_folder_and_html_render_in_chromium(report, tmp_path):
    paths = report.save(tmp_path / "report")
    for name in ("confusion.png", "reliability.png", "metrics.json", "report.html"):
        assert (tmp_path / "report" / name).is_file()
    page = (tmp_path / "report" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained, offline
    assert page.count("data:image/jpeg;base64,") == len(report.confident_mistakes)
    assert page.count("data:image/png;base64,") == 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is needed to check the report renders; `make test` installs Debian's chromium"
        )
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1300,1800",
            f"--screenshot={shot}",
            f"file://{paths['html']}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1800, 1300)
    r, b = pixels[..., 0], pixels[..., 2]
    blue = (b > r + 60) & (b > 120)  # the confusion matrix's Blues colour map
    assert blue[150:700].sum() > 2000, "the plots did not render"
    dark = (pixels.sum(axis=2) < 200).sum()
    assert dark > 5000, "no text rendered"


def test_fine_tuned_report_has_training_curves(shapes3, tmp_path):
    X, y, X_test, y_test = shapes3
    model = FineTuneClassifier(
        strategy="head", image_size=32, epochs=2, validation_size=0.2, verbose=0
    ).fit(X, y)
    paths = evaluate(model, X_test, y_test).save(tmp_path / "r")
    assert "training curves" in paths and (tmp_path / "r" / "curves.png").is_file()


def test_array_inputs_get_thumbnails_too(shapes3, tmp_path):
    from tlearn.data.images import decode_image, read_bytes

    X, y, X_test, y_test = shapes3
    arrays = np.stack([np.asarray(decode_image(read_bytes(p))) for p in X_test])
    probe = LinearProbe(image_size=32, Cs=[1.0]).fit(X, y)
    rep = evaluate(probe, arrays, y_test)
    html = rep.to_html()
    assert html.count("data:image/jpeg;base64,") == len(rep.confident_mistakes)
