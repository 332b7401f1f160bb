"""Connections are bounded on a real server: head deadlines, idle keep-alive, a connection cap.

Connect-only and slowloris sockets are closed by the deadlines while a normal client is served
throughout; a flood of unfinished heads past ``max_connections`` never keeps out health probes
or a normal request (the longest-waiting sockets of the busiest peer are closed to make room);
while every connection carries a request, a normal request is refused cleanly (503) but health
probes are still answered; the process raises its open-file limit at start. Socket counts are
modest and every wait is bounded; only loopback traffic (peers told apart by 127.0.0.x).
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.doors.http_protocol import PROBE_RESERVE
from tests.support.harness import model_entry, png, save_random_weights, write_config
from tests.support.loadgen import PNG
from tests.support.serving import ServerProcess
from tests.support.waiting import wait_until

ARCH = "tests.support.archs:slow_classifier"
ARGS = {"delay_s": 0.0}
GOOD = png(None, seed=1)
HEADER_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1
CAP = 64
UNFINISHED_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\n"
PROBE_BOUND_S = 2.0


def _start(folder: Path, server: dict[str, object]) -> ServerProcess:
    save_random_weights(ARCH, ARGS, folder / "m.pt")
    config = write_config(folder, {"m": model_entry(ARCH, "m.pt", init_args=ARGS)}, server=server)
    return ServerProcess(config, folder / "server.log")


@pytest.fixture(scope="module")
def deadlines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Short deadlines; started with the common soft open-file limit of 1024, which it must raise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        process = _start(
            tmp_path_factory.mktemp("deadlines"),
            {"header_timeout_s": HEADER_TIMEOUT_S, "keep_alive_timeout_s": KEEP_ALIVE_S},
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with process:
        yield process


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small connection cap and a long head deadline, so idle sockets hold their places."""
    with _start(
        tmp_path_factory.mktemp("capped"), {"max_connections": CAP, "header_timeout_s": 60}
    ) as process:
        yield process


def _predict_ok(url: str) -> None:
    answer = httpx.post(f"{url}/predict", content=GOOD, headers=PNG, timeout=10)
    assert answer.status_code == 200, answer.text


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def _unfinished_heads(
    stack: ExitStack, port: int, count: int, source: str = "127.0.0.1"
) -> list[socket.socket]:
    """``count`` sockets that each send the start of a head and never finish it."""
    socks = []
    for _ in range(count):
        sock = _connect(port, source)
        stack.callback(sock.close)
        sock.send(UNFINISHED_HEAD)
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def _probes_answer_quickly(url: str) -> None:
    for path in ("/healthz", "/readyz"):
        started = time.monotonic()
        answer = httpx.get(f"{url}{path}", timeout=PROBE_BOUND_S * 2)
        took = time.monotonic() - started
        assert (path, answer.status_code) == (path, 200), answer.text
        assert took < PROBE_BOUND_S, f"{path} took {took:.2f} s during the flood"


def test_the_open_file_limit_is_raised_to_the_hard_limit(deadlines: ServerProcess) -> None:
    limits = Path(f"/proc/{deadlines.process.pid}/limits").read_text().splitlines()
    soft, hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
    assert soft == hard, limits
    assert f"open-file limit: {soft}" in deadlines.log()
    assert "serving at most 2048 connections" in deadlines.log() or int(soft) < 2400


