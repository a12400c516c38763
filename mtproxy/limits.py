"""Overload protection: a cap on requests served at once, with a bounded FIFO queue in front.

Beyond the cap a request waits for a slot, at most ``limits.queue_timeout`` seconds and behind at
most ``limits.max_queue`` others; otherwise it gets 429 with ``Retry-After``. Memory stays
bounded: the queue holds one future per waiting request.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import ProxyError


class Overloaded(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Waiters:
    """A bounded FIFO of requests waiting for a slot to free up."""

    def __init__(self, max_queue: int, timeout: float) -> None:
        self.max_queue = max_queue
        self.timeout = timeout
        self._queue: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def configure(self, max_queue: int, timeout: float) -> None:
        """A reloaded config's limits; requests already waiting stay in the queue."""
        self.max_queue = max_queue
        self.timeout = timeout

    async def wait(self, what: str) -> None:
        """Wait until ``wake`` hands this request a turn; 429 when the queue is full or slow."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"Too many requests waiting for {what}; try again shortly.")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        try:
            async with asyncio.timeout(self.timeout):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                self.wake()  # woken just as time ran out: pass the turn on
            raise Overloaded(f"No free slot on {what} within {self.timeout:g} s; try again shortly.",
                             retry_after=max(1, int(self.timeout))) from None
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self._queue.remove(fut)
            except ValueError:
                pass

    def wake(self) -> bool:
        """Hand the turn to the longest-waiting request; False when nobody waits."""
        while self._queue:
            fut = self._queue.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        while self.wake():
            pass


class Gate:
    """At most ``cap`` holders at once (0: no cap); the rest queue in ``Waiters``."""

    def __init__(self, cap: int, max_queue: int, timeout: float) -> None:
        self.cap = cap
        self.in_use = 0
        self.waiters = Waiters(max_queue, timeout)

    def configure(self, cap: int, max_queue: int, timeout: float) -> None:
        """A reloaded config's limits: holders keep their slots, waiters their place; as many
        waiters as a raised cap has room for are woken."""
        self.cap = cap
        self.waiters.configure(max_queue, timeout)
        room = len(self.waiters) if cap == 0 else cap - self.in_use
        while room > 0 and self.waiters.wake():
            room -= 1

    def try_acquire(self) -> bool:
        """A slot at once if one is free: ``acquire`` without a coroutine on the common path."""
        if self.cap == 0 or self.in_use < self.cap:
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        while not self.try_acquire():
            await self.waiters.wait("the proxy")

    def release(self) -> None:
        self.in_use -= 1
        if self.cap and self.in_use < self.cap:
            self.waiters.wake()
