"""``grpc.health.v1.Health`` on the gRPC port: the standard health check that gRPC load
balancers, Kubernetes' ``grpc`` probes and ``grpc_health_probe`` ask.

The service ``""`` is the whole server, as ``/readyz`` and ``ServerReady`` answer it; each
configured model is a service of its own name, as ``ModelReady`` answers it. Both are read from
the runtime at every ask, never cached: ``Check`` answers what readiness is now, and ``Watch``
re-reads it whenever the registry or the lifecycle says it may have changed (the registry's
readiness observer), so a stream hears NOT_SERVING as soon as a drain begins or a model is
unloaded, with no polling. grpcio-health-checking's own servicer is not used: it holds statuses
set from outside, which would be a second copy of readiness to keep in step, and its ``Watch``
forgets the other watchers of a service when one of them leaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.pipeline.runtime import Runtime

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def server_ready(runtime: Runtime) -> bool:
    """Every model warm and no drain begun: ``/readyz``'s 200, ``ServerReady``'s true."""
    return runtime.registry.ready and not runtime.draining


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Check and Watch of the server (``""``) and of each configured model (its name)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._closed = False
        runtime.registry.on_readiness(self.readiness_changed)

    def status(self, service: str) -> Any:
        """The service's status now; SERVICE_UNKNOWN for a name that is neither ``""`` nor a model."""
        runtime = self.runtime
        if service == "":
            return SERVING if server_ready(runtime) and not self._closed else NOT_SERVING
        if service not in runtime.config.models:
            return SERVICE_UNKNOWN
        served = runtime.registry.models.get(service)  # None until loading has begun
        ready = served is not None and served.ready and not served.unloaded
        return SERVING if ready and not runtime.draining and not self._closed else NOT_SERVING

    def readiness_changed(self) -> None:
        """Wakes every ``Watch`` stream to re-read its status (on the event loop)."""
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    def close(self) -> None:
        """Every status NOT_SERVING and every ``Watch`` stream ended, so that the server's stop
        does not wait out its grace period for streams that never end by themselves."""
        self._closed = True
        self.readiness_changed()

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, _unknown(self.runtime, request.service))
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The status now, then each change (as the protocol says: an unknown service is
        SERVICE_UNKNOWN, and the stream stays open in case it appears)."""
        sent = None
        while True:
            changed = self._changed  # taken before reading, so no change is missed
            status = self.status(request.service)
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            if self._closed:
                return
            await changed.wait()


def _unknown(runtime: Runtime, service: str) -> str:
    return (
        f"no health service named {service!r}: ask '' for the server or a model's name "
        f"({', '.join(sorted(runtime.config.models))})"
    )
