"""Multi-label classification (issue 28): labels as lists or an indicator matrix, one
threshold per label chosen for its target, and the probe on mosaics of real CIFAR-10
photos (1-4 classes each) against a hand-written scikit-learn one-vs-rest baseline, saved
and loaded bit for bit, pickled, and predicting the same from threads."""

from __future__ import annotations

import importlib.util
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tlearn.exceptions import DataError
from tlearn.multilabel import MultiLabelProbe, check_multilabel, choose_thresholds

ROOT = Path(__file__).resolve().parents[1]


def test_labels_as_lists_or_an_indicator_matrix():
    classes, M = check_multilabel([["dog", "person"], ["cat"], []], 3)
    assert list(classes) == ["cat", "dog", "person"]
    assert M.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]  # an image with no label: all 0
    classes, M = check_multilabel(np.array([[1, 0], [0, 0], [1, 1]]), 3)
    assert list(classes) == [0, 1] and M.tolist() == [[1, 0], [0, 0], [1, 1]]
    with pytest.raises(DataError, match="only 0 and 1"):
        check_multilabel(np.array([[2, 0], [0, 1]]), 2)
    with pytest.raises(DataError, match="row 1 of Y is 'cat'"):
        check_multilabel([["dog"], "cat"], 2)
    with pytest.raises(DataError, match="3 images but Y has 2"):
        check_multilabel([["dog"], ["cat"]], 3)
    with pytest.raises(DataError, match="no image has a label"):
        check_multilabel([[], []], 2)


def test_each_threshold_meets_its_target():
    rng = np.random.default_rng(0)
    Y = (rng.random((400, 3)) < [0.1, 0.4, 0.7]).astype(int)
    P = np.clip(Y * 0.35 + rng.random((400, 3)) * 0.65, 0, 1)
    best = choose_thresholds(P, Y, "f1")
    for j in range(3):  # best F1 over every cut, brute force
        cuts = np.unique(P[:, j])
        f1s = [2 * (Y[P[:, j] >= t, j].sum()) / ((P[:, j] >= t).sum() + Y[:, j].sum())
               for t in cuts]  # fmt: skip
        got = P[:, j] >= best[j]
        f1 = 2 * Y[got, j].sum() / (got.sum() + Y[:, j].sum())
        assert f1 == pytest.approx(max(f1s))
    strict = choose_thresholds(P, Y, "precision=0.9")
    for j in range(3):  # the most recall of any cut at precision 0.9 or more
        got = P[:, j] >= strict[j]
        assert Y[got, j].mean() >= 0.9 and got.any()
        recalls = [Y[P[:, j] >= t, j].sum() for t in np.unique(P[:, j])
                   if Y[P[:, j] >= t, j].mean() >= 0.9]  # fmt: skip
        assert Y[got, j].sum() == max(recalls)
    assert choose_thresholds(P, np.zeros_like(Y), "f1").tolist() == [1.0] * 3
    with pytest.raises(Exception, match="precision=0.9"):
        MultiLabelProbe(threshold_for="precision=90").fit(["a.jpg"] * 5, [["a"]] * 5)


