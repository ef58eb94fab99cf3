"""Progress bars show on a terminal (a pseudo-terminal here), on stderr, and never
off one: piped output and logs stay clean."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

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


def test_no_bar_off_a_terminal():
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(total=300)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout == "done\n" and out.stderr == ""
