"""Triton's perf_analyzer against model-serve's two v2 doors: what a Triton user runs first.

perf_analyzer is a C++ binary shipped inside ``tritonclient==2.41.1``'s wheel (later wheels
dropped it). ``locate`` fetches it into ``.cache/perf_analyzer`` with pip (the wheel, unpacked
for its binary only, and PyPI's ``nvidia-cuda-runtime-cu12`` for the ``libcudart.so.12`` it
links even on a CPU machine) and checks Debian's ``libb64-0d`` is there; where something is
missing it says what, so the test skips and ``make perf-analyzer`` explains.

perf_analyzer sends every input the model lists, with generated data unless ``--input-data``
names it: its default random bytes make NaN floats, which model-serve refuses (400), so runs
here use ``--input-data zero`` (served from the ``input`` tensor) or real images
(``image_data``: each file as one serialized BYTES element).

    python load_tests/perf_analyzer.py              # the demo server, both doors, both data
"""

from __future__ import annotations

import base64
import json
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_tests.server_process import REPO, ServerProcess

WHEEL = "tritonclient==2.41.1"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
CACHE = REPO / ".cache" / "perf_analyzer"
SAMPLES = REPO / "models" / "samples"
# Windows of a fixed request count and a loose stability bound: on a shared 2-core machine the
# default time windows and 10% bound often never settle.
STEADY = ["--measurement-mode", "count_windows", "--measurement-request-count", "300", "-s", "50"]


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    library_path: Path  # where libcudart.so.12 lies

    def run(self, model: str, url: str, protocol: str, data: str, *extra: str) -> Measured:
        """One perf_analyzer run at concurrency 1; raises with its output when it fails."""
        args = [str(self.binary), "-m", model, "-u", url, "-i", protocol, "--input-data", data]
        done = subprocess.run(
            [*args, *STEADY, *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env={"LD_LIBRARY_PATH": str(self.library_path), "PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"perf_analyzer {protocol} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return Measured.parse(done.stdout)


@dataclass(frozen=True)
class Measured:
    """What perf_analyzer printed: client throughput and the server's own statistics."""

    throughput: float  # infer/s
    p99_us: int
    server_requests: int  # "Successful request count" from the server's statistics
    server_compute_infer_us: int

    @classmethod
    def parse(cls, output: str) -> Measured:
        def number(pattern: str) -> float:
            found = re.search(pattern, output)
            if found is None:
                raise ValueError(f"perf_analyzer printed no {pattern!r}:\n{output}")
            return float(found.group(1))

        return cls(
            throughput=number(r"Throughput: ([\d.]+) infer/sec"),
            p99_us=int(number(r"p99 latency: (\d+) usec")),
            server_requests=int(number(r"Successful request count: (\d+)")),
            server_compute_infer_us=int(number(r"compute infer (\d+) usec")),
        )


def locate() -> PerfAnalyzer | str:
    """perf_analyzer, fetched into the cache on first use, or why it cannot run here."""
    binary = CACHE / "bin" / "perf_analyzer"
    library_path = CACHE / "cudart" / "nvidia" / "cuda_runtime" / "lib"
    if not sys.platform.startswith("linux") or not _is_x86_64():
        return "perf_analyzer's wheel is built for x86_64 Linux only"
    if not _has_library("libb64.so.0d"):
        return "perf_analyzer needs Debian's libb64-0d: apt-get install -y libb64-0d"
    try:
        if not binary.exists():
            _fetch_binary(binary)
        if not (library_path / "libcudart.so.12").exists():
            _pip("install", "--no-deps", "--target", str(CACHE / "cudart"), CUDA_RUNTIME)
    except (subprocess.SubprocessError, OSError, KeyError) as error:
        return f"could not fetch perf_analyzer with pip: {error}"
    return PerfAnalyzer(binary, library_path)


def image_data(files: list[Path], path: Path) -> Path:
    """A ``--input-data`` file that sends each image as input ``image`` in turn. A BYTES
    element's raw form is its 4-byte little-endian length, then its bytes."""
    steps = []
    for file in files:
        blob = file.read_bytes()
        raw = struct.pack("<I", len(blob)) + blob
        steps.append({"image": {"content": {"b64": base64.b64encode(raw).decode()}, "shape": [1]}})
    path.write_text(json.dumps({"data": steps}))
    return path


def _fetch_binary(binary: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _pip("download", "--no-deps", "--dest", folder, WHEEL)
        (wheel,) = Path(folder).glob("tritonclient-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith("/bin/perf_analyzer"))
            binary.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, binary.open("wb") as target:
                shutil.copyfileobj(source, target)
    binary.chmod(0o755)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, capture_output=True, timeout=600)


def _is_x86_64() -> bool:
    return platform.machine() == "x86_64"


def _has_library(name: str) -> bool:
    listed = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=False)
    return name in listed.stdout


def main() -> int:
    found = locate()
    if isinstance(found, str):
        print(f"perf_analyzer: {found}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        images = image_data(sorted(SAMPLES.glob("digit_*.png")), Path(folder) / "digits.json")
        with ServerProcess(None, Path(folder) / "server.log") as server:
            print(f"{'door':6} {'data':6} {'infer/s':>9} {'p99 ms':>7} {'server requests':>16}")
            for protocol, url in (
                ("http", server.url.removeprefix("http://")),
                ("grpc", server.grpc_address),
            ):
                for label, data in (("images", str(images)), ("zero", "zero")):
                    measured = found.run("digits", url, protocol, data)
                    print(
                        f"{protocol:6} {label:6} {measured.throughput:9.1f} {measured.p99_us / 1000:7.2f} "
                        f"{measured.server_requests:16d}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
