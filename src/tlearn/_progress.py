"""Progress for long stages, wherever the user waits: a bar with the count, the rate and
the time left in a terminal or a notebook; in a log (off a terminal), one plain line every
:data:`LOG_EVERY_S` seconds and one at the end.

``with progress(total, verbose, label) as advance: ... advance(k)``. ``total=None`` is a
stage that cannot count its steps (a solver): a pulsing bar with the elapsed time, or lines
saying how long it has been running.

The rate is the work done since the stage began divided by the time since it began: rows
that arrive in bursts (a batch of 64 at once) do not read as thousands per second, and
work a caller does not pass to ``advance`` (images a resumed run had done) is not counted.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from typing import Any

from tlearn._log import ensure_handler, logger

__all__ = ["LOG_EVERY_S", "MIN_TOTAL", "progress", "rate_column"]

#: Counted stages shorter than this show nothing.
MIN_TOTAL = 256
#: Seconds between two progress lines in a log.
LOG_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _rate(done: float, seconds: float) -> float | None:
    return done / seconds if done > 0 and seconds > 0 else None


def _left(total: int | None, done: float, rate: float | None) -> float | None:
    return None if total is None or not rate else max(total - done, 0) / rate


def rate_column(unit: str = "images") -> Any:
    """A rich column: ``unit``/s over the whole stage so far."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            rate = _rate(task.completed, task.elapsed or 0.0)
            return Text(f"{rate:,.1f} {unit}/s" if rate else f"... {unit}/s")

    return Rate()


def _left_column() -> Any:
    """A rich column: the time left at the stage's rate so far."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Left(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = _left(task.total, task.completed, _rate(task.completed, task.elapsed or 0.0))
            return Text("" if left is None else f"{_duration(left)} left")

    return Left()


def _bar_console() -> Any:
    """rich's console on stderr where a live bar can be drawn (a terminal, or a notebook
    with ipywidgets, which rich draws it with), else None."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return console
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is not None:
        return console
    return None


class _Lines:
    """Progress as log lines: one every ``every`` seconds from a timer (so a long first
    batch still shows the stage is alive), and one at the end if any was written."""

    def __init__(self, total: int | None, label: str, unit: str, every: float) -> None:
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.done = 0
        self.start = time.monotonic()
        self.lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._beat, name="tlearn-progress", daemon=True)
        self._timer.start()

    def advance(self, k: int = 1) -> None:
        with self._lock:  # called from worker threads too
            self.done += k

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._say(final=False)

    def _say(self, final: bool) -> None:
        self.lines += 1
        elapsed = time.monotonic() - self.start
        if self.total is None:
            state = "done" if final else "running"
            logger.info("%s: %s, %s elapsed", self.label, state, _duration(elapsed))
            return
        rate = _rate(self.done, elapsed)
        speed = f"{rate:,.1f} {self.unit}/s" if rate else f"... {self.unit}/s"
        left = _left(self.total, self.done, rate)
        when = f"in {_duration(elapsed)}" if final else (
            f"{_duration(left)} left" if left is not None else "time left not known yet"
        )  # fmt: skip
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        logger.info("%s: %s/%s %s%s, %s, %s", self.label, f"{self.done:,}",
                    f"{self.total:,}", self.unit, share, speed, when)  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._timer.join()
        if self.lines:
            self._say(final=True)


class progress:
    """A live bar (terminal, notebook) or periodic log lines for one stage; nothing when
    ``verbose`` is 0 or a counted stage is shorter than :data:`MIN_TOTAL`."""

    def __init__(
        self, total: int | None, verbose: int, label: str, *, unit: str = "images"
    ) -> None:
        counted = total is None or total >= MIN_TOTAL
        self.enabled = verbose > 0 and counted
        self.total, self.label, self.unit = total, label, unit
        self._bar: Any = None
        self._lines: _Lines | None = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda k: None
        console = _bar_console()
        if console is None:
            ensure_handler()  # verbose asked to see it, even where logging is not set up
            self._lines = _Lines(self.total, self.label, self.unit, LOG_EVERY_S)
            return self._lines.advance
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        if self.total is None:
            columns.append(TimeElapsedColumn())
        else:
            columns += [MofNCompleteColumn(), rate_column(self.unit), _left_column()]
        self._bar = Progress(*columns, console=console, transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k: self._bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._lines is not None:
            self._lines.close()
