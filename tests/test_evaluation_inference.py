"""evaluate() reports and batch prediction rows, including failures."""

from __future__ import annotations

import csv
import json
import os
import shutil

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
    counts = write_predictions(iter(rows), tmp_path / "preds.csv")
    assert counts == {"ok": 4, "failed": 2}
    write_predictions(iter(rows), tmp_path / "preds.jsonl")
    write_predictions(iter(rows), tmp_path / "preds.parquet")


def _as_read(output) -> tuple[list[str], list[dict]]:
    """An output's columns and rows as a user reads them back: pandas for Parquet, one
    json.loads a line for JSON Lines, csv plus json.loads of the list cells for CSV."""
    import pandas as pd

    if output.suffix == ".parquet":
        table = pd.read_parquet(output)
        rows = [
            {**r, "row_id": int(r["row_id"]), "top_labels": list(r["top_labels"]),
             "top_probabilities": list(r["top_probabilities"]),
             "label": r["label"] if isinstance(r["label"], str) else None,
             "probability": None if r["probability"] != r["probability"] else r["probability"]}
            for r in table.to_dict("records")
        ]  # fmt: skip
        return list(table.columns), rows
    if output.suffix == ".jsonl":
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        return list(rows[0]), rows
    with output.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [
            {**r, "row_id": int(r["row_id"]), "label": r["label"] or None,
             "probability": float(r["probability"]) if r["probability"] else None,
             "top_labels": json.loads(r["top_labels"]),
             "top_probabilities": json.loads(r["top_probabilities"])}
            for r in reader
        ]  # fmt: skip
        return list(reader.fieldnames or ()), rows


def test_every_output_format_has_one_schema(probe, shapes3, tmp_path):
    """Issue 27.14: CSV had flat label_1.. columns where JSON Lines and Parquet had lists.
    Every format now has the same columns in the same order, and reads back to the same
    rows: lists in CSV cells as JSON arrays, no label for a failed row, error "" when none."""
    from tlearn.outputs import PREDICTION_COLUMNS

    inputs = [*shapes3[2][:3], str(tmp_path / "missing.jpg")]
    rows = list(iter_predictions(probe, inputs, top_k=2))
    read = {}
    for ext in ("csv", "jsonl", "parquet"):
        write_predictions(iter(rows), tmp_path / f"p.{ext}")
        read[ext] = _as_read(tmp_path / f"p.{ext}")
    for columns, got in read.values():
        assert columns == list(PREDICTION_COLUMNS)
        assert [r["label"] for r in got] == [r["label"] for r in rows]
        assert [r["top_labels"] for r in got] == [r["top_labels"] for r in rows]
        assert [r["error"] for r in got] == [r["error"] for r in rows]
        assert got[0]["error"] == "" and got[-1]["label"] is None and got[-1]["top_labels"] == []
        want = [r["top_probabilities"] for r in rows]
        for a, b in zip((r["top_probabilities"] for r in got), want, strict=True):
            assert np.allclose(a, b, atol=1e-6) and len(a) == len(b)
        assert got[-1]["probability"] is None and "no such file" in got[-1]["error"]


def test_a_csv_of_an_older_tlearn_is_not_appended_to(probe, shapes3, tmp_path):
    from tlearn import DataError
    from tlearn.inference import predict_to_file

    out = tmp_path / "old.csv"
    out.write_text(
        "row_id,path,label,probability,label_1,probability_1,error\n0,a.jpg,x,1.0,x,1.0,\n"
    )
    with pytest.raises(DataError, match="older tlearn wrote label_1"):
        predict_to_file(probe, list(shapes3[2][:3]), out, resume=True)


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


