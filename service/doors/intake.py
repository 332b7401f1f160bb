"""From an HTTP request to the raw image blobs and parameters of a prediction.

The body is read as a stream and refused as soon as it passes the byte limit, so a 200 MB
upload costs at most the limit in memory; a compressed body is inflated as it streams, within
the same limit. Multipart bodies are split with Starlette's parser,
bounded in parts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from urllib.parse import parse_qsl

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.doors.encoding import inflater_for
from service.doors.http_protocol import CONNECTION_WATCH
from service.errors import (
    BadImage,
    ClientGone,
    InvalidParameter,
    TooLarge,
    UnsupportedMediaType,
)
from service.pipeline.call import Departure

MAX_TOP_K = 1000
JOIN_ON_LOOP_BYTES = 1 << 20  # bodies larger than this are joined off the event loop
CONTROL_BODY_LIMIT = 64 * 1024  # a reload or load body names one path
IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/bmp, image/gif, image/tiff"


async def read_body(request: Request, limit: int, hold: Callable[[int], None]) -> bytes:
    """The whole body, inflated if it is sent compressed (``service.doors.encoding``), or
    ``TooLarge`` as soon as it passes ``limit`` bytes, sent or inflated (the caller bounds the
    time: a client trickling bytes would hold a connection and memory).

    Its bytes are reserved with ``hold`` (``Call.hold_body``: the process-wide budget) before
    they are held: a declared length at once, a chunked body chunk by chunk, a compressed one
    as each step of it is inflated."""
    inflater = inflater_for(request.headers.get("content-encoding"), limit)
    declared = _declared_length(request, limit)
    if declared is not None and inflater is None:
        hold(declared)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:  # the ASGI messages themselves: Starlette's stream() adds a generator per request
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected during the upload")
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the limit of {limit} bytes")
        if inflater is not None:
            for piece in inflater.inflate(chunk):
                hold(len(piece))
                chunks.append(piece)
            continue
        if declared is None and chunk:
            hold(len(chunk))
        chunks.append(chunk)
    if inflater is not None:
        inflater.finish()
    if len(chunks) == 1:
        return chunks[0]
    if (size if inflater is None else inflater.size) < JOIN_ON_LOOP_BYTES:
        return b"".join(chunks)
    # megabytes copied (and their pages first touched) take tens of milliseconds on a loaded
    # machine; join lets go of the GIL while it copies, so a worker thread costs the loop nothing
    return await asyncio.to_thread(b"".join, chunks)


async def read_control_body(request: Request) -> bytes:
    """The small JSON body of an admin or repository route, within ``CONTROL_BODY_LIMIT``.
    Not charged to the body budget: bounded this far below it, and some of these routes are
    open, so a client without a token can send it too."""
    return await read_body(request, CONTROL_BODY_LIMIT, _uncharged)


def _uncharged(size: int) -> None:
    """``read_body``'s ``hold`` for bodies no budget counts."""


def _declared_length(request: Request, limit: int) -> int | None:
    """``Content-Length`` as a number within ``limit`` (None: not declared, a chunked body)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):  # "²".isdigit(), yet int("²") fails
        raise BadImage(f"Content-Length {declared!r} is not a number")
    if int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    return int(declared)


async def image_blobs(request: Request, body: bytes, *, max_images: int) -> list[bytes]:
    """The images of a request, in order: the raw body, or every multipart part named 'file'."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        if not body:
            raise BadImage("the body is empty: send the image bytes, or multipart 'file' parts")
        return [body]
    if media_type == "multipart/form-data":
        return await _multipart_files(request.headers, body, max_images)
    shown = media_type or "no Content-Type"
    raise UnsupportedMediaType(
        f"{shown} is not accepted: send one image with Content-Type {IMAGE_TYPES}, "
        "or multipart/form-data with one or more parts named 'file'"
    )


async def _multipart_files(headers: Headers, body: bytes, max_images: int) -> list[bytes]:
    parser = MultiPartParser(headers, _single_chunk(body), max_files=max_images, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise TooLarge(f"too many parts: at most {max_images} images per request") from None
        if "Too many fields" in exc.message:
            raise TooLarge("too many text fields in the multipart body; send only 'file' parts") from None
        raise BadImage(f"the multipart body does not parse: {exc.message}") from None
    try:
        blobs = []
        for part in form.getlist("file"):
            if not isinstance(part, UploadFile):
                raise BadImage("the 'file' parts must be files (filename set), not text fields")
            blobs.append(await part.read())
    finally:
        await form.close()
    if not blobs:
        raise BadImage("the multipart body has no part named 'file'")
    return blobs


async def _single_chunk(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def query_values(request: Request) -> dict[str, str]:
    """The query string's parameters, the last value of a repeated one (as Starlette's
    ``query_params.get``), without building its multi-dict: this runs for every request."""
    return dict(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True))


def parse_top_k(raw: str | None, default: int = 5) -> int:
    """``top_k`` as a positive integer; a bad value is a 422 that says what is allowed."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"top_k must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise InvalidParameter(f"top_k must be between 1 and {MAX_TOP_K}, got {value}")
    return value


def departure_of(request: Request) -> Departure:
    """How the request's client is seen to leave: its connection's watch where the server has
    one (model-serve's own protocol), else a task that waits on ``receive()`` while watched."""
    watch: Departure | None = (request.scope.get("extensions") or {}).get(CONNECTION_WATCH)
    return watch if watch is not None else _ReceiveWatch(request)


class _ReceiveWatch:
    """A ``Departure`` for servers without a connection watch: ``http.disconnect`` on receive."""

    def __init__(self, request: Request) -> None:
        self.lost = False
        self._request = request
        self._callbacks: set[Callable[[], None]] = set()
        self._waiter: asyncio.Task[None] | None = None

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.add(callback)
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_task(self._wait())

    def discard(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)
        if not self._callbacks and self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None

    async def _wait(self) -> None:
        message = await self._request.receive()
        if message["type"] == "http.disconnect":
            self.lost = True
            for callback in list(self._callbacks):
                callback()
