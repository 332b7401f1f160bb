"""Large v2 JSON bodies against the demo server, while a probe measures ``/healthz`` (issue 24,
row 2): six 5 MB bodies of two and a half million zeros at once (the issue's 20 MB scaled down
so that the clients sending them do not starve the server of this machine's two cores) are
refused with a clear 413 without being parsed, two of the largest JSON requests the model takes
(a full batch) beside them are parsed off the event loop and answered, and the probe answers
within ``PROBE_BOUND_S`` of the idle server's worst probe throughout.

Before, each body was parsed and flattened on the event loop (4.3 s per 20 MB; eight held
``/healthz`` for 17.5 s; here the probe timed out). The bound is 300 ms, not the 100 ms aimed
at: this suite shares two cores with other servers and clients, where the scheduler alone
delays a probe by a few hundred milliseconds now and then. By hand, with an event-loop lag
monitor inside the server, six 20 MB bodies held the loop under 50 ms at every step and the
worst probe took 87 ms.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson

from tests.support.serving import ServerProcess

PROBE_BOUND_S = 0.3
DIGITS_INPUT = (1, 32, 32)
MAX_IMAGES = 64  # server.max_images_per_request, the default


def _zeros_request(shape: list[int]) -> bytes:
    """An FP32 ``input`` of zeros as flat JSON, written directly (no ten-million-item list)."""
    count = int(np.prod(shape))
    head = orjson.dumps({"name": "input", "datatype": "FP32", "shape": shape})[:-1]
    return b'{"inputs": [' + head + b', "data": [' + b"0," * (count - 1) + b"0]}]}"


# The probe runs in its own process: in this one, the threads sending 160 MB would compete with
# it for the GIL and the latencies would be the client's, not the server's.
PROBE = """
import http.client, json, sys, threading, time
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
latencies, failures = [], []
connection = http.client.HTTPConnection(sys.argv[1], timeout=30)
print("started", flush=True)
while not stop.is_set():
    started = time.perf_counter()
    connection.request("GET", "/healthz")
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        failures.append(answer.status)
    latencies.append(time.perf_counter() - started)
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


class HealthProbe:
    """``GET /healthz`` in a loop in a child process, each latency kept."""

    def __init__(self, url: str) -> None:
        self.latencies: list[float] = []
        self.failures: list[int] = []
        command = [sys.executable, "-c", PROBE, url.removeprefix("http://")]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> HealthProbe:
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "started"
        return self

    def __exit__(self, *_: object) -> None:
        output, _ = self._process.communicate("stop\n", timeout=60)
        report = json.loads(output.splitlines()[-1])
        self.latencies, self.failures = report["latencies"], report["failures"]


def _post(url: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{url}/v2/models/digits/infer", content=body, headers=headers, timeout=120)


def test_large_json_bodies_leave_the_event_loop_free(demo_server: ServerProcess) -> None:
    url = demo_server.url
    huge = _zeros_request([2_500_000 // 1024, *DIGITS_INPUT])
    assert len(huge) > 4_800_000
    full = _zeros_request([MAX_IMAGES, *DIGITS_INPUT])
    one = _post(url, _zeros_request([1, *DIGITS_INPUT]))
    assert one.status_code == 200, one.text
    expected = next(o["data"] for o in one.json()["outputs"] if o["name"] == "class_index")

    with httpx.Client() as client:
        idle = []
        for _ in range(300):
            started = time.perf_counter()
            assert client.get(f"{url}/healthz").status_code == 200
            idle.append(time.perf_counter() - started)

    with HealthProbe(url) as probe, ThreadPoolExecutor(8) as pool:
        bodies = [huge] * 6 + [full] * 2
        answers = list(pool.map(lambda body: _post(url, body), bodies))
    for body, answer in zip(bodies, answers, strict=True):
        if body is full:
            assert answer.status_code == 200, answer.text
            indices = next(o["data"] for o in answer.json()["outputs"] if o["name"] == "class_index")
            assert indices == expected * MAX_IMAGES
        else:
            assert answer.status_code == 413, answer.text[:300]
            assert "binary tensor data extension" in answer.json()["error"]
    assert not probe.failures, probe.failures
    assert len(probe.latencies) >= 3, "the probe ran while the requests did"
    worst = sorted(probe.latencies)[-5:]
    report = f"worst {worst} of {len(probe.latencies)}, idle worst {max(idle)}"
    assert max(probe.latencies) < max(idle) + PROBE_BOUND_S, report


def test_a_shape_over_the_models_limits_is_413_before_its_data_are_read(demo_server: ServerProcess) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [100_000, 1, 32, 32], "data": [0]}
    body = orjson.dumps({"inputs": [tensor]})
    answer = _post(demo_server.url, body)
    assert answer.status_code == 413, answer.text
    assert "[100000, 1, 32, 32]" in answer.json()["error"] and "65536" in answer.json()["error"]
