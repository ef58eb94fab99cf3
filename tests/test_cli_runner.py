"""The in-process runner of the ``tlearn`` command (tests/cli_runner.py) against what a
process of its own gives: the streams' encodings, the exit status of ``sys.exit(text)``,
and the state it puts back."""

from __future__ import annotations

import os

import pytest

from tests.cli_runner import _streams, run_tlearn


def test_its_streams_encode_as_a_utf8_terminals_do():
    """A StringIO took a file name that is not UTF-8 (lone surrogates) on stdout, where a
    process in a UTF-8 locale fails (found by the adversarial review of 28.1: `tlearn
    predict MODEL DIR` printing such a name exited 0 in-process and 1 with a traceback in a
    terminal); stderr escapes it, as Python's own stderr does."""
    name = os.fsdecode(b"caf\xe9.jpg")
    out, err = _streams()
    with pytest.raises(UnicodeEncodeError):
        out.write(name)
        out.flush()
    err.write(name + "\n")
    err.flush()
    assert err.buffer.getvalue() == b"caf\\udce9.jpg\n"


def test_exit_with_text_is_status_1_and_the_text_on_stderr(monkeypatch):
    from tlearn import cli

    def main(args):
        raise SystemExit("tlearn: stopped")

    monkeypatch.setattr(cli, "main", main)
    r = run_tlearn("fit")
    assert r.returncode == 1 and r.stderr == "tlearn: stopped\n" and r.stdout == ""


def test_the_environment_folder_and_logger_are_put_back(tmp_path):
    from tlearn._log import logger

    before = (dict(os.environ), os.getcwd(), list(logger.handlers), logger.level)
    r = run_tlearn("--version", cwd=tmp_path, env={"TLEARN_HOME": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.startswith("tlearn ")
    assert (dict(os.environ), os.getcwd(), list(logger.handlers), logger.level) == before
