"""Waits on a condition with a timeout, for tests that need something to have happened first.

A test that sleeps "long enough" for a request to be queued or a reload to land is slow when
the machine is idle and flaky when it is loaded; these poll the very thing instead and fail
naming what they waited for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = POLL_S) -> None:
    """Polls ``condition`` until it holds; fails the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(poll_s)


async def await_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str, poll_s: float = POLL_S
) -> None:
    """``wait_until`` for the event loop: ``condition`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(poll_s)


def wait_event(event: threading.Event, timeout_s: float, what: str) -> None:
    """Waits for ``event`` to be set; fails the test naming ``what`` after ``timeout_s``."""
    if not event.wait(timeout_s):
        raise AssertionError(f"not within {timeout_s} s: {what}")


async def await_event(event: asyncio.Event, timeout_s: float, what: str) -> None:
    """Waits for ``event`` to be set; fails the test naming ``what`` after ``timeout_s``."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None