def _mosaics_module():
    spec = importlib.util.spec_from_file_location(
        "multilabel_mosaics", ROOT / "benchmarks" / "multilabel_mosaics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mosaics(cifar_zip, tmp_path_factory):
    bench = _mosaics_module()
    root = tmp_path_factory.mktemp("mosaics")
    X, labels = bench.make_mosaics(cifar_zip, "train", 240, root / "train", seed=0)
    X_test, labels_test = bench.make_mosaics(cifar_zip, "test", 120, root / "test", seed=1)
    return bench, X, labels, X_test, labels_test


@pytest.fixture(scope="module")
def probe(mosaics, tmp_path_factory):
    """Fitted with a feature cache, so that the baseline below reads the features the
    probe computed rather than featurising the 360 mosaics again; the test that saves,
    pickles and predicts from threads turns the cache off first."""
    _, X, labels, _, _ = mosaics
    cache = tmp_path_factory.mktemp("multilabel-features")
    return MultiLabelProbe(image_size=96, engine="torch", cache_dir=str(cache)).fit(X, labels)


@pytest.mark.needs_data
def test_at_least_as_good_as_a_hand_written_one_vs_rest_on_real_photos(mosaics, probe):
    bench, X, labels, X_test, labels_test = mosaics
    classes, Y = check_multilabel(labels, len(X))
    Y_test = np.array([[c in row for c in classes] for row in labels_test], dtype=np.int8)
    P = probe.predict_proba(X_test)
    ours = bench.multilabel_metrics(Y_test, P, probe.predict(X_test))
    F, _ = probe.features_.extract(X)
    F_test, _ = probe.features_.extract(X_test)
    P_b, pred_b = bench.baseline(F, Y, F_test)
    theirs = bench.multilabel_metrics(Y_test, P_b, pred_b)
    print({"tlearn": ours, "baseline": theirs})
    assert ours["mAP"] > 0.5  # ten classes, 1-4 per mosaic (2.5 on average): chance 0.25
    assert ours["mAP"] >= theirs["mAP"] - 0.02  # the same model family: ranking alike
    assert ours["macro_f1"] >= theirs["macro_f1"]  # thresholds per label, not 0.5
    heldout = probe.heldout_proba_
    assert heldout.shape == Y.shape and not np.isnan(heldout).any()


@pytest.mark.needs_data
def test_saved_pickled_and_threaded_it_predicts_the_same(mosaics, probe, tmp_path):
    from safetensors.torch import load_file

    from tlearn import load, save
    from tlearn.models import model_kind

    _, _, _, X_test, _ = mosaics
    probe.set_params(cache_dir=None)  # every prediction below computes its features
    P = probe.predict_proba(X_test[:16])
    path = save(probe, tmp_path / "multi.safetensors")
    loaded = load(path)
    assert np.array_equal(loaded.predict_proba(X_test[:16]), P)
    assert np.array_equal(loaded.thresholds_, probe.thresholds_)
    assert list(loaded.classes_) == list(probe.classes_)
    again_path = save(loaded, tmp_path / "again.safetensors")  # every tensor bit for bit
    first, second = load_file(path), load_file(again_path)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    again = pickle.loads(pickle.dumps(probe))
    assert np.array_equal(again.predict(X_test[:16]), probe.predict(X_test[:16]))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: probe.predict_proba(X_test[:16]), range(8)))
    assert all(np.array_equal(r, P) for r in results)
    kind = model_kind(probe)
    assert kind.activation == "sigmoid"
    W, b = kind.linear_head(probe)
    F = probe.features_.transform(X_test[:16])
    logits = F @ W.T + b
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), P, rtol=1e-5, atol=1e-6)


def _write_csv(path: Path, paths: list[str], labels: list[list[str]], json_lists: bool) -> Path:
    """A multi-label CSV: labels as ``a|b`` or as JSON lists (quoted: they hold commas)."""
    import csv
    import json

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        for p, row in zip(paths, labels, strict=True):
            w.writerow([p, json.dumps(row) if json_lists else "|".join(row)])
    return path


@pytest.fixture(scope="module")
def fitted_by_cli(mosaics, tmp_path_factory):
    """``tlearn fit train.csv`` on the mosaics (labels as a|b), as a user runs it."""
    from tests.cli_runner import run_tlearn

    _, X, labels, _, _ = mosaics
    root = tmp_path_factory.mktemp("multilabel-cli")
    train = _write_csv(root / "train.csv", X, labels, json_lists=False)
    model, report = root / "model.safetensors", root / "fit.json"
    # the probe by name: auto would also try fine-tuning (test_multilabel_finetune.py)
    r = run_tlearn("fit", str(train), "--method", "probe", "--image-size", "96",
                   "--engine", "torch", "--out", str(model), "--json", str(report))  # fmt: skip
    return r, model, report


