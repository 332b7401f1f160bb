"""Run wrk against a loopback URL and read its results from a Lua ``done()`` hook.

wrk's own text output rounds latencies and mixes units; the hook prints exact figures (in
microseconds) as one JSON line, so nothing here parses human-oriented text.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk) and put it on PATH"
_MARK = "WRK_RESULT "
# A slow server must show up as high latency, not as timeouts that wrk leaves out of its
# latency figures: the naive server's p99 runs to seconds under load.
_TIMEOUT_S = 60

_SCRIPT = """
local body_path, content_type = nil, nil
init = function(args)
  body_path, content_type = args[1], args[2]
  local file = assert(io.open(body_path, "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = content_type
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d}\\n',
    "MARK", summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
""".replace("MARK", _MARK)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles and every kind of failure."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    status_errors: int  # answers with a status >= 400
    socket_errors: int  # connect, read, write and timeout errors

    @property
    def rps(self) -> float:
        """Answered requests per second, failures excluded (one image per request)."""
        return (self.requests - self.status_errors) / self.seconds

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors


def find_wrk() -> str | None:
    """The wrk binary on PATH (wherever the package manager put it), or None."""
    return shutil.which("wrk")


def write_script(folder: Path) -> Path:
    """The Lua script, written once per benchmark run; the image comes in through its args."""
    path = folder / "post_image.lua"
    path.write_text(_SCRIPT)
    return path


def run_wrk(
    url: str, script: Path, body: Path, content_type: str, *, clients: int, seconds: int
) -> WrkResult:
    """One thread, ``clients`` keep-alive connections, raw-body POSTs of ``body``."""
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError(f"wrk is not on PATH: {INSTALL_HINT}")
    command = [
        wrk,
        "-t1",
        f"-c{clients}",
        f"-d{seconds}s",
        f"--timeout={_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(body),
        content_type,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next((ln for ln in finished.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{finished.stdout}\n{finished.stderr}")
    raw = json.loads(line.removeprefix(_MARK))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        status_errors=raw["status_errors"],
        socket_errors=raw["socket_errors"],
    )
