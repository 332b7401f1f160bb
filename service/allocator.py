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
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed on 64-bit (half its heap size)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_tensor_memory() -> bool:
    """Fixes glibc's mmap and trim thresholds; False (and nothing changed) without glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = bool(mapped and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not done:
        log.warning("could not fix malloc's thresholds; forwards may fault their memory in anew")
    return done