@pytest.mark.needs_data
def test_fit_on_a_csv_of_several_labels_reports_held_out_map_and_saves_the_probe(
    mosaics, fitted_by_cli
):
    import json

    from tlearn import load

    r, model, report = fitted_by_cli
    assert r.returncode == 0, r.stderr
    assert "labels (several per image)" in r.stdout and "multi-label" in r.stdout
    assert "held-out mAP:" in r.stdout and "macro F1:" in r.stdout
    figures = json.loads(report.read_text())
    assert figures["task"] == "multi-label" and figures["n_images"] == 240
    # 240 mosaics at 96 px, each fold's model on 4/5 of them: chance is about 0.25, and
    # the model of all 240 scores about 0.57 on fresh mosaics
    assert 0.42 < figures["mean_average_precision"] <= 1
    assert "thresholds chosen by the other half" in figures["evaluation"]["method"]
    loaded = load(model)
    assert type(loaded).__name__ == "MultiLabelProbe"
    assert len(loaded.classes_) == 10 and loaded.thresholds_.shape == (10,)
    # the doctor takes one label per image so far: one line (fine-tuning takes several:
    # test_multilabel_finetune.py)
    from tests.cli_runner import run_tlearn

    train = model.parent / "train.csv"
    r = run_tlearn("doctor", str(train), "--out", str(model.parent / "doctor"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "multi-label" in r.stderr


@pytest.mark.needs_data
def test_evaluate_predict_serve_and_python_give_the_same_labels(mosaics, fitted_by_cli, tmp_path):
    """One multi-label model file: `tlearn evaluate` (figures and the HTML page), `tlearn
    predict` in every format, the Predictor from 8 threads and `tlearn serve` all give the
    labels its predict() gives."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from tests.cli_runner import run_tlearn
    from tests.served import Served
    from tlearn import load
    from tlearn.data.images import read_bytes
    from tlearn.predictor import Predictor

    _, _, _, X_test, labels_test = mosaics
    X_test, labels_test = X_test[:60], labels_test[:60]
    _, model, _ = fitted_by_cli
    assert fitted_by_cli[0].returncode == 0
    probe = load(model)
    classes = list(probe.classes_)
    P = probe.predict_proba(X_test)
    expected = [sorted(c for c, on in zip(classes, row, strict=True) if on)
                for row in probe.predict(X_test)]  # fmt: skip

    test_csv = _write_csv(tmp_path / "test.csv", X_test, labels_test, json_lists=True)
    r = run_tlearn("evaluate", str(model), str(test_csv), "--json", str(tmp_path / "e.json"),
                   "--report", str(tmp_path / "report"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    figures = json.loads((tmp_path / "e.json").read_text())
    Y = np.array([[c in row for c in classes] for row in labels_test], dtype=np.int8)
    aps = [average_precision_score(Y[:, j], P[:, j]) for j in range(len(classes)) if Y[:, j].any()]
    assert figures["mean_average_precision"] == pytest.approx(np.mean(aps), abs=1e-6)
    exact = np.mean([sorted(t) == p for t, p in zip(labels_test, expected, strict=True)])
    assert figures["subset_accuracy"] == pytest.approx(exact)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Per label" in page and "Precision-recall curves" in page and "data:image/png" in page

    for ext in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"p.{ext}"
        r = run_tlearn("predict", str(model), *X_test, "-o", str(out))
        assert r.returncode == 0, r.stderr
        if ext == "csv":
            rows = pd.read_csv(out, keep_default_na=False)
            above = [sorted(json.loads(v)) for v in rows["above_threshold"]]
            top = [json.loads(v) for v in rows["top_labels"]]
        else:
            rows = pd.read_json(out, lines=True) if ext == "jsonl" else pd.read_parquet(out)
            above = [sorted(v) for v in rows["above_threshold"]]
            top = [list(v) for v in rows["top_labels"]]
        assert above == expected, ext
        assert all(len(t) == len(classes) for t in top)  # every score, by default

    predictor = Predictor.load(model)
    images = [read_bytes(p) for p in X_test[:16]]
    serial = predictor.predict_images(images)
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda _: predictor.predict_images(images), range(16)))
    assert all(t == serial for t in threaded)
    assert [sorted(row["above_threshold"]) for row in serial] == expected[:16]

    with Served(model) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for path, want in zip(X_test[:6], expected[:6], strict=True):
            body = client.post("/v1/predict", files={"file": ("x.jpg", read_bytes(path))}).json()
            assert sorted(a["label"] for a in body["above_threshold"]) == want
            assert len(body["predictions"]) == min(5, len(classes))  # the server's top_k
        many = client.post("/v1/predict", files=[("file", ("x.jpg", read_bytes(p)))
                                                   for p in X_test[:4]]).json()  # fmt: skip
        got = [sorted(a["label"] for a in r["above_threshold"]) for r in many["results"]]
        assert got == expected[:4]


@pytest.mark.needs_data
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_export_gives_sigmoid_scores_and_carries_the_thresholds(mosaics, fitted_by_cli, fmt):
    """`tlearn export` of a multi-label model file: sigmoid probabilities out, thresholds in
    its metadata; `tlearn predict` on the export gives the model file's labels."""
    import json

    from tests.cli_runner import run_tlearn
    from tlearn import load

    _, _, _, X_test, _ = mosaics
    X_test = X_test[:24]
    _, model, _ = fitted_by_cli
    probe = load(model)
    out = model.parent / f"export-{fmt}"
    r = run_tlearn("export", str(model), "-o", str(out), "--format", fmt)
    assert r.returncode == 0, r.stderr
    exported = next(
        p for p in model.parent.glob(f"export-{fmt}.*") if p.suffix in (".onnx", ".xml")
    )
    meta = json.loads(Path(str(exported) + ".json").read_text())
    assert meta["activation"] == "sigmoid"
    np.testing.assert_allclose(meta["thresholds"], probe.thresholds_)
    r = run_tlearn("predict", str(exported), *X_test, "-o", str(model.parent / f"{fmt}.jsonl"))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (model.parent / f"{fmt}.jsonl").read_text().splitlines()]
    P = probe.predict_proba(X_test)
    for row, p in zip(rows, P, strict=True):
        got = dict(zip(row["top_labels"], row["top_probabilities"], strict=True))
        np.testing.assert_allclose([got[c] for c in probe.classes_], p, atol=2e-3)
    clear = np.abs(P - probe.thresholds_).min(axis=1) > 5e-3  # not on a threshold's edge
    expected = [sorted(c for c, on in zip(probe.classes_, row, strict=True) if on)
                for row in probe.predict(X_test)]  # fmt: skip
    for row, want, ok in zip(rows, expected, clear, strict=True):
        if ok:
            assert sorted(row["above_threshold"]) == want


def test_a_csv_is_read_as_multi_label_only_when_it_says_so(tmp_path):
    from tlearn.data.multilabel_sources import is_multilabel_csv

    cases = {
        "path,label\na.jpg,cat\nb.jpg,dog\n": False,
        "path,y\na.jpg,0\nb.jpg,1\n": False,  # one 0/1 column: two classes
        "path,cat,dog\na.jpg,1,0\nb.jpg,1,1\n": True,
        # one label a row stays single-label, whatever the column's name
        "path,labels\na.jpg,cat\nb.jpg,dog\n": False,
        "path,label\na.jpg,rock;pop\n": False,  # a class named so
        "path,label\na.jpg,[abc]\n": False,  # not a JSON list
        "path,labels\na.jpg,cat;dog\nb.jpg,dog\n": True,
        "path,tags\na.jpg,cat|dog\n": True,
        "path,label\na.jpg,cat|dog\nb.jpg,dog\n": True,
        'path,label\na.jpg,"[""cat""]"\n': True,
    }
    for i, (text, several) in enumerate(cases.items()):
        path = tmp_path / f"{i}.csv"
        path.write_text(text)
        assert is_multilabel_csv(path) is several, text


def test_a_csv_of_several_labels_per_image_in_each_layout(tmp_path):
    from tlearn.data.multilabel_sources import load_multilabel_csv

    (tmp_path / "pipes.csv").write_text(
        'path,labels\na.jpg,dog|person\nb.jpg,cat\nc.jpg,\nd.jpg,"[""cat"", ""dog""]"\n'
        "e.jpg, person ; dog \n"
    )
    data = load_multilabel_csv(tmp_path / "pipes.csv")
    assert data.target_names == ["cat", "dog", "person"]
    assert data.target.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert data.filenames[0] == str(tmp_path / "a.jpg")
    (tmp_path / "columns.tsv").write_text(
        "image\tsky\tsea\nx.jpg\t1\t0\ny.jpg\t1\t1\nz.jpg\t0\t0\n"
    )
    data = load_multilabel_csv(tmp_path / "columns.tsv")
    assert data.target_names == ["sky", "sea"]  # the file's order
    assert data.target.tolist() == [[1, 0], [1, 1], [0, 0]]
    (tmp_path / "bad.csv").write_text('path,tags\na.jpg,"[""cat"", 3.5]"\n')
    with pytest.raises(DataError, match="line 2: a JSON list of labels holds strings"):
        load_multilabel_csv(tmp_path / "bad.csv")
    (tmp_path / "none.csv").write_text("path,labels\na.jpg,\nb.jpg,\n")
    with pytest.raises(DataError, match="no image in .* has a label"):
        load_multilabel_csv(tmp_path / "none.csv")
    (tmp_path / "nolabels.csv").write_text("path,size\na.jpg,big\n")
    with pytest.raises(DataError, match="no labels column"):
        load_multilabel_csv(tmp_path / "nolabels.csv")


def test_labels_of_every_form_are_read_or_refused_in_one_line():
    """Found by the adversarial review of 28.2: a boolean indicator matrix (``Y > 0.5``, a
    DataFrame's bool columns) was read as label lists, giving two labels, False and True,
    that every image had; a label that was a list or a dict was a TypeError; 1 and '1' were
    two labels of one name (saved, but the file then refused); scoring with labels of
    another test set compared columns of different labels."""
    flags = np.array([[True, False, False], [False, True, True]])
    for Y in (flags, flags.astype(object), flags.astype(float)):
        classes, M = check_multilabel(Y, 2)
        assert list(classes) == [0, 1, 2] and M.tolist() == [[1, 0, 0], [0, 1, 1]]
    classes, M = check_multilabel([{10}, {9, 2}, set()], 3)  # integer labels: sorted as numbers
    assert classes.dtype == np.int64 and list(classes) == [2, 9, 10]
    assert M.tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    for Y, message in [
        ([["a", ["b"]], ["c"]], r"row 0 of Y holds \['b'\]: a label is a string or an integer"),
        ([[{"a": 1}], []], "row 0 of Y holds {'a': 1}"),
        ([[None], ["a"]], "row 0 of Y holds None"),
        ([["a"], [2.5]], "row 1 of Y holds 2.5"),
        ([[1], ["1"]], "mixes string and integer labels"),
        ([np.array(3), ["a"]], "row 0 of Y is array"),
        (np.zeros((2, 2, 2)), "row 0 of Y holds array"),
        ([[10], [9]], "indicator matrix .* give each image a set of them"),
        (np.zeros((2, 3)), "no image has a label"),
    ]:
        with pytest.raises(DataError, match=message):
            check_multilabel(Y, len(Y))
    # a fitted model's labels: the columns follow them, whichever a test set holds
    model = np.array(["cat", "dog", "person"], dtype=object)
    classes, M = check_multilabel([["person"], []], 2, model)
    assert list(classes) == list(model) and M.tolist() == [[0, 0, 1], [0, 0, 0]]
    with pytest.raises(DataError, match="not fitted on: 'bird'"):
        check_multilabel([["bird"], []], 2, model)
    with pytest.raises(DataError, match="2 columns, but the model has 3 labels"):
        check_multilabel(np.eye(2), 2, model)


def test_one_label_or_integer_labels_round_trip_through_a_file(shapes3, tmp_path):
    """A multi-label model of one label (a yes or no) was saved, then refused by load as a
    damaged file (classes had to be 2 or more); integer labels came back as strings."""
    from tlearn import load, save

    X, y, X_test, _ = shapes3
    for Y in ([["rocket"] if c == "rocket" else [] for c in y],
              [{3} if c == "rocket" else {5, 7} for c in y]):  # fmt: skip
        probe = MultiLabelProbe(image_size=32, Cs=[1.0], cv=2, engine="torch").fit(X, Y)
        loaded = load(save(probe, tmp_path / "one.tlearn"))
        assert loaded.classes_.tolist() == probe.classes_.tolist()
        assert [type(c) for c in loaded.classes_.tolist()] == [
            type(c) for c in probe.classes_.tolist()
        ]
        assert np.array_equal(loaded.predict_proba(X_test), probe.predict_proba(X_test))
    assert probe.score(X_test[:4], [{5}] * 4) >= 0.0  # a test set without label 3 or 7


def test_a_csv_whose_labels_look_like_flags_or_ids_is_read_as_written(tmp_path, monkeypatch):
    """Found by the adversarial review of 28.2: a labels column holding 0 and 1 (two
    classes named so) was read as one 0/1 column of a class named 'labels', so the images
    labelled '0' had none, unless one row said '0|1'; two columns of one name were read as
    the last one twice; labels unique to each image (an id column) made an indicator
    matrix the square of the file (0.5 MB of CSV asked for 900 MB)."""
    from tlearn.data import multilabel_sources
    from tlearn.data.multilabel_sources import load_multilabel_csv

    (tmp_path / "digits.csv").write_text("path,labels\na.jpg,0\nb.jpg,1\nc.jpg,1\n")
    data = load_multilabel_csv(tmp_path / "digits.csv")
    assert data.target_names == ["0", "1"] and data.target.tolist() == [[1, 0], [0, 1], [0, 1]]
    (tmp_path / "flag.csv").write_text("path,cat\na.jpg,0\nb.jpg,1\n")  # a class's column
    data = load_multilabel_csv(tmp_path / "flag.csv")
    assert data.target_names == ["cat"] and data.target.tolist() == [[0], [1]]
    (tmp_path / "twice.csv").write_text("path,dog,dog\na.jpg,1,0\nb.jpg,0,1\n")
    with pytest.raises(DataError, match="more than one column named 'dog'"):
        load_multilabel_csv(tmp_path / "twice.csv")
    (tmp_path / "json.csv").write_text('path,labels\na.jpg,"[true]"\n')
    with pytest.raises(DataError, match="line 2: a JSON list of labels holds strings"):
        load_multilabel_csv(tmp_path / "json.csv")
    monkeypatch.setattr(multilabel_sources, "MAX_CELLS", 50 * 49)
    (tmp_path / "ids.csv").write_text(
        "path,label\n" + "".join(f"{i}.jpg,id{i}\n" for i in range(50))
    )
    with pytest.raises(DataError, match="50 distinct labels for 50 images: over the bounds"):
        load_multilabel_csv(tmp_path / "ids.csv")


def test_a_hugging_face_imagefolder_with_label_lists_is_multi_label(tmp_path):
    """metadata.jsonl (or .csv) beside the images, file_name and a column of lists, as
    Hugging Face's imagefolder reads it; a path out of the folder is refused."""
    import json

    from PIL import Image

    from tlearn.training import is_multilabel, load_labelled

    rows = [("a.png", ["cat", "dog"]), ("sub/b.png", []), ("c.png", ["dog"])]
    for name, _ in rows:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": n, "objects": labels}) + "\n" for n, labels in rows)
    )
    X, y = load_labelled(tmp_path)
    assert is_multilabel(y)
    assert [Path(x).relative_to(tmp_path).as_posix() for x in X] == [n for n, _ in rows]
    assert list(y) == [("cat", "dog"), (), ("dog",)]
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "../x.png", "l": ["a"]}))
    with pytest.raises(DataError, match="file_name must be a path inside the folder"):
        load_labelled(tmp_path)


