"""Upstream timeouts without a timer per request.

A request's wait upstream runs inside ``with watchdog.watch(limit, last):`` (``last`` on the
clock of the request's timestamps, ``time.perf_counter``); one shared tick, armed only while
something is watched, cancels the task of every watch silent for longer than its limit, and the
block turns that cancellation into ``TimeoutError`` (as ``asyncio.timeout`` does, with the same
bookkeeping of cancellations from elsewhere). A relayed stream only stamps ``last`` on each read.

Two timers per stream (``asyncio.timeout(first_token)``, then one re-armed for the idle limit)
cost ~6 % of the proxy's instructions for a 16-token stream (callgrind, bench); a set insert and
removal cost next to nothing, and a plain ``with`` less than ``async with asyncio.timeout()``. A
timeout fires at most one tick late: the tick is a twentieth of the shortest limit (5 ms to 1 s).
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from types import TracebackType


class Watch:
    """One watched wait: it times out once ``limit`` seconds pass after ``last``."""

    __slots__ = ("_dog", "_task", "_cancelling", "limit", "last", "expired")

    def __init__(self, dog: Watchdog, task: asyncio.Task, limit: float, last: float) -> None:
        self._dog = dog
        self._task = task
        self._cancelling = task.cancelling()
        self.limit = limit
        self.last = last
        self.expired = False

    def __enter__(self) -> Watch:
        dog = self._dog
        dog._watches.add(self)
        if dog._handle is None:
            dog._arm()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._dog._watches.discard(self)
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc  # our cancellation, and no other one meanwhile

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()


class Watchdog:
    MIN_TICK = 0.005
    MAX_TICK = 1.0

    def __init__(self) -> None:
        self._watches: set[Watch] = set()
        self._handle: asyncio.TimerHandle | None = None
        self.tick = self.MAX_TICK

    @property
    def ticking(self) -> bool:
        """Whether the shared tick is armed (only while something is watched)."""
        return self._handle is not None

    def set_shortest(self, limit: float) -> None:
        """The shortest limit any watch will have (a reloaded config's)."""
        self.tick = min(self.MAX_TICK, max(self.MIN_TICK, limit / 20))

    def watch(self, limit: float, last: float) -> Watch:
        """A context manager watching the current task's wait from ``last`` on."""
        task = asyncio.current_task()
        assert task is not None, "watch() runs in a task"
        return Watch(self, task, limit, last)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self.tick, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = perf_counter()
        for w in [w for w in self._watches if now - w.last >= w.limit]:
            self._watches.discard(w)
            w._expire()
        self._handle = loop.call_at(loop.time() + self.tick, self._check, loop) if self._watches else None
