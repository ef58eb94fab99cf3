"""Progress bars (rich) for long stages, shown only on a terminal.

``with progress(total, verbose, label) as advance: ... advance(k)``. ``total=None`` shows a
pulsing bar with the elapsed time, for a stage that cannot count its steps (a solver).
Off a terminal, or for short runs, ``advance`` does nothing, so logs stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["RateColumn", "progress"]

#: Counted stages shorter than this show no bar.
MIN_TOTAL = 256


class RateColumn:
    """Images per second, for rich's Progress."""

    def __new__(cls) -> Any:
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:6.0f} img/s" if speed else "    ... img/s")

        return Rate()


class progress:
    """A transient rich progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int | None, verbose: int, label: str) -> None:
        counted = total is None or total >= MIN_TOTAL
        self.enabled = verbose > 0 and counted and sys.stderr.isatty()
        self.total, self.label = total, label

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda k: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        if self.total is None:
            columns.append(TimeElapsedColumn())
        else:
            columns += [MofNCompleteColumn(), RateColumn(), TimeRemainingColumn()]
        self._bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k: self._bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.stop()
