"""Budgets that hold across all requests at once, against a real server on loopback.

The rows of the hardening issue: one multipart request of 32 large PNGs, 100 concurrent 20 MB
uploads, and streams of scan-bomb and header-bomb images. Each is answered, resident memory
stays under a stated bound, and a normal request and ``/healthz`` keep answering quickly.
Every loop is bounded in count and time; only loopback traffic.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.support import crafted
from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.memory import memory_mb, reset_peak_mb
from tests.support.serving import ServerProcess

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0, "in_channels": 1, "num_classes": 3}
PNG = {"Content-Type": "image/png"}
GOOD = png(None, seed=3)
INFLIGHT_BODY = 64 << 20
# Bounds on the growth of resident memory (VmHWM, the peak over the process's life), in MB.
# Before the budgets: 575 MB -> 5.0 GB for the 32-part request, 3.5 GB for the uploads.
MULTIPART_PEAK_MB = 700
# The budget bounds the body bytes held; resident memory is up to twice that (a body's chunks
# and their joined copy), plus glibc keeping freed heap pages resident: measured peaks spread
# from 144 to 390 MB over twenty runs here (the same before and after this bound was set),
# against 3.5 GB without the budget.
UPLOADS_PEAK_MB = 4 * INFLIGHT_BODY / 2**20 + 150


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("bounds")
    save_random_weights(ARCH, ARGS, folder / "m.pt")
    entry = model_entry(ARCH, "m.pt", init_args=ARGS, cpu_replicas=1, batching={"max_batch_size": 4})
    limits = {"request_timeout_s": 120, "max_inflight_body_bytes": INFLIGHT_BODY}
    with ServerProcess(write_config(folder, {"m": entry}, server=limits), folder / "server.log") as running:
        yield running


def _assert_healthy(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    answer = httpx.post(f"{server.url}/predict?model=m", content=GOOD, headers=PNG, timeout=30)
    assert answer.status_code == 200, answer.text


def test_32_large_pngs_in_one_request_are_answered_in_bounded_memory(server: ServerProcess) -> None:
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, format="PNG")  # 36 M pixels in ~105 kB
    files = [("file", (f"big{i}.png", buffer.getvalue(), "image/png")) for i in range(32)]
    before = reset_peak_mb(server.process.pid)
    answer = httpx.post(f"{server.url}/predict?model=m", files=files, timeout=180)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 32
    growth = memory_mb(server.process.pid, "VmHWM") - before
    print(f"32 x 6000x6000 PNG: peak RSS growth {growth:.0f} MB (bound {MULTIPART_PEAK_MB})")
    assert growth < MULTIPART_PEAK_MB
    _assert_healthy(server)


UPLOAD = b"\x89PNG" + b"\0" * (20 * 1024 * 1024 - 4)  # not a decodable image: memory is the point
# Waves of uploads: resident memory after any later wave over that after the first, in MB. Before
# the fix every wave kept its refused bodies (a reference cycle through each refusal's traceback)
# until the garbage collector's rare full pass: +50-300 MB a wave, a sawtooth to 3.4 GB. After
# it: 0-6 MB, or one 64 MB step when glibc gives a decode thread a heap of its own.
WAVES, WAVE_SIZE, WAVES_GROWTH_MB = 6, 30, 100


def _upload_wave(server: ServerProcess, count: int) -> dict[int | str, int]:
    """``count`` concurrent uploads of ``UPLOAD``; how many got each status (or client error)."""

    def upload(_: int) -> int | str:
        try:
            answer = httpx.post(f"{server.url}/predict?model=m", content=UPLOAD, headers=PNG, timeout=60)
        except httpx.HTTPError as error:  # refused early while still sending: the server closed
            return type(error).__name__
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1"
        return answer.status_code

    with ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(upload, range(count)))
    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert counts.get(400, 0) >= 1  # some were admitted, read whole, and refused as images
    assert counts.get(503, 0) + sum(n for o, n in counts.items() if isinstance(o, str)) >= 1
    assert set(counts) <= {400, 503, "WriteError", "RemoteProtocolError", "ReadError"}
    return counts


def test_100_concurrent_20_mb_uploads_hold_at_most_the_body_budget(server: ServerProcess) -> None:
    before = reset_peak_mb(server.process.pid)
    counts = _upload_wave(server, 100)
    growth = memory_mb(server.process.pid, "VmHWM") - before
    print(f"100 x 20 MB uploads: {counts}, peak RSS growth {growth:.0f} MB (bound {UPLOADS_PEAK_MB:.0f})")
    assert growth < UPLOADS_PEAK_MB
    _assert_healthy(server)


def test_waves_of_refused_uploads_leave_no_memory_behind(server: ServerProcess) -> None:
    after_each = []
    for _ in range(WAVES):
        _upload_wave(server, WAVE_SIZE)
        after_each.append(memory_mb(server.process.pid))
    shown = ", ".join(f"{rss:.0f}" for rss in after_each)
    print(f"{WAVES} waves of {WAVE_SIZE} x 20 MB uploads: RSS after each {shown} MB")
    assert max(after_each) - after_each[0] < WAVES_GROWTH_MB  # neither growth nor a sawtooth
    _assert_healthy(server)


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(lambda: crafted.scan_bomb(6000, 6000, 6000), id="progressive-jpeg-6000-scans"),
        pytest.param(lambda: crafted.marker_bomb(4_000_000), id="16-mb-of-app5-markers"),
        pytest.param(lambda: crafted.chunk_bomb(1_300_000), id="16-mb-of-prIv-chunks"),
    ],
)
def test_bombs_never_stall_the_model_or_the_probes(server: ServerProcess, bomb: object) -> None:
    payload = bomb()  # type: ignore[operator]
    stop = threading.Event()
    refused: list[int] = []

    def send_bombs() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(20):
                if stop.is_set():
                    return
                answer = client.post(f"{server.url}/predict?model=m", content=payload, headers=PNG)
                refused.append(answer.status_code)

    senders = [threading.Thread(target=send_bombs) for _ in range(2)]
    for sender in senders:
        sender.start()
    slowest = 0.0
    try:
        with httpx.Client(timeout=5) as client:
            for _ in range(15):
                for path, call in (("/healthz", client.get), ("/predict?model=m", client.post)):
                    started = time.monotonic()
                    kwargs = {"content": GOOD, "headers": PNG} if call == client.post else {}
                    answer = call(f"{server.url}{path}", **kwargs)  # type: ignore[operator]
                    slowest = max(slowest, time.monotonic() - started)
                    assert answer.status_code == 200, answer.text
    finally:
        stop.set()
        for sender in senders:
            sender.join(60)
    size_mb, slowest_ms = len(payload) / 1e6, slowest * 1000
    print(f"{size_mb:.1f} MB bomb: {len(refused)} refused, slowest normal answer {slowest_ms:.0f} ms")
    assert refused and set(refused) == {400}
    assert slowest < 1.0
    _assert_healthy(server)
