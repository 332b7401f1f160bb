"""glibc malloc settings for the serving process: tensor buffers reused, not faulted in anew.

By default glibc serves an allocation above its mmap threshold (128 KiB, raised by each larger
block freed) with a fresh ``mmap`` and gives heap memory above its trim threshold back to the
kernel. Which blocks happened to be freed first decides both, so one process reused its
forward's activations and the next faulted every page in again on every forward: resnet18 at
one client answered in 34 or 44 ms from one start to the next, the slow starts spending their
time in the kernel's page-fault path (``perf``). Fixed thresholds make every start the fast one
(34-37 ms in eight starts). The cost is memory kept for reuse: up to ``TRIM_THRESHOLD`` free at
the top of a heap, and blocks below ``MMAP_THRESHOLD`` (request bodies too) from the heaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed on 64-bit (half its heap size)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_tensor_memory() -> bool:
    """Fixes glibc's mmap and trim thresholds; False (and nothing changed) without glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = bool(mapped and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not done:
        log.warning("could not fix malloc's thresholds; forwards may fault their memory in anew")
    return done


def trim_heap() -> bool:
    """Gives the heaps' free pages back to the kernel (``malloc_trim(0)``), e.g. after a burst
    of large messages that the fixed thresholds keep; False without glibc. It walks every
    arena: call it off the event loop, after large blocks are freed, not per request."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(malloc_trim(0))


@functools.cache
def _glibc(function: str) -> Any:
    """One of glibc's malloc functions, or None where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt nor malloc_trim)
        return None
