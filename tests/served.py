"""``tlearn serve`` in a subprocess on 127.0.0.1 at a free port, for the server's tests and
benchmark: started the way a user starts it, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``with Served(model, "--max-batch-size", "4") as server: server.url``"""

    def __init__(
        self,
        model: str | Path,
        *args: str,
        env: dict[str, str] | None = None,
        tmpdir: Path | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmpdir
        self.log_path: Path | None = None
        self.args = [
            sys.executable,
            "-m",
            "tlearn",
            "serve",
            str(model),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        if tmpdir is not None:
            self.env["TMPDIR"] = str(tmpdir)
        self.wait_ready = wait_ready
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Served:
        import tempfile

        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.wait_live()
        if self.wait_ready:
            self.wait("/readyz", 200, timeout=180)
        return self

    def wait_live(self, timeout: float = 120) -> None:
        self.wait("/livez", 200, timeout)

    def wait(self, path: str, status: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{path} never answered {status}:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def rss_kb(self, peak: bool = False) -> int:
        assert self.proc is not None
        key = "VmHWM" if peak else "VmRSS"
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def reset_peak_rss(self) -> None:
        """Start VmHWM afresh (Linux: ``clear_refs`` 5), so a peak measures what follows."""
        assert self.proc is not None
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
