"""evaluate() reports and batch prediction rows, including failures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from tlearn import LinearProbe, UnknownClassError
from tlearn.evaluation import evaluate
from tlearn.inference import iter_predictions, write_predictions


@pytest.fixture(scope="module")
def probe(shapes3):
    # without flip averaging, so that test-time mirroring has something to add
    return LinearProbe(image_size=64, Cs=[1.0], flip_average=False).fit(shapes3[0], shapes3[1])


def test_report_matches_sklearn(probe, shapes3):
    _, _, X_test, y_test = shapes3
    report = evaluate(probe, X_test, y_test)
    assert report.accuracy == pytest.approx(accuracy_score(y_test, probe.predict(X_test)))
    cm = np.array(report.confusion_matrix)
    assert cm.shape == (3, 3) and cm.sum() == 30 and np.trace(cm) == round(report.accuracy * 30)
    assert [r["support"] for r in report.per_class] == [10, 10, 10]
    assert json.loads(report.to_json())["n_images"] == 30


def test_unknown_classes_raise_or_are_left_out(probe, shapes3):
    _, _, X_test, y_test = shapes3
    y = np.array(y_test, dtype=object)
    y[:2] = "dog"
    with pytest.raises(UnknownClassError, match="dog"):
        evaluate(probe, X_test, y)
    report = evaluate(probe, X_test, y, unknown="skip")
    assert report.n_images == 28 and len(report.unknown) == 2


def test_predictions_keep_order_and_report_failures(probe, shapes3, tmp_path):
    good = list(shapes3[2][:4])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inputs = [good[0], str(bad), *good[1:], str(tmp_path / "missing.jpg")]
    rows = list(iter_predictions(probe, inputs, top_k=2, chunk_size=3))
    assert [r["path"] for r in rows] == inputs
    assert rows[1]["error"] and rows[1]["label"] is None
    assert "no such file" in rows[-1]["error"]
    expected = probe.predict(good)
    assert [rows[i]["label"] for i in (0, 2, 3, 4)] == list(expected)
    assert all(len(r["top_labels"]) == 2 for r in rows if not r["error"])
    out = tmp_path / "preds.csv"
    counts = write_predictions(iter(rows), out, top_k=2)
    assert counts == {"ok": 4, "failed": 2}
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and table[1]["error"] and table[0]["label_2"]
    jsonl = tmp_path / "preds.jsonl"
    write_predictions(iter(rows), jsonl)
    assert len(jsonl.read_text().splitlines()) == 6


def test_predict_to_file_outputs_and_refusals(probe, shapes3, tmp_path):
    import pyarrow.parquet as pq

    from tlearn import DataError
    from tlearn.inference import predict_to_file

    paths = list(shapes3[2][:6])
    out = tmp_path / "p.csv"
    assert predict_to_file(probe, paths, out) == {"ok": 6, "failed": 0, "skipped": 0}
    with pytest.raises(DataError, match="exists.*--overwrite.*--resume"):
        predict_to_file(probe, paths, out)
    assert predict_to_file(probe, paths, out, overwrite=True)["ok"] == 6
    assert predict_to_file(probe, paths + [shapes3[2][6]], out, resume=True) == {
        "ok": 1,
        "failed": 0,
        "skipped": 6,
    }
    with pytest.raises(DataError, match="does not exist"):
        predict_to_file(probe, paths, tmp_path / "missing" / "p.csv")
    with pytest.raises(DataError, match="unknown output format"):
        predict_to_file(probe, paths, tmp_path / "p.xlsx")
    table = (
        pq.read_table(tmp_path / "p.parquet")
        if predict_to_file(probe, paths, tmp_path / "p.parquet", top_k=2)
        else None
    )
    assert table is not None and table.num_rows == 6
    assert table.column("top_labels").to_pylist()[0][0] == table.column("label").to_pylist()[0]


def test_tta_averages_the_mirror_image(probe, shapes3):
    paths = list(shapes3[2][:4])
    plain = [r["top_probabilities"] for r in iter_predictions(probe, paths, top_k=3)]
    tta = [r["top_probabilities"] for r in iter_predictions(probe, paths, top_k=3, tta=True)]
    mirrored = probe.features_
    flipped = np.concatenate([f for _, f, _ in mirrored.iter_features(paths, hflip=True)])
    expected = (probe.predict_proba(paths) + probe.predict_proba_features(flipped)) / 2
    got = np.array([sorted(t, reverse=True) for t in tta])
    assert np.allclose(got, -np.sort(-expected, axis=1), atol=1e-6)
    assert not np.allclose(np.array(plain), got)


def test_parquet_output_is_a_folder_of_parts_that_resumes(probe, shapes3, tmp_path, monkeypatch):
    import pandas as pd

    import tlearn.outputs
    from tlearn import DataError
    from tlearn.inference import predict_to_file

    monkeypatch.setattr(tlearn.outputs, "PART_ROWS", 4)  # 10 images: parts of 4, 4 and 2
    paths = list(shapes3[2][:10])
    out = tmp_path / "p.parquet"
    assert predict_to_file(probe, paths, out, top_k=2)["ok"] == 10
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [f"part-{i:09d}.parquet" for i in (0, 4, 8)]
    whole = pd.read_parquet(out)
    assert whole["row_id"].tolist() == list(range(10)) and whole["path"].tolist() == paths
    (out / "part-000000004.parquet").unlink()  # rows 4-7 lost, as by a killed run
    (out / ".tmp-abc.parquet").write_bytes(b"half a part")  # a torn part is ignored
    counts = predict_to_file(probe, paths, out, top_k=2, resume=True)
    assert counts == {"ok": 4, "failed": 0, "skipped": 6}
    again = pd.read_parquet(out).sort_values("row_id")
    assert again["row_id"].tolist() == list(range(10))
    assert (
        again.drop(columns="top_probabilities")
        .reset_index(drop=True)
        .equals(whole.drop(columns="top_probabilities"))
    )
    assert not (out / ".tmp-abc.parquet").exists()
    old = tmp_path / "old.parquet"  # one file, as an earlier tlearn wrote it
    old.write_bytes((out / "part-000000000.parquet").read_bytes())
    with pytest.raises(DataError, match="single Parquet file.*--overwrite"):
        predict_to_file(probe, paths, old, resume=True)


def test_featurize_rows_match_the_transformer(probe, shapes3, tmp_path):
    import pandas as pd

    from tlearn import DataError
    from tlearn.inference import featurize_to_file

    paths = list(shapes3[2][:5])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    inputs = [*paths[:2], str(bad), *paths[2:]]
    expected = probe.features_.transform(paths)
    out = tmp_path / "f.parquet"
    assert featurize_to_file(probe, inputs, out) == {"ok": 5, "failed": 1, "skipped": 0}
    table = pd.read_parquet(out)
    assert table["row_id"].tolist() == list(range(6)) and table["path"].tolist() == inputs
    assert table["features"][2] is None and "not a recognised image" in table["error"][2]
    got = np.stack(table["features"].drop(index=2).to_numpy())
    assert got.dtype == np.float32 and np.allclose(got, expected, atol=1e-5)
    jsonl = tmp_path / "f.jsonl"
    featurize_to_file(probe, inputs[:3], jsonl)
    featurize_to_file(probe, inputs, jsonl, resume=True)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["row_id"] for r in lines] == list(range(6))
    assert np.allclose(lines[5]["features"], expected[4], atol=1e-5)
    with pytest.raises(DataError, match=r"use \.parquet or \.jsonl"):
        featurize_to_file(probe, inputs, tmp_path / "f.csv")
