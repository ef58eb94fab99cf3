"""The `tlearn` command run in the test process: the entry point a user's `tlearn` calls
(:func:`tlearn.cli.main`), its argument parsing, exit status, stdout and stderr, without
the 5-7 s that a new interpreter spends importing torch, torchvision and timm on 2 cores
(issue 26: the suite's own cost).

Tests whose claim needs a process of its own (a signal, a killed run, a fresh import,
torchrun, Ray's driver, the README's commands as written) still start one; `tests/test_cli.py`
keeps one run through `python -m tlearn` so the installed entry point is covered too.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

WIDTH = 200  # columns, as the subprocess tests set COLUMNS: no message is wrapped


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None, cwd: str | Path | None) -> Iterator[None]:
    """``os.environ`` replaced by ``env`` (with COLUMNS), and ``cwd``, for the run only."""
    saved, here = dict(os.environ), os.getcwd()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.environ["COLUMNS"] = str(WIDTH)
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _cli_state() -> Iterator[None]:
    """The CLI's consoles at a fixed width, and tlearn's logger as it was before (the CLI
    configures it for a terminal; other tests read it with caplog)."""
    from tlearn import cli
    from tlearn._log import logger

    consoles = (cli.console, cli.err_console)
    widths = [c._width for c in consoles]
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        for c in consoles:
            c.width = WIDTH
        yield
    finally:
        for c, w in zip(consoles, widths, strict=True):
            c._width = w
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate


def _streams() -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    """stdout and stderr as Python opens them for a UTF-8 locale (en_US.UTF-8, a macOS
    terminal): text that cannot be encoded (a file name that is not UTF-8, held as lone
    surrogates) is an error on stdout and escaped on stderr. A StringIO took anything, so
    a command that fails in a terminal passed here."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", newline="\n")
    return out, err


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]


def run_tlearn(
    *args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tlearn ARGS`` in this process, as :func:`subprocess.run` with ``capture_output``
    and ``text`` would return it: the exit status, stdout and stderr."""
    from tlearn.cli import main

    out, err = _streams()
    code: object = 0
    captured = contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)
    with _environment(env, cwd), _cli_state(), captured[0], captured[1]:
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code
            if not isinstance(code, int) and code is not None:  # as Python's exit does
                err.write(f"{code}\n")
    status = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["tlearn", *args], status, _text(out), _text(err))