def test_idle_and_slowloris_sockets_are_closed_by_the_deadline(deadlines: ServerProcess) -> None:
    idle = [_connect(deadlines.port) for _ in range(200)]
    slow = [_connect(deadlines.port) for _ in range(100)]
    opened = time.monotonic()
    closed_at: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {sock: b"" for sock in slow}
    with ExitStack() as stack, selectors.DefaultSelector() as selector:
        for sock in idle + slow:
            stack.callback(sock.close)
            selector.register(sock, selectors.EVENT_READ)
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        sent = 0
        while len(closed_at) < len(idle) + len(slow) and time.monotonic() - opened < HEADER_TIMEOUT_S + 6:
            for sock in slow:  # one byte of the head per socket every 0.2 s: it never ends in time
                if sock not in closed_at:
                    try:
                        sock.send(head[sent % len(head) : sent % len(head) + 1])
                    except OSError:
                        closed_at[sock] = time.monotonic()
            sent += 1
            _predict_ok(deadlines.url)  # a normal client is served throughout
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                answers[sock] = answers.get(sock, b"") + data
                if not data:
                    closed_at.setdefault(sock, time.monotonic())
                    selector.unregister(sock)
    assert len(closed_at) == len(idle) + len(slow), (
        f"{len(idle) + len(slow) - len(closed_at)} sockets still open"
    )
    latest = max(closed_at.values()) - opened
    assert latest < HEADER_TIMEOUT_S + 3, f"the last socket was closed after {latest:.1f} s"
    assert min(closed_at.values()) - opened > HEADER_TIMEOUT_S * 0.8
    assert all(not answers.get(sock) for sock in idle), "a connect-only socket got an answer"
    timed_out = [sock for sock in slow if answers[sock].startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 90, [answers[sock][:80] for sock in slow[:3]]
    assert b'"request_timeout"' in answers[timed_out[0]]
    _predict_ok(deadlines.url)


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """One request on a blocking socket, its whole answer (the test server sends content-length)."""
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def _closed_after(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (anything it says first is returned too)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    said = b""
    while data := sock.recv(4096):
        said += data
    return time.monotonic() - started, said


def test_an_idle_keep_alive_connection_is_closed(deadlines: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", deadlines.port), timeout=5) as sock:
        head = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        took, said = _closed_after(sock, KEEP_ALIVE_S + 4)
    assert said == b""
    assert KEEP_ALIVE_S * 0.8 < took < KEEP_ALIVE_S + 2


def test_a_head_trickled_after_an_answer_is_cut_at_the_deadline(deadlines: ServerProcess) -> None:
    """uvicorn stops its keep-alive timer at the first byte: the head deadline still runs."""
    with socket.create_connection(("127.0.0.1", deadlines.port), timeout=5) as sock:
        assert _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        said = b""
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.1)  # the slow client under test: ~4 s of head, past HEADER_TIMEOUT_S
        except OSError:
            pass
        sock.settimeout(5)
        try:
            while data := sock.recv(4096):
                said += data
        except OSError:
            pass
        took = time.monotonic() - started
    assert said.startswith(b"HTTP/1.1 408"), said[:200]
    assert took < HEADER_TIMEOUT_S + 2


def test_unfinished_heads_past_the_cap_never_keep_out_probes(capped: ServerProcess) -> None:
    """Many more unfinished heads than the cap and its probe reserve: the oldest are closed to
    make room, so probes answer at once, round after round, and so does a normal request."""
    evicted_before = _evicted(capped.url)
    with ExitStack() as stack:
        flood = _unfinished_heads(stack, capped.port, CAP + PROBE_RESERVE + 40)
        for _ in range(5):
            flood += _unfinished_heads(stack, capped.port, 10)
            _probes_answer_quickly(capped.url)
        _predict_ok(capped.url)
        wait_until(
            lambda: sum(map(_closed_by_server, flood)) >= len(flood) - CAP,
            10,
            "every unfinished head past the cap closed by the server",
        )
        closed = [_closed_by_server(sock) for sock in flood]
        assert closed == sorted(closed, reverse=True), "a newer socket was closed before an older one"
        assert 0 < closed.count(False) <= CAP
        # every socket closed to make room counted once (the probes' own may add a few)
        assert _evicted(capped.url) - evicted_before >= closed.count(True)
    _predict_ok(capped.url)


def _evicted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    families = text_string_to_metric_families(text)
    (family,) = [f for f in families if f.name == "model_serve_evicted_connections"]
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))


def test_room_is_made_from_the_peer_holding_the_most_unfinished_heads(capped: ServerProcess) -> None:
    with ExitStack() as stack:
        few = _unfinished_heads(stack, capped.port, 5, source="127.0.0.2")
        many = _unfinished_heads(stack, capped.port, CAP + 10, source="127.0.0.3")
        _probes_answer_quickly(capped.url)
        wait_until(
            lambda: sum(map(_closed_by_server, many)) >= 10,
            10,
            "the busiest peer's oldest sockets closed",
        )
        assert not any(map(_closed_by_server, few)), "the peer with 5 sockets lost one, older or not"
    _predict_ok(capped.url)


def _reading_bodies(stack: ExitStack, port: int, count: int) -> None:
    """``count`` connections each carrying a request: a whole head whose body never comes."""
    for _ in range(count):
        sock = _connect(port)
        stack.callback(sock.close)
        sock.send(UNFINISHED_HEAD + b"Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n")


def test_with_every_connection_busy_requests_are_refused_but_probes_answered(capped: ServerProcess) -> None:
    with ExitStack() as stack:
        _reading_bodies(stack, capped.port, CAP)
        wait_until(  # accepted in order, but their heads may still be in flight
            lambda: httpx.get(f"{capped.url}/models", timeout=5).status_code == 503,
            10,
            "the cap full of requests",
        )
        refused = httpx.post(f"{capped.url}/predict", content=GOOD, headers=PNG, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "not_ready"
        assert refused.headers["connection"] == "close"
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{capped.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{capped.url}/readyz", timeout=5).status_code == 200
        assert httpx.get(f"{capped.url}/models", timeout=5).status_code == 503
        _unfinished_heads(stack, capped.port, PROBE_RESERVE + 10)  # the reserve full of them
        _probes_answer_quickly(capped.url)
    wait_until(  # the requests' sockets are closed: normal service again
        lambda: httpx.get(f"{capped.url}/models", timeout=5).status_code == 200,
        10,
        "/models answering 200 again after the connections closed",
    )
    _predict_ok(capped.url)
