"""Request bodies sent compressed (``Content-Encoding: gzip`` or ``deflate``), inflated as
they arrive and bounded by their inflated size.

A body's limit guards memory, so it applies to what the body becomes, not to what crosses the
wire: a 10 MB zip bomb inflates to gigabytes. Each received chunk is inflated in steps of at
most ``STEP`` bytes (``zlib``'s ``max_length``), so the caller can charge each step to its
budget before the next one is made, and the limit is refused one step past it, never after
the whole bomb has been inflated.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from service.errors import BadRequest, TooLarge, UnsupportedMediaType

STEP = 1 << 20  # the most bytes inflated at once, on the event loop: about a millisecond
# "deflate" in HTTP is the zlib format (RFC 9110), as tritonclient sends it; gzip has its header
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = "gzip, deflate"


class Inflater:
    """One compressed body's inflation, refused with ``TooLarge`` past ``limit`` inflated bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.size = 0
        self._limit = limit
        self._zlib = zlib.decompressobj(_WINDOW_BITS[encoding])

    def inflate(self, chunk: bytes) -> Iterator[bytes]:
        """The inflated bytes of the next received ``chunk``, at most ``STEP`` at a time."""
        data = chunk
        while data:
            if self._zlib.eof:
                raise BadRequest(f"the {self.encoding} body has data after the end of its stream")
            try:
                piece = self._zlib.decompress(data, min(STEP, self._limit - self.size + 1))
            except zlib.error as exc:
                raise BadRequest(f"the body is not valid {self.encoding} data ({exc})") from None
            self.size += len(piece)
            if self.size > self._limit:
                raise TooLarge(f"the {self.encoding} body inflates past the limit of {self._limit} bytes")
            data = self._zlib.unconsumed_tail or self._zlib.unused_data
            yield piece

    def finish(self) -> None:
        """The body has ended: its compressed stream must have ended too."""
        if not self._zlib.eof:
            raise BadRequest(f"the {self.encoding} body is truncated: its stream does not end")


def inflater_for(content_encoding: str | None, limit: int) -> Inflater | None:
    """The inflater of a ``Content-Encoding`` (None: the body is sent as it is); an encoding
    this server cannot inflate is a 415 that names those it can."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _WINDOW_BITS:
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding!r} is not accepted: send the body as it is, "
            f"or compressed with one of {ACCEPTED}"
        )
    return Inflater(encoding, limit)