def _read_rows(output) -> list[dict]:
    """The rows of an output of any format, reading CSV strictly (a torn record raises)."""
    import pandas as pd

    output = str(output)
    if output.endswith(".parquet"):
        table = pd.read_parquet(output).sort_values("row_id")
        return [{**r, "row_id": int(r["row_id"])} for r in table.to_dict("records")]
    with open(output, newline="", encoding="utf-8") as f:
        if output.endswith(".csv"):
            return [
                {**r, "row_id": int(r["row_id"]), "top_labels": json.loads(r["top_labels"]),
                 "top_probabilities": json.loads(r["top_probabilities"])}
                for r in csv.DictReader(f, strict=True, restval=None)
            ]  # fmt: skip
        return [json.loads(line) for line in f.read().split("\n") if line]


def _same_rows(got: list[dict], want: list[dict]) -> None:
    """One complete row per input, equal to the uninterrupted run's (probabilities to
    1e-5: a resumed run predicts the last images in a smaller batch)."""
    assert [r["row_id"] for r in got] == [r["row_id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys(), g
        for key in w:
            if "probabilit" in key and not w["error"]:
                assert np.allclose(np.asarray(g[key], float), np.asarray(w[key], float), atol=1e-5)
            else:
                assert str(g[key]) == str(w[key]), (key, g, w)


@pytest.fixture(scope="module")
def predictor(probe):
    from tlearn.predictor import load_predictor

    return load_predictor(probe)


def _torn_inputs(shapes3, tmp_path) -> list[str]:
    """Images with a row listed twice, and a missing file whose name holds a quote, a
    comma and a line break (a CSV record over two lines) last: its error row is the one
    a killed run most often tears."""
    good = list(shapes3[2][:3])
    return [good[0], good[1], good[0], good[2], str(tmp_path / 'a "b",\nc.jpg')]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_after_a_tear_at_every_byte_of_the_last_rows(predictor, shapes3, tmp_path, suffix):
    """A killed run leaves its last record cut at any byte. Resuming must count as done
    only complete records: a CSV line cut inside its error field used to count as done and
    was then cut off, so that image never got a row; a JSON line cut before its newline
    likewise."""
    from tlearn.inference import predict_to_file

    inputs = _torn_inputs(shapes3, tmp_path)
    full = tmp_path / f"full{suffix}"
    predict_to_file(predictor, inputs, full, top_k=2)
    want, data = _read_rows(full), full.read_bytes()
    last_two = data.find(b"\r\n3," if suffix == ".csv" else b'\n{"row_id": 3,') + 2
    assert 100 < len(data) - last_two < 800  # an ok row, and the error row over two lines
    out = tmp_path / f"torn{suffix}"
    for cut in range(last_two, len(data)):
        out.write_bytes(data[:cut])
        counts = predict_to_file(predictor, inputs, out, top_k=2, resume=True)
        assert counts["ok"] + counts["failed"] + counts["skipped"] == len(inputs), cut
        _same_rows(_read_rows(out), want)


def test_resume_after_a_torn_or_stale_parquet_part(predictor, shapes3, tmp_path, monkeypatch):
    """A part is renamed into place only once written, but after a power cut its bytes may
    not have reached the disk: a part that cannot be read is not done, and goes."""
    import tlearn.outputs
    from tlearn.inference import predict_to_file

    monkeypatch.setattr(tlearn.outputs, "PART_ROWS", 2)
    inputs = _torn_inputs(shapes3, tmp_path)
    full = tmp_path / "full.parquet"
    predict_to_file(predictor, inputs, full, top_k=2)
    want = _read_rows(full)
    last = sorted(full.iterdir())[-2]  # rows 2 and 3; the next part holds row 4
    data = last.read_bytes()
    out = tmp_path / "torn.parquet"
    for cut in [*range(0, len(data), max(1, len(data) // 40)), *range(len(data) - 9, len(data))]:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(full, out)
        (out / last.name).write_bytes(data[:cut])
        (out / ".tmp-0123.parquet").write_bytes(data[: cut // 2])
        counts = predict_to_file(predictor, inputs, out, top_k=2, resume=True)
        assert counts == {"ok": 2, "failed": 0, "skipped": 3}, cut
        _same_rows(_read_rows(out), want)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())


def test_resume_keys_on_row_ids_and_refuses_changed_inputs(predictor, shapes3, tmp_path):
    """Keyed on paths, a path listed twice was done (or skipped) twice: rows went missing
    for ever. Row ids also tell when the inputs changed since the interrupted run."""
    from tlearn import DataError
    from tlearn.inference import featurize_to_file, predict_to_file

    good = list(shapes3[2][:3])
    inputs = [good[0], good[1], good[0], good[2]]
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"p{suffix}"
        predict_to_file(predictor, inputs[:1], out)  # killed after the first row
        counts = predict_to_file(predictor, inputs, out, resume=True)
        assert counts == {"ok": 3, "failed": 0, "skipped": 1}, suffix
        rows = _read_rows(out)
        assert [(r["row_id"], r["path"]) for r in rows] == list(enumerate(inputs)), suffix
        with pytest.raises(DataError, match=r"row 1 .* inputs changed.*--overwrite"):
            predict_to_file(predictor, [good[0], good[2]], out, resume=True)
    out = tmp_path / "f.jsonl"
    featurize_to_file(predictor, inputs[:3], out)
    assert featurize_to_file(predictor, inputs, out, resume=True)["skipped"] == 3
    assert [r["row_id"] for r in _read_rows(out)] == [0, 1, 2, 3]


def _row(row_id: int, path: str, labels: list, error: str = "") -> dict:
    return {
        "row_id": row_id, "path": path, "label": labels[0] if labels else None,
        "probability": 0.9 if labels else None, "top_labels": labels,
        "top_probabilities": [0.9, 0.1][: len(labels)], "error": error,
    }  # fmt: skip


def test_json_lines_labels_are_strings_as_in_csv_and_parquet(tmp_path):
    """A model fitted on integer classes gives int labels (python_value of its classes):
    CSV and Parquet wrote them as strings ("1", ["1", "0"]), JSON Lines as numbers (1,
    [1, 0]), so the same rows read back differently by format, against the one schema."""
    rows = [_row(0, "a.jpg", [1, 0]), _row(1, "b.jpg", [0, 1]), _row(2, "c.jpg", [], "bad")]
    read = {}
    for ext in ("csv", "jsonl", "parquet"):
        write_predictions(iter(rows), tmp_path / f"p.{ext}")
        read[ext] = _as_read(tmp_path / f"p.{ext}")[1]
    for got in read.values():
        assert [r["label"] for r in got] == ["1", "0", None]
        assert [r["top_labels"] for r in got] == [["1", "0"], ["0", "1"], []]


def test_a_path_that_is_not_utf8_is_written_and_resumed_in_csv(predictor, tmp_path):
    """A Linux file name that is not UTF-8 (os.fsdecode gives it lone surrogates) made a
    CSV output raise UnicodeEncodeError, ending the whole run; JSON Lines escaped it. CSV
    now writes the name's own bytes, and a resumed run reads the same path back."""
    from tlearn.inference import predict_to_file
    from tlearn.outputs import read_done_rows

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg")
    inputs = [odd, str(tmp_path / "b.jpg")]
    out = tmp_path / "p.csv"
    assert predict_to_file(predictor, inputs[:1], out)["failed"] == 1  # missing: an error row
    assert read_done_rows(out) == {0: odd}
    counts = predict_to_file(predictor, inputs, out, resume=True)
    assert counts == {"ok": 0, "failed": 1, "skipped": 1}
    assert read_done_rows(out) == dict(enumerate(inputs))


def test_a_path_that_is_not_utf8_is_written_and_resumed_in_parquet(predictor, shapes3, tmp_path):
    """The same name ended a Parquet run with a traceback (Arrow's strings must be UTF-8):
    its row now holds the name with the odd bytes as \\xNN escapes, the image is predicted,
    and a resumed run takes that row as done."""
    import pandas as pd

    from tlearn.inference import predict_to_file

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg")
    from tlearn.data.images import read_bytes

    with open(odd, "wb") as f:
        f.write(read_bytes(shapes3[2][0]))
    inputs = [odd, str(shapes3[2][1])]
    out = tmp_path / "p.parquet"
    assert predict_to_file(predictor, inputs[:1], out) == {"ok": 1, "failed": 0, "skipped": 0}
    paths = pd.read_parquet(out)["path"].tolist()
    assert paths == [f"{tmp_path}/caf\\xe9.jpg"]
    counts = predict_to_file(predictor, inputs, out, resume=True)
    assert counts == {"ok": 1, "failed": 0, "skipped": 1}
    assert pd.read_parquet(out)["row_id"].tolist() == [0, 1]


def test_the_documented_pandas_recipe_reads_labels_back_as_written(tmp_path):
    """docs/cli.md's recipe, pandas.read_csv(f, converters=...) and read_json(f,
    lines=True), read the labels "01", "NA", "1.0" back as 1.0, NaN, 1.0 from a CSV, and
    "01", "1" as 1, 1 from JSON Lines. The recipe now names the label's type."""
    import pandas as pd

    rows = [_row(i, f"{i}.jpg", [c]) for i, c in enumerate(["01", "NA", "1.0", "1"])]
    rows.append(_row(4, "4.jpg", [], "bad"))
    want = ["01", "NA", "1.0", "1", None]
    for ext in ("csv", "jsonl", "parquet"):
        write_predictions(iter(rows), tmp_path / f"p.{ext}")
    lists = {"top_labels": json.loads, "top_probabilities": json.loads}
    tables = [
        pd.read_csv(tmp_path / "p.csv", converters=lists, dtype={"label": str},
                    keep_default_na=False, na_values={"label": [""], "probability": [""]}),
        pd.read_json(tmp_path / "p.jsonl", lines=True, dtype={"label": str}),
        pd.read_parquet(tmp_path / "p.parquet"),
    ]  # fmt: skip
    for table in tables:
        assert [None if pd.isna(v) else v for v in table["label"]] == want
        assert [list(v) for v in table["top_labels"]] == [[c] for c in want[:4]] + [[]]
        assert table["probability"].isna().tolist() == [False] * 4 + [True]
        assert table["error"].tolist() == ["", "", "", "", "bad"]


def test_predict_to_file_refuses_an_existing_output_before_loading_the_model(tmp_path):
    from tlearn.exceptions import DataError
    from tlearn.inference import predict_to_file

    out = tmp_path / "preds.csv"
    out.write_text("kept\n")
    with pytest.raises(DataError, match="--overwrite"):  # the model is not even a file
        predict_to_file(tmp_path / "no-such-model.safetensors", ["a.jpg"], out)
    assert out.read_text() == "kept\n"


def test_a_row_built_elsewhere_is_written_as_the_kind_its_columns_say(tmp_path):
    """write_predictions takes rows from anywhere: the kind is the one whose columns the
    row has, the most specific first (a multi-label row has every prediction column too)."""
    from tlearn.rows import kind_of_row

    plain = {"row_id": 0, "path": "a.jpg", "label": "cat", "probability": 0.9,
             "top_labels": ["cat"], "top_probabilities": [0.9], "error": ""}  # fmt: skip
    several = {**plain, "above_threshold": ["cat", "dog"]}
    assert kind_of_row(plain).name == "predictions" and kind_of_row(None).name == "predictions"
    assert kind_of_row(several).name == "multilabel" and not kind_of_row(several).shows_top_k
    assert kind_of_row({"path": "a.jpg", "features": [0.5], "error": ""}).name == "features"
    with pytest.raises(ValueError, match="no kind of row"):
        kind_of_row({"path": "a.jpg"})
    write_predictions(iter([several]), tmp_path / "p.jsonl")
    assert json.loads((tmp_path / "p.jsonl").read_text())["above_threshold"] == ["cat", "dog"]
