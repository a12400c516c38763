"""The soak's traffic with watchers beside it, and its samples of the proxy meanwhile (both
scenarios): one every few seconds, a log line for each; a sample that fails (its scrape of
/metrics, mostly) is counted and logged, and the next one is taken as planned."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from bench.soak.report import log
from bench.soak.traffic import Tally, Traffic
from bench.soak.watch import Sample


async def watched(traffic: Traffic, concurrency: int, seconds: float,
                  watchers: list[Coroutine[Any, Any, Any]]) -> int:
    """``traffic`` run by ``concurrency`` clients for ``seconds``, the ``watchers`` (tasks started
    in that order) beside it until it ends; the workers that had to be cancelled."""
    tasks = [asyncio.create_task(w) for w in watchers]
    try:
        return await traffic.run(concurrency, seconds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Sampler:
    """``samples`` taken and ``failures`` (samples that failed) for one soak of ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.every = min(15.0, max(5.0, seconds / 6))  # 15 s; 5-10 s in short runs
        self.samples: list[Sample] = []
        self.failures = 0

    async def loop(self, take: Callable[[], Awaitable[tuple[Sample, str]]], tally: Tally) -> None:
        """Until cancelled: ``take()`` (a sample, and what to log after the traffic's outcomes so
        far) every ``every`` s, the first one interval in: at rest was sampled already, and a
        scrape right as the clients start would pile onto their burst."""
        while True:
            await asyncio.sleep(self.every)
            try:
                s, more = await take()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failures += 1
                log(f"  sampling failed: {type(exc).__name__}: {exc}")
                continue
            self.samples.append(s)
            cats = tally.by_category()
            log(f"  {s.t:4.0f} s: {s.requests:,} requests ({', '.join(f'{k} {v}' for k, v in cats.items())}); {more}")