def test_review_findings_on_hostile_metadata_and_mixed_outputs(tmp_path):
    """The adversarial review of issue 28: a metadata.jsonl's labels must be lists (a
    string became '"cat' and 'dog"'), a BOM is no row, the labels column may first appear
    on a later row, metadata.csv may not name files outside its folder (jsonl could not),
    and a damaged metadata.jsonl beside class folders leaves them to label the images."""
    import json

    from tests.synthetic import make_folder
    from tlearn.data.multilabel_sources import find_hf_metadata, load_hf_metadata

    meta = tmp_path / "m" / "metadata.jsonl"
    meta.parent.mkdir()
    rows = [{"file_name": "0.png"}, {"file_name": "1.png", "labels": ["a", "b"]}]
    meta.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows))
    data = load_hf_metadata(meta)
    assert data.target_names == ["a", "b"] and data.target.tolist() == [[0, 0], [1, 1]]
    rows = [{"file_name": "0.png", "labels": ["a"]}, {"file_name": "1.png", "labels": "a|b"}]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 2: 'labels' must be a list of labels"):
        load_hf_metadata(meta)
    csv_meta = tmp_path / "c" / "metadata.csv"
    csv_meta.parent.mkdir()
    for outside in ("/etc/passwd", "../x.png", "a\\\\..\\\\..\\\\x.png"):
        csv_meta.write_text(f"file_name,labels\n0.png,a|b\n{outside},b\n")
        with pytest.raises(DataError, match="file_name must be a path inside the folder"):
            load_hf_metadata(csv_meta)
    folder = make_folder(tmp_path / "classes", 2, size=16)
    (folder / "metadata.jsonl").write_text("captions, not JSON\n")
    with pytest.warns(UserWarning, match="not JSON"):
        assert find_hf_metadata(folder) is None


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_resuming_an_output_of_the_other_kind_of_row_is_refused(tmp_path, ext):
    """A single-label model's output resumed by a multi-label model (or the reverse)
    mixed two kinds of row in JSON Lines and Parquet; only CSV refused it."""
    from tlearn.outputs import prepare_output, write_rows
    from tlearn.rows import ROW_KINDS

    out = str(tmp_path / f"p{ext}")
    row = {"row_id": 0, "path": "a.jpg", **ROW_KINDS["predictions"].failed_row("bad")}
    write_rows([row], out, "predictions")
    assert prepare_output(out, "predictions", resume=True, overwrite=False) == {0: "a.jpg"}
    with pytest.raises(DataError, match="another model may give another kind of row"):
        prepare_output(out, "multilabel", resume=True, overwrite=False)


