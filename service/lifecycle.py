"""One app instance's life, in one order: start, readiness, drain and stop.

- start (ASGI lifespan): gRPC listens (``server.grpc_port``; the CLI has it listen just before
  the lifespan, so that a taken port ends the start as a taken HTTP port does), then the
  registry loads every model in the background (replicas, their loops, warm-up, watchers), so
  ``/healthz`` answers at once; uvicorn opens the HTTP socket right after the lifespan starts.
- ready: once every model is warm, the collector freezes the long-lived objects and
  ``on_ready`` runs (the CLI logs one "ready" line once the socket is open too). A load failure
  fails ``/healthz`` and calls ``on_fatal`` (the CLI then exits with status 1).
- drain (SIGINT/SIGTERM, ``DrainingServer``): readiness turns 503 at once; uvicorn stops
  accepting and waits for the requests in flight; whatever still waits after
  ``server.drain_grace_s`` is answered 503 (retry elsewhere) instead of being cut off.
- stop (lifespan exit, after uvicorn has drained HTTP): gRPC answers its calls in flight, loading
  stops, the registry stops replicas and watchers (failing what they hold), worker threads go.

``Runtime`` (``service.pipeline.runtime``) holds the objects an app serves with; the doors
find it on ``app.state``. ``Lifecycle`` moves it through these steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import HANDLED_SIGNALS

from service.config import ServerSpec
from service.doors.v2.grpc_service import GrpcDoor, start_grpc, stop_grpc
from service.errors import ConfigError, NotReady
from service.pipeline.runtime import Runtime

log = logging.getLogger(__name__)


class Lifecycle:
    """Starts, drains and stops one app's ``Runtime`` (see the module docstring for the order)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grpc: GrpcDoor | None = None
        self._loading: asyncio.Task[None] | None = None

    async def start(
        self,
        *,
        grpc_host: str,
        on_ready: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Listens for gRPC (unless ``server.grpc_port`` is null), then loads the models in the
        background: ``on_ready`` once every model is warm, ``on_fatal`` with the error if
        loading fails (without it the error is logged here)."""
        self._loop = asyncio.get_running_loop()
        await self.listen_grpc(grpc_host)
        names = list(self.runtime.config.models)
        log.info("loading %d model%s (%s)...", len(names), "" if len(names) == 1 else "s", ", ".join(names))
        self._loading = asyncio.create_task(self.runtime.registry.start(), name="load-models")
        self._loading.add_done_callback(lambda task: self._loaded(task, on_ready, on_fatal))

    async def listen_grpc(self, host: str) -> None:
        """gRPC listens on ``server.grpc_port`` (unless null), once: ``start`` calls it, and the
        CLI earlier, before the lifespan, so that a port already taken ends the start as an HTTP
        one does (one error line, exit status 3) rather than as a failed lifespan (a traceback)."""
        port = self.runtime.config.server.grpc_port
        if port is not None and self._grpc is None:
            self._grpc = await start_grpc(self.runtime, host, port)
            self.runtime.grpc_port = self._grpc.port

    def _loaded(
        self,
        task: asyncio.Task[None],
        on_ready: Callable[[], None] | None,
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            # torch, FastAPI and the models leave ~400k long-lived objects; a full collection
            # walks them all (100-200 ms here), a stall every request would feel at random.
            # Frozen objects are skipped by the collector from now on.
            gc.collect()
            gc.freeze()
            if on_ready is not None:
                on_ready()
            return
        self.runtime.startup_error = error
        if on_fatal is None:
            log.error("model loading failed; the server cannot become ready: %s", error)
            return
        on_fatal(error)

    async def stop(self) -> None:
        """The one shutdown sequence, after the HTTP server has drained: refuse new work, answer
        the gRPC calls in flight while the replicas still run, stop loading, stop the replicas
        (failing what they hold), release the worker threads."""
        self._draining()
        if self._grpc is not None:
            await stop_grpc(self._grpc, self.runtime.config.server.drain_grace_s)
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        await self.runtime.registry.stop()
        self.runtime.workers.shutdown(wait=False, cancel_futures=True)

    def begin_drain(self) -> None:
        """Readiness turns 503 now; whatever is still waiting when the grace period ends is
        answered 503 (retry elsewhere) instead of being cut off. Safe from a signal handler."""
        self.runtime.draining = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.runtime.registry.readiness_changed)
            self._loop.call_soon_threadsafe(
                self._loop.call_later, self.runtime.config.server.drain_grace_s, self._give_up
            )

    def _draining(self) -> None:
        """Readiness turns false, and its observers hear it (on the event loop)."""
        self.runtime.draining = True
        self.runtime.registry.readiness_changed()

    def _give_up(self) -> None:
        error = NotReady(
            "the server shut down before this prediction was ready; retry", headers={"Retry-After": "1"}
        )
        self.runtime.registry.fail_queued(error)


def shutdown_timeout_s(limits: ServerSpec) -> int:
    """How long uvicorn waits for HTTP requests in flight at shutdown: a second more than the
    drain grace, so that requests still waiting then are answered 503 first."""
    return math.ceil(limits.drain_grace_s) + 1


class DrainingServer(uvicorn.Server):
    """uvicorn, but a shutdown signal first turns readiness to 503 (draining), and a line says
    when the server is ready: listening, and every model warm (in whichever order)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.runtime = lifecycle.runtime
        self._listening = False
        self._loaded = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.lifecycle.listen_grpc(self.config.host)
        except ConfigError as error:  # as uvicorn's own ending when the HTTP port is taken
            logging.getLogger("uvicorn.error").error(error.message)
            sys.exit(STARTUP_FAILURE)
        await super().startup(sockets)  # exits the process if it cannot bind
        self._listening = True
        self._announce()

    def models_ready(self) -> None:
        """Called (on the event loop) once every model is loaded and warm."""
        self._loaded = True
        self._announce()

    def _announce(self) -> None:
        if not (self._listening and self._loaded):
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        grpc_port = self.runtime.grpc_port
        log.info(
            "ready: serving models %s on http://%s:%d (%s)",
            sorted(self.runtime.registry.models),
            f"[{host}]" if ":" in host else host,
            port,
            "gRPC off" if grpc_port is None else f"gRPC {grpc_port}",
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.runtime.draining:
            grace_s = self.runtime.config.server.drain_grace_s
            log.info("signal %d: draining in-flight requests (up to %g s)", sig, grace_s)
            self.lifecycle.begin_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, minus its re-raising of the signal once stopped: a drained
        SIGTERM is a clean exit (status 0), not death by the signal (-15, 143 in a shell)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
