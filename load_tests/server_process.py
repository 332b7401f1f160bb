"""A real ``model-serve serve`` child process on a free loopback port: started, waited on
through ``/readyz``, stopped by its own PID (SIGTERM, the server drains; SIGKILL if it hangs).

Shared by the test suite, the locust runner and the benchmark.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
# Variables that would override the config a caller wrote for its server.
_OVERRIDING = (
    "MODEL_SERVE_CONFIG",
    "MODEL_SERVE_CHECKPOINT_ROOT",
    "MODEL_SERVE_DEFAULT_MODEL",
    "MODEL_SERVE_GRPC_PORT",
)


def free_port() -> int:
    """A loopback port free right now; the server binds it a moment later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``model-serve serve`` (the demo when ``config`` is None) with ``env`` added."""

    def __init__(self, config: Path | None, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)]
        args += ["--grpc-port", str(self.grpc_port)]
        if config is not None:
            args += ["--config", str(config)]
        child_env = {key: value for key, value in os.environ.items() if key not in _OVERRIDING}
        child_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=REPO, env=child_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Polls ``/readyz``; fails fast, with the server's log, if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits by itself."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        self.terminate()
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
