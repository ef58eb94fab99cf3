"""The CSV/TSV loader on untrusted bytes: whatever the file holds (random bytes, BOMs, odd
delimiters, quotes, NULs, huge fields, very many columns, other encodings), the answer is a
dataset or a DataError with a one-line message, in bounded time.

Inputs that once broke the loader are kept in tests/corpus/csv/ and replayed every run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlearn import DataError, load_image_csv

CORPUS = Path(__file__).parent / "corpus" / "csv"
SECONDS = 2.0  # per file: they are all under 1 MB

BOMS = [b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00"]
ENCODINGS = ["utf-8", "utf-16", "utf-16-le", "latin-1", "cp1252"]
# cells that have broken CSV readers: separators, quotes, line ends, NUL, non-ASCII
CELL_TEXT = st.text(
    alphabet=st.sampled_from(list("ab./_ ,;\t|\"'\r\n\x00é😀\u2028\ufeff") + ["\\"]), max_size=12
)


def check(path: Path) -> None:
    """A dataset of consistent shape, or a DataError on one line; never anything else."""
    start = time.perf_counter()
    try:
        data = load_image_csv(path)
    except DataError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 2000, message[:300]
    else:
        n = len(data.filenames)
        assert n > 0 and all(isinstance(f, str) and f for f in data.filenames)
        assert all("\x00" not in f for f in data.filenames)
        if data.target is not None:
            assert data.target.shape == (n,) and data.target.dtype == np.int64
            assert data.target.min() >= 0 and data.target.max() < len(data.target_names)
    assert time.perf_counter() - start < SECONDS, f"{path.name} took too long"


def render(case: dict) -> bytes:
    """The file a drawn case describes (built here, so that Hypothesis never prints a
    300 kB example)."""
    header = case["header"] + [f"c{i}" for i in range(case["extra_columns"])]
    rows = [list(r) for r in case["rows"]]
    if case["huge_field"] and rows:
        rows[0].append("x" * case["huge_field"])
    text = case["eol"].join(case["sep"].join(cells) for cells in [header, *rows])
    return case["bom"] + text.encode(case["encoding"], errors="replace")


CASES = st.fixed_dictionaries(
    {
        "sep": st.sampled_from([",", ";", "\t", "|", " ", ",,", ""]),
        "header": st.sampled_from(
            [["path", "label"], ["filename", "class"], ["image"], ["a", "a"], ["", ""], []]
        ),
        "extra_columns": st.sampled_from([0, 0, 1, 3, 5000]),
        "rows": st.lists(st.lists(CELL_TEXT, max_size=4), max_size=6),
        "huge_field": st.sampled_from([0, 0, 10, 131_073, 300_000]),
        "eol": st.sampled_from(["\n", "\r\n", "\r", ""]),
        "encoding": st.sampled_from(ENCODINGS),
        "bom": st.sampled_from(BOMS),
        "suffix": st.sampled_from([".csv", ".tsv"]),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_structured_csv_files_give_a_dataset_or_one_data_error(case, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / f"fuzz{case['suffix']}"
    path.write_bytes(render(case))
    check(path)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), bom=st.sampled_from(BOMS))
def test_random_bytes_give_a_dataset_or_one_data_error(data, bom, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "random.csv"
    path.write_bytes(bom + data)
    check(path)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_replays(name):
    """Every input that once crashed the loader (or took too long) now gets an answer."""
    check(CORPUS / name)
