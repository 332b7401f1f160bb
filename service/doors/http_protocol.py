"""uvicorn's httptools protocol with bounds on what one client, or many, can hold.

- The request head (request line + headers) is bounded in size: httptools buffers a header
  until it ends, with no limit (64 MB measured on one connection, and no answer). A head that
  spans more than ``max_head_bytes`` of received data without ending is answered 431.
- The head must arrive within ``header_timeout_s`` of the connection opening or of the end of
  the previous answer. uvicorn's keep-alive timer starts only after a response and stops at the
  first byte, so connect-only and slowloris sockets were held for ever (3,300 measured, until
  the descriptor limit refused every new client). A late partial head is answered 408; a
  socket that sent nothing is closed.
- At most ``max_connections`` connections are served. A connection that would pass it closes
  the one that has waited longest for a request head (connect-only, a partial head, an idle
  keep-alive), taken from the peer address that holds the most such connections: sockets that
  never finish a head cannot keep anyone out, health probes included (2,100 of them reset
  every new connection, ``/healthz`` too, until their head deadline). Only while every
  connection carries a request are ``PROBE_RESERVE`` more accepted, for health probes only
  (every other request is answered 503 ``not_ready``); past that a new connection is closed
  at once. The count is uvicorn's per-server connection set.

Every request also finds its connection's ``ConnectionWatch`` in its scope, so a request that
waits for its batch learns that its client hung up from a callback, not from a task of its own
waiting on ``receive()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROBE_RESERVE = 32
"""Connections above ``max_connections`` that may carry health probes only."""
PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})
DEFAULT_MAX_CONNECTIONS = 2048
_OTHER_DESCRIPTORS = 256  # checkpoints being read, logs, pipes, listening sockets, gRPC

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_BODY = b'{"error": {"code": "headers_too_large", "message": "the request headers are too large"}}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_BUSY = json.dumps(
    {"error": {"code": "not_ready", "message": "too many open connections; retry shortly"}}
).encode()


def connection_cap(configured: int | None, descriptor_limit: int) -> int:
    """The cap to serve with: the configured one, else 2048, never more than the descriptors allow
    (the cap, the probe reserve and the process's other files all need one)."""
    room = max(1, descriptor_limit - _OTHER_DESCRIPTORS - PROBE_RESERVE)
    return min(configured or DEFAULT_MAX_CONNECTIONS, room)


class HeadWaiters:
    """One server's connections waiting for a request head, by peer address, oldest first: the
    ones a new connection may close when the server is full."""

    def __init__(self) -> None:
        self._by_peer: dict[str, dict[BoundedHttpToolsProtocol, None]] = {}

    def add(self, peer: str, connection: BoundedHttpToolsProtocol) -> None:
        self._by_peer.setdefault(peer, {})[connection] = None

    def discard(self, peer: str, connection: BoundedHttpToolsProtocol) -> None:
        waiting = self._by_peer.get(peer)
        if waiting is None:
            return
        waiting.pop(connection, None)
        if not waiting:
            del self._by_peer[peer]

    def longest_waiting(self) -> BoundedHttpToolsProtocol | None:
        """The oldest waiter of the peer holding the most of them; None when none waits."""
        if not self._by_peer:
            return None
        busiest = max(self._by_peer.values(), key=len)
        return next(iter(busiest))


CONNECTION_WATCH = "model_serve.connection"
"""The key in a request scope's ``extensions`` of its connection's ``ConnectionWatch``."""


class ConnectionWatch:
    """Calls back when its connection is lost. A request waiting for its batch registers one
    callback instead of running a task that waits on ``receive()``: that task cost about 10 us,
    3% of a small model's whole request on the event loop."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def lose(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Bounds the head's size and arrival time, and the number of open connections.

    ``head_waiters`` is shared by every connection of one server: ``bounded_protocol`` makes
    one class per server."""

    max_head_bytes = 64 * 1024
    header_timeout_s = 10.0
    max_connections = DEFAULT_MAX_CONNECTIONS
    head_waiters = HeadWaiters()
    on_evicted: Callable[[], None] = staticmethod(lambda: None)
    _head_bytes = 0
    _in_head = True
    _head_deadline: asyncio.TimerHandle | None = None
    _bytes_since_armed = 0
    _probes_only = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._watch = ConnectionWatch()
        super().connection_made(transport)
        open_now = len(self.connections)  # uvicorn's set for this server, this one included
        if open_now > self.max_connections and self._make_room():
            open_now -= 1
        if open_now > self.max_connections + PROBE_RESERVE:
            transport.close()
            return
        self._probes_only = open_now > self.max_connections
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)
        self._watch.lose()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {CONNECTION_WATCH: self._watch}  # type: ignore[dict-item]
        self._head_bytes = 0
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_deadline()
        if self._probes_only:
            # read by uvicorn's on_headers_complete to pick the app for this request
            self.app = self.config.loaded_app if self._is_probe() else _refuse_busy
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        idle_next = not self.pipeline  # else the next, already parsed, request starts now
        super().on_response_complete()
        if idle_next and not self.transport.is_closing():
            self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is not None:
            self._bytes_since_armed += len(data)
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # only data after which the head still has not ended counts: a first read that
            # holds a whole head plus a large body is fine
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.transport.write(_TOO_LARGE % (len(_BODY), _BODY))
                self.transport.close()

    def _make_room(self) -> bool:
        """Closes the connection that has waited longest for its head (of the busiest peer)."""
        evicted = self.head_waiters.longest_waiting()
        if evicted is None:
            return False
        evicted._disarm_head_deadline()
        self.connections.discard(evicted)  # its place is this one's now, not when its close lands
        evicted.transport.close()
        self.on_evicted()
        return True

    @property
    def _peer(self) -> str:
        return self.client[0] if self.client else ""

    def _is_probe(self) -> bool:
        path = self.url.partition(b"?")[0]
        return self.parser.get_method() in (b"GET", b"HEAD") and path in PROBE_PATHS

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._bytes_since_armed = 0
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
        self.head_waiters.add(self._peer, self)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
            self.head_waiters.discard(self._peer, self)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        self.head_waiters.discard(self._peer, self)
        if self.transport.is_closing():
            return
        if self._bytes_since_armed:  # a head began but did not finish: say why it is cut
            body = json.dumps(
                {
                    "error": {
                        "code": "request_timeout",
                        "message": f"the request head did not arrive within {self.header_timeout_s:g} s",
                    }
                }
            ).encode()
            self.transport.write(_TIMED_OUT % (len(body), body))
        self.transport.close()


async def _refuse_busy(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """The answer on a probe-reserve connection to anything but a health probe."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BUSY)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _BUSY})


def bounded_protocol(
    max_head_bytes: int, header_timeout_s: float, max_connections: int, on_evicted: Callable[[], None]
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this server's bounds;
    ``on_evicted`` counts each connection closed to make room."""
    bounds = {
        "max_head_bytes": max_head_bytes,
        "header_timeout_s": header_timeout_s,
        "max_connections": max_connections,
        "head_waiters": HeadWaiters(),
        "on_evicted": staticmethod(on_evicted),
    }
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), bounds)