def test_evaluation_helpers_take_one_label_per_image_and_drop_images_of_unknown_labels():
    from tlearn.evaluation.evaluate import _as_label_sets, _known_labels
    from tlearn.evaluation.multilabel import compute_multilabel_metrics

    Y = _as_label_sets(np.array(["a", "b", "c"], dtype=object))  # a class folder's labels
    assert list(Y) == [("a",), ("b",), ("c",)]
    names = np.array(["0", "1", "2"], dtype=object)
    labels, unknown, keep = _known_labels(
        names, [["a", "z"], ["z"], []], np.array(["a", "b"]), "skip"
    )
    assert labels[0] == ["a"] and keep.tolist() == [True, False, True]
    assert [u["left_out"] for u in unknown] == [False, True]
    # a label named as matplotlib math does not stop the report ("Unknown symbol")
    report = compute_multilabel_metrics(
        np.array(["$\\\\foo$", "b"], dtype=object), np.array([[1, 0], [0, 1]]),
        np.array([[0.9, 0.2], [0.1, 0.8]]), np.array([0.5, 0.5]), names[:2],
    )  # fmt: skip
    assert "Per label" in report.to_html()


def test_flags_of_the_other_task_and_damaged_export_thresholds_are_refused(tmp_path):
    import tlearn
    from tlearn.exceptions import ModelFileError
    from tlearn.export import _check_fits

    csv = tmp_path / "t.csv"
    csv.write_text("path,labels\na.jpg,x|y\nb.jpg,y\n")
    with pytest.raises(DataError, match="class_weight weighs the classes of one label"):
        tlearn.train(csv, class_weight="balanced", say=lambda s: None)
    meta = {"classes": ["a", "b"], "preprocessing": {"input_size": 32},
            "activation": "sigmoid", "thresholds": [True, False]}  # fmt: skip
    for damaged in ({"thresholds": [True, False]}, {"thresholds": None}):
        with pytest.raises(ModelFileError, match="damaged"):
            _check_fits({**meta, **damaged}, "x", [1, 3, 32, 32], [1, 2])


