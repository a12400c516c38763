"""The shared tick behind upstream timeouts (mtproxy/watchdog.py); the proxy's own timeout
behaviour is tested end to end in test_proxy.py."""

import asyncio
from time import perf_counter

import pytest

from mtproxy.watchdog import Watchdog


async def test_a_silent_wait_times_out_and_a_stamped_one_does_not():
    dog = Watchdog()
    dog.set_shortest(0.5)  # tick 25 ms

    async def stamped() -> str:
        with dog.watch(0.5, perf_counter()) as w:
            for _ in range(16):  # 0.8 s in all, a stamp every 0.05 s (fails on a 0.45 s stall)
                await asyncio.sleep(0.05)
                w.last = perf_counter()
            return "done"

    async def silent() -> str:
        with dog.watch(0.5, perf_counter()):
            await asyncio.sleep(30)
            return "not timed out"

    done = asyncio.create_task(stamped())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(silent(), 20)  # expires after ~0.5 s; 20 s: only if the tick is lost
    assert await done == "done"


async def test_the_tick_runs_only_while_something_is_watched():
    dog = Watchdog()
    dog.set_shortest(0.1)
    with dog.watch(60, perf_counter()):
        assert dog.ticking
    await asyncio.sleep(dog.tick * 3)
    assert not dog.ticking


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    dog = Watchdog()
    dog.set_shortest(0.1)

    async def waiting() -> None:
        with dog.watch(60, perf_counter()):
            await asyncio.sleep(30)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0.05)
    task.cancel()  # the client went away: not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_tick_is_a_twentieth_of_the_shortest_limit_within_bounds():
    dog = Watchdog()
    dog.set_shortest(2.0)
    assert dog.tick == pytest.approx(0.1)
    dog.set_shortest(0.01)
    assert dog.tick == Watchdog.MIN_TICK
    dog.set_shortest(600)
    assert dog.tick == Watchdog.MAX_TICK
