"""``tlearn serve`` in a subprocess on 127.0.0.1 at a free port, for the server's tests and
benchmark: started the way a user starts it, stopped with SIGTERM. Also the model they
serve (fitted once per session) and raw-socket exchanges."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

_RUN = (
    "import json, sys; from tlearn.serve import ServeConfig, run; "
    "config = ServeConfig(**json.loads(sys.argv[3])); "
    "sys.exit(run(sys.argv[1], config, port=int(sys.argv[2]), log_level='warning'))"
)
_FITTED: dict[str, Path] = {}


def fitted_model(calibration_set: Any, tmp_path_factory: Any) -> Path:
    """A linear probe on the calibration set, saved; fitted once per session, however many
    test modules serve it."""
    from tlearn import LinearProbe, save

    key = str(tmp_path_factory.getbasetemp())
    if key not in _FITTED:
        X, y = calibration_set
        probe = LinearProbe(image_size=32, Cs=[1.0], engine="torch", flip_average=False)
        _FITTED[key] = save(probe.fit(X, y), tmp_path_factory.mktemp("serve") / "probe.safetensors")
    return _FITTED[key]


#: The shared server's limits: a key, a 10 MB body limit, a short body deadline and a long
#: answer deadline (the machine may be busy), the automatic queue cap.
SHARED_KEY = "k3y-for-the-tests"
SHARED_LIMITS = {"max_body_mb": 10, "body_timeout_s": 3, "timeout_s": 30, "max_batch_size": 4,
                 "top_k": 3, "max_pixels": 1_000_000, "api_key": SHARED_KEY}  # fmt: skip
_SHARED: dict[str, Served] = {}


def shared_server(request: Any, calibration_set: Any, tmp_path_factory: Any) -> Served:
    """One server for every test module that does not stop it, started at the first use
    and stopped at the session's end (each start costs seconds: Python, torch, the model)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _SHARED:
        model = fitted_model(calibration_set, tmp_path_factory)
        tmp = tmp_path_factory.mktemp("shared-server-tmpdir")
        server = Served(model, config=SHARED_LIMITS, tmpdir=tmp).__enter__()
        request.config.add_cleanup(lambda: server.__exit__(None, None, None))
        _SHARED[key] = server
    return _SHARED[key]


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> tuple[int, str]:
    """Send ``data`` on a fresh connection and read until the server closes it: (status,
    body). Requests should say ``Connection: close``, or this waits for the keep-alive
    timeout."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the server answered and closed before the end
            s.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def chunked_upload(port: int, total: int, headers: bytes = b"") -> int:
    """Send ``total`` bytes in 64 KB chunks (no Content-Length); return the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Connection: close\r\nTransfer-Encoding: chunked\r\n" + headers + b"\r\n"
        )
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):  # the server answered and closed mid-send
            for _ in range(total // len(chunk)):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while part := s.recv(65536):
                reply += part
    if not reply:
        raise ConnectionResetError("the server closed without a reply")
    return int(reply.split()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """``with Served(model, "--max-batch-size", "4") as server: server.url``: ``tlearn
    serve MODEL ARGS...``; or, given ``config`` (``ServeConfig``'s keywords, for limits the
    command line does not take), ``tlearn.serve.run(MODEL, ServeConfig(**config))``."""

    def __init__(
        self,
        model: str | Path,
        *args: str,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        tmpdir: Path | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmpdir
        self.log_path: Path | None = None
        self.args = [sys.executable, "-m", "tlearn", "serve", str(model), "--port",
                     str(self.port), "--log-level", "warning", *args]  # fmt: skip
        if config is not None:
            self.args = [sys.executable, "-c", _RUN, str(model), str(self.port), json.dumps(config)]
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

    def n_threads(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

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
