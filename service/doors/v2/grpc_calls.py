"""What every call on the gRPC port shares: ending it by the error table (``abort``), its
access line (``finish``), and ``UnaryCalls``, the interceptor that serves every unary RPC: its
one message received within the body budget (``grpc_intake``) and its access line written,
refusals included. Triton's streaming RPC writes a line per request itself (``grpc_service``).
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2

from service.doors.v2.grpc_intake import MessageIntake
from service.errors import QueueFull, ServeError
from service.ops.access import Access, RequestIds, note_status

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def abort(
    context: grpc.aio.ServicerContext, error: ServeError, code: grpc.StatusCode | None = None
) -> NoReturn:
    """Ends the call with the error's own row of the error table (code, and status for the log),
    or with ``code`` where gRPC has a better one than the table's."""
    note_status(error.status)
    await context.abort(code or grpc.StatusCode[error.grpc_code], error.message)
    raise AssertionError("abort() raises")  # pragma: no cover


# The HTTP status of the codes no domain error answers with, for access lines (an abort notes
# its error's own status first).
_HTTP_EQUIVALENT = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


class UnaryCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every unary call (every RPC but Triton's streaming one): its message received within
    the body budget (``grpc_intake``), and its access line, refusals included."""

    def __init__(self, intake: MessageIntake) -> None:
        self.intake = intake
        self.ids = RequestIds()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        # stream-unary, the same on the wire: grpc does not read the message before it is asked
        return grpc.stream_unary_rpc_method_handler(
            self._logged(handler.unary_unary, handler.request_deserializer, details),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    def _logged(
        self, behaviour: Callable[..., Any], parse: Callable[[bytes], Any], details: grpc.HandlerCallDetails
    ) -> Callable[..., Any]:
        path: str = details.method
        method = path.rsplit("/", 1)[-1]
        kind = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)  # FromString's class
        kind_name = getattr(kind, "full_name", "protobuf")
        queued = not path.startswith(f"/{HEALTH_SERVICE}/")  # a probe never waits behind large messages
        given = next(
            (value for key, value in details.invocation_metadata or () if key == "x-request-id"), None
        )

        async def logged(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            peer = context.peer()
            access = Access("grpc", method, path, peer.partition(":")[2] or peer, self.ids.choose(given))
            access.begin()
            try:
                response = await self._answer(requests, context, behaviour, parse, kind_name, queued)
            except asyncio.CancelledError as cancelled:  # the client cancelled, or its deadline passed
                finish(access, grpc.StatusCode.CANCELLED)
                _forget_locals(cancelled)
                raise
            except BaseException as ended:  # an abort (its code is set) or a bug (UNKNOWN)
                finish(access, context.code() or grpc.StatusCode.UNKNOWN)
                _forget_locals(ended)
                raise
            finish(access, context.code() or grpc.StatusCode.OK)
            return response

        return logged

    async def _answer(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        behaviour: Callable[..., Any],
        parse: Callable[[bytes], Any],
        kind: str,
        queued: bool,
    ) -> Any:
        try:
            async with self.intake.message(requests, parse, kind, queued=queued) as request:
                answer = behaviour(request, context)
                return await answer if inspect.isawaitable(answer) else answer
        except QueueFull as busy:  # gRPC's code for a quota used up: the body budget
            await abort(context, busy, grpc.StatusCode.RESOURCE_EXHAUSTED)
        except ServeError as error:  # the message: missing, malformed, too slow
            await abort(context, error)


def _forget_locals(error: BaseException) -> None:
    """Clears the locals of the finished frames in the tracebacks of ``error`` and of the errors
    it was raised while handling: grpc keeps an aborted call's exception in a reference cycle,
    whose frames held the request message (19 MB each in a burst) until the next full garbage
    collection, which a served process rarely runs."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        traceback.clear_frames(link.__traceback__)
        link = link.__context__


def finish(access: Access, code: grpc.StatusCode) -> None:
    access.code = code.name
    if access.status is None or code in _HTTP_EQUIVALENT:
        access.status = _HTTP_EQUIVALENT.get(code, 500)
    access.finish()
