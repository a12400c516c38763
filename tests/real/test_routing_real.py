"""Routing by measured speed (``routing.balance: fastest``) between two real llama-servers of
different speeds: the faster one gets most of the requests.

A slower llama-server: the servers already run one thread each (conftest.py: ``-t 1``), and with
one or two threads the speed on this busy 2-core machine varies more from request to request than
between thread counts (measured, SmolLM2-135M, 16 tokens, three rounds: ``-t 1`` 11.1 / 17.4 /
24.7 tokens/s, ``-t 2`` 23.5 / 30.6 / 20.9). So the slow one gets a fifth of the CPU time instead
of fewer threads: the test stops and continues its process (SIGSTOP / SIGCONT, 10 ms of every
50), which makes it several times slower whatever else the machine runs (in one run: TTFT 1.94 s
against 0.50 s, decode 10.8 against 15.0 tokens/s, the fast one serving two streams at a time;
19 of the 20 requests went to the fast one). Small on purpose:
20 requests of 16 tokens, two at a time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import MODEL, RealServer, _llama_server
from .helpers import MAX_TOKENS, STORY, backend, get_json, start_proxy

REQUESTS = 20
CONCURRENCY = 2
RUN, STOP = 0.01, 0.04  # seconds the slow server runs, then stays stopped


class Throttle:
    """Lets a process run ``run`` seconds of every ``run + stop``, until closed."""

    def __init__(self, pid: int, run: float, stop: float) -> None:
        self.pid, self.run, self.stop = pid, run, stop
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="throttle", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            os.kill(self.pid, signal.SIGSTOP)
            self.done.wait(self.stop)
            os.kill(self.pid, signal.SIGCONT)
            self.done.wait(self.run)

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture
def slow_llama_server(llama_server_bin: Path, gguf: Path, real_logs: Path) -> Iterator[RealServer]:
    """A second llama-server like ``llama_server``, throttled to a fifth of the CPU time."""
    servers = _llama_server("llama-server-slow", llama_server_bin, gguf, real_logs)
    server = next(servers)
    assert server.proc is not None
    throttle = Throttle(server.proc.pid, RUN, STOP)
    try:
        yield server
    finally:
        throttle.close()
        next(servers, None)  # stops it


async def test_fastest_sends_most_requests_to_the_faster_llama_server(llama_server, slow_llama_server,
                                                                       proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("fast", "llamacpp", llama_server.url),
                              backend("slow", "llamacpp", slow_llama_server.url), routing={"balance": "fastest"})
    chosen: list[str] = []
    todo = iter(range(REQUESTS))

    async def worker(http: aiohttp.ClientSession) -> None:
        for i in todo:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"{i}. {STORY}"}],
                    "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
            async with http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
                chosen.append(resp.headers["x-mtproxy-backend"])

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    assert chosen.count("fast") >= 0.7 * REQUESTS, chosen

    status = await get_json(proxy.url + "/mtproxy/backends")
    speeds = {b["name"]: b["models"][0]["speed"] for b in status["backends"]}
    assert speeds["fast"]["fresh"] and speeds["slow"]["observations"] >= 1
    # the router's own estimates rank them as the servers are (same run, compared as a ratio):
    # the expected time of a request alone on each
    fast, slow = (speeds[n]["ttft_seconds"] + MAX_TOKENS * speeds[n]["seconds_per_token"] for n in ("fast", "slow"))
    assert fast < slow, speeds
