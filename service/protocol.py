"""uvicorn's httptools protocol with a bound on the request head (request line + headers).

httptools buffers a header until it ends, with no limit: one client could make the server
hold gigabytes (64 MB measured on one connection, and no answer). A head that spans more
than ``max_head_bytes`` of received data without ending is answered 431 and closed.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_BODY = b'{"error": {"code": "headers_too_large", "message": "the request headers are too large"}}'


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the bytes of a request head that has not ended yet; refuses past the bound."""

    max_head_bytes = 64 * 1024
    _head_bytes = 0
    _in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # only data after which the head still has not ended counts: a first read that
            # holds a whole head plus a large body is fine
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.transport.write(_TOO_LARGE % (len(_BODY), _BODY))
                self.transport.close()


def bounded_protocol(max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this server's bound."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"max_head_bytes": max_head_bytes})
