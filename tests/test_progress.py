"""Progress where a user waits: bars on a terminal (a pseudo-terminal here) or in a
notebook, on stderr; off a terminal, plain log lines for a long stage and nothing for a
short one; rates that are real images per second; and `tlearn predict`'s total."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

SCRIPT = """
import time
from tlearn._progress import progress
with progress({total}, 1, "reading images") as advance:
    for _ in range(300):
        advance(1)
        time.sleep(0.002)
print("done")
"""


def _run_in_terminal(code: str) -> str:
    """stdout and stderr of ``python -c code`` on a pseudo-terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=follower,
                            env={**os.environ, "COLUMNS": "100"})  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_counted_and_an_uncounted_bar_show_on_a_terminal():
    counted = _run_in_terminal(SCRIPT.format(total=300))
    assert "reading images" in counted and "300" in counted and "done" in counted
    pulsing = _run_in_terminal(SCRIPT.format(total=None))
    assert "reading images" in pulsing and "0:00:0" in pulsing  # elapsed time


def test_no_bar_off_a_terminal_and_no_line_for_a_short_stage():
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(total=300)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout == "done\n" and out.stderr == ""


LINES = """
import time
import tlearn._progress as p
p.LOG_EVERY_S = 0.2
with p.progress({total}, 1, "reading images") as advance:
    time.sleep(0.3)
    advance(150)  # a burst: the first batch's rows arrive at once
    time.sleep(0.3)
    advance(150)
    time.sleep(0.1)
"""


def test_off_a_terminal_a_long_stage_logs_plain_lines_with_count_rate_and_time_left():
    """Logs (a pipe, a job's output) get a line every LOG_EVERY_S seconds and one at the
    end; the rate is the work over the time since the stage began, so a burst of 150 rows
    after 0.3 s reads as at most 500 images/s, not thousands."""
    out = subprocess.run([sys.executable, "-c", LINES.format(total=300)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    lines = out.stderr.splitlines()
    assert len(lines) >= 3 and all(line.startswith("reading images: ") for line in lines)
    assert any("0/300 images (0%), ... images/s, time left not known yet" in x for x in lines)
    assert any(" left" in x and "150/300 images (50%)" in x for x in lines), lines
    assert "300/300 images (100%)" in lines[-1] and ", in " in lines[-1], lines
    rates = [float(x.split(", ")[1].split()[0].replace(",", "")) for x in lines if "/s" in x
             and "..." not in x]  # fmt: skip
    assert rates and max(rates) <= 500, lines
    pulsing = subprocess.run([sys.executable, "-c", LINES.format(total=None)],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert "reading images: running, 0 s elapsed" in pulsing.stderr
    assert pulsing.stderr.splitlines()[-1].startswith("reading images: done")


def test_the_bars_rate_is_real_images_per_second_after_a_burst():
    """rich's own speed reads a burst of rows as thousands per second (the 75,817 img/s
    a user saw); the bar's column divides by the time since the stage began."""
    import time

    from rich.console import Console
    from rich.progress import Progress

    from tlearn._progress import rate_column

    column = rate_column()
    with open(os.devnull, "w") as sink, Progress(column, console=Console(file=sink)) as bar:
        task = bar.add_task("predicting", total=1000)
        time.sleep(0.25)
        bar.advance(task, 200)
        rendered = str(column.render(bar.tasks[0]))
    rate = float(rendered.split()[0].replace(",", ""))
    assert 100 < rate <= 800, rendered


def test_a_notebook_gets_the_bar_when_rich_can_draw_it(monkeypatch):
    import rich.console

    import tlearn._progress as p

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setattr(p.importlib.util, "find_spec", lambda name: object())
    assert p._bar_console() is not None
    monkeypatch.setattr(p.importlib.util, "find_spec", lambda name: None)  # no ipywidgets
    assert p._bar_console() is None  # log lines instead


def test_predict_counts_its_images_first_and_leaves_out_those_a_resumed_run_did(tmp_path):
    from PIL import Image

    from tlearn.cli import _images_to_do

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    assert _images_to_do([str(tmp_path)], None) == 3
    done = tmp_path.parent / f"{tmp_path.name}-preds.csv"
    done.write_text(f"row_id,path,label,probability,error\n0,{tmp_path / '0.png'},a,0.9,\n")
    assert _images_to_do([str(tmp_path)], done) == 2


def test_predict_passes_the_total_to_the_progress_display(tmp_path, monkeypatch, capsys):
    """The wiring: `tlearn predict` counts the inputs and gives the display that total;
    rows go to stdout with -o -, the summary to stderr."""
    import json
    import types

    import tlearn._progress as p
    from tlearn import cli

    totals: list[int | None] = []
    real = p.progress

    def spy(total: int | None, *args: object, **kwargs: object) -> object:
        totals.append(total)
        return real(total, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(p, "progress", spy)
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"\x02" + b"\x00" * 7 + b"{}")
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(b"")

    from tlearn.rows import ROW_KINDS

    class Fake:
        rows = ROW_KINDS["predictions"]  # the kind of row it makes, as a Predictor says

        @classmethod
        def load(cls, source, **options):
            return cls()

        def iter_predict(self, inputs, **options):
            for i in range(4):
                yield {"row_id": i, "path": f"{i}.jpg", "label": "a", "probability": 1.0,
                       "top_labels": ["a"], "top_probabilities": [1.0], "error": ""}  # fmt: skip

    fake = types.ModuleType("tlearn.predictor")
    fake.Predictor = Fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tlearn.predictor", fake)
    with pytest.raises(SystemExit) as done:
        cli.main(["predict", str(model), str(tmp_path / "*.jpg"), "-o", "-"])
    assert done.value.code == 0 and totals == [4]
    out = capsys.readouterr()
    assert [json.loads(line)["row_id"] for line in out.out.splitlines()] == [0, 1, 2, 3]
    assert "4 images predicted, 0 failed; written to stdout" in out.err