def test_each_half_is_judged_at_the_C_the_other_half_chose():
    """The C search is a choice: a C whose out-of-fold scores are right on one half only
    must not score that half (issue 28's honest numbers)."""
    from tlearn.multilabel import _crossfit_C

    rng = np.random.default_rng(0)
    M = (rng.random((40, 2)) < 0.5).astype(np.int8)
    half = np.random.default_rng(3).permutation(40) % 2 == 0  # _crossfit_C's halves, seed 3
    right, noise = (2 * M - 1) * 4.0, rng.normal(size=M.shape)
    a = np.where(half[:, None], right, noise)  # right on the first half only
    b = np.where(half[:, None], noise, right)
    held = _crossfit_C([a, b], M, None, 3)
    np.testing.assert_array_equal(held[half], b[half])
    np.testing.assert_array_equal(held[~half], a[~half])


def test_fit_refuses_what_the_kind_of_target_does_not_take(tmp_path):
    """Before any image is featurised: class_weight for several labels per image,
    threshold_for for one; the plan names the labels of a multi-label CSV."""
    from tests.synthetic import make_folder
    from tlearn.automl import ByAccuracy, ByMeanAveragePrecision, judge_for
    from tlearn.training import train

    root = make_folder(tmp_path / "imgs", 2, size=32)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    several = tmp_path / "several.csv"
    several.write_text("path,labels\n" + "".join(f"{p},a|b\n" for p in paths))
    one = tmp_path / "one.csv"
    one.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(paths)))
    with pytest.raises(DataError, match="class_weight weighs the classes of one label"):
        train(several, method="probe", class_weight="balanced")
    with pytest.raises(DataError, match="threshold_for sets a multi-label model"):
        train(one, method="probe", threshold_for="precision=0.9")
    y_sets = np.empty(2, dtype=object)
    y_sets[:] = [("a", "b"), ("b",)]
    assert judge_for(y_sets) is ByMeanAveragePrecision and judge_for(np.array(["a"])) is ByAccuracy
    assert ByMeanAveragePrecision.classes(y_sets) == {"a", "b"}
    assert ByMeanAveragePrecision.stratify(y_sets) is None and not ByMeanAveragePrecision.balances
