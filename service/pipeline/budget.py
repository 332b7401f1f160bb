"""Process-wide admission budgets: units (decoded pixels, body bytes) held by requests at once.

A request reserves what it will hold before holding it and gives it back when done. Nothing
waits: a reservation that can never fit is 413, one that does not fit now is 503 with
``Retry-After``, so a burst of large uploads is refused instead of growing the process past its
memory limit.
"""

from __future__ import annotations

import threading
from types import TracebackType

from service.errors import QueueFull, TooLarge


class Reservation:
    """Units held from ``Budget.reserve`` until ``release`` (or the ``with`` block's end), exactly once."""

    __slots__ = ("_budget", "units")

    def __init__(self, budget: Budget, units: int) -> None:
        self._budget: Budget | None = budget
        self.units = units

    def release(self) -> None:
        """Gives the units back; later calls do nothing (safe from ``finally`` and ``__exit__``)."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self.units)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()  # also on exceptions and on asyncio cancellation


class Budget:
    """``capacity`` units shared by every request; ``reserve`` never blocks.

    A lock guards the counter although the event loop is single-threaded: a reservation may
    then also be released from a worker or replica thread. The lock is held only for an add.
    """

    def __init__(self, capacity: int, *, unit: str, retry_after_s: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"a budget needs a positive capacity, got {capacity}")
        self.capacity = capacity
        self.unit = unit  # "pixels", "bytes": named in the error messages
        self.retry_after_s = retry_after_s
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        return self._in_use

    def reserve(self, units: int) -> Reservation:
        """Holds ``units`` now, or raises: ``TooLarge`` above capacity, ``QueueFull`` when exhausted."""
        if units < 0:
            raise ValueError(f"cannot reserve a negative amount ({units})")
        if units > self.capacity:
            raise TooLarge(
                f"the request needs {units} {self.unit} at once; this server can hold at most "
                f"{self.capacity}: send smaller or fewer images"
            )
        with self._lock:
            free = self.capacity - self._in_use
            if units > free:
                raise QueueFull(
                    f"the server is busy: requests in flight hold {self._in_use} of {self.capacity} "
                    f"{self.unit}; retry after {self.retry_after_s} s",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self._in_use += units
        return Reservation(self, units)

    def _give_back(self, units: int) -> None:
        with self._lock:
            self._in_use -= units
