"""Asyncio load generator: fixed concurrency, bounded by a request count and by time.

    python -m bench.loadgen --url http://127.0.0.1:P/v1/chat/completions [--stream] [--tokens 16]
        [--rate 0] [--concurrency 16] [--requests 2000] [--seconds 10]

``concurrency`` workers (their starts spread over ``ramp`` seconds) each send one request after
another until ``requests`` have been started or ``seconds`` have passed; requests still running
``grace`` seconds later are cancelled and counted as errors. Reports requests/s, latency
p50/p90/p99 (request sent → last byte), TTFT p50/p99 for streams (request sent → first chunk
carrying content) and errors (a status other than 200, a failure, an ``event: error`` in a
stream, or a stream not ending with [DONE]).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

if __package__ in (None, ""):  # `python bench/loadgen.py`
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import percentile, run_loop

HEADERS = {"Content-Type": "application/json"}
DONE = b"data: [DONE]\n\n"
MESSAGE_STOP = b'data: {"type":"message_stop"}\n\n'  # the end of an Anthropic Messages stream
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "messages": "/v1/messages",
         "responses": "/v1/responses"}
# the end of an OpenAI Responses stream, which has no [DONE] (incomplete: it reached max_output_tokens)
RESPONSE_ENDS = (b"event: response.completed\n", b"event: response.incomplete\n")
CONTENT_MARKERS = (b'"content":"', b'"text":"', b'"delta":"')


@dataclass(frozen=True, slots=True)
class LoadSpec:
    urls: tuple[str, ...]  # round robin (the direct path to several backends)
    body: bytes
    stream: bool
    concurrency: int
    requests: int  # start at most this many
    seconds: float  # start none after this
    grace: float = 30.0  # cancel what still runs this long after `seconds`
    ramp: float = 0.0  # worker i starts i * ramp / concurrency seconds late (no thundering herd)
    # After a stream's first content chunk, pause this long between reads, taking what arrived
    # meanwhile in one go: the proxy still relays every chunk on its own, but the client wakes up
    # a few times less, leaving the (shared) CPU to what is measured. Delays the last-byte time
    # by at most this much; TTFT is unaffected.
    read_pause: float = 0.0
    end: bytes = DONE  # what a stream ends with (MESSAGE_STOP for /v1/messages)


@dataclass(slots=True)
class LoadResult:
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    error_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)

    def ttft(self, q: float) -> float:
        return percentile(sorted(self.ttfts), q)

    def summary(self) -> dict[str, object]:
        ms = 1000.0
        return {
            "ok": self.ok, "errors": self.errors, "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "latency_ms": {f"p{q}": round(self.latency(q) * ms, 3) for q in (50, 90, 99)},
            "ttft_ms": {f"p{q}": round(self.ttft(q) * ms, 3) for q in (50, 99)} if self.ttfts else None,
            "error_kinds": dict(self.error_kinds),
        }


def request_body(kind: str, tokens: int, *, stream: bool, rate: float = 0.0, tpc: int = 1,
                 client_usage: bool = False, model: str = "bench-model") -> bytes:
    """A small OpenAI request; ``bench_rate`` / ``bench_tpc`` steer the fake runtime. ``messages``:
    the same request in Anthropic's Messages API (translated by the proxy, which passes on no
    field of its own: the fake answers at once, one token per chunk)."""
    if kind == "messages":
        return orjson.dumps({"model": model, "max_tokens": tokens, "stream": stream, "temperature": 0,
                             "messages": [{"role": "user", "content": "Write a short story about a fox."}]})
    body: dict[str, object] = {"model": model, "max_tokens": tokens, "stream": stream,
                               "temperature": 0, "bench_rate": rate, "bench_tpc": tpc}
    if kind == "responses":  # OpenAI Responses: its own names for the prompt and the length
        body = {"model": model, "input": "Write a short story about a fox.", "max_output_tokens": tokens,
                "stream": stream, "temperature": 0}
    elif kind == "chat":
        body["messages"] = [{"role": "user", "content": "Write a short story about a fox."}]
    else:
        body["prompt"] = "Write a short story about a fox."
    if stream and client_usage:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


class StreamError(Exception):
    pass


def _has_content(buf: bytes) -> bool:
    for marker in CONTENT_MARKERS:
        i = buf.find(marker)
        while i >= 0:
            j = i + len(marker)
            if j < len(buf) and buf[j] != 0x22:  # a non-empty string
                return True
            i = buf.find(marker, j)
    return False


async def one_request(session: aiohttp.ClientSession, url: str, spec: LoadSpec, result: LoadResult) -> None:
    """One request, timed with perf_counter (uvloop's loop.time() ticks in whole milliseconds)."""
    clock = time.perf_counter
    t0 = clock()
    async with session.post(url, data=spec.body, headers=HEADERS) as resp:
        if resp.status != 200:
            await resp.read()
            raise StreamError(f"HTTP {resp.status}")
        if not spec.stream:
            await resp.read()
            result.latencies.append(clock() - t0)
            return
        ttft: float | None = None
        pause = spec.read_pause
        carry = prev = last = b""
        completed = False
        async for data in resp.content.iter_any():
            if not completed and b"event: response." in last[-32:] + data:
                completed = any(end in last[-32:] + data for end in RESPONSE_ENDS)
            if ttft is None:
                if _has_content(carry + data):
                    ttft = clock() - t0
                else:
                    carry = data[-16:]
            if b"event: error" in data:
                raise StreamError("error event in stream")
            prev, last = last, data
            if pause and ttft is not None:
                await asyncio.sleep(pause)
        end = clock()
    end_marker = spec.end
    if not (prev[-len(end_marker):] + last).endswith(end_marker) and not completed:
        raise StreamError("stream did not end with [DONE]" if end_marker is DONE else "stream did not end properly")
    result.latencies.append(end - t0)
    if ttft is not None:
        result.ttfts.append(ttft)


async def run_load(session: aiohttp.ClientSession, spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    started = 0
    t_start = time.perf_counter()
    stop_at = t_start + spec.seconds

    async def worker(delay: float) -> None:
        nonlocal started
        if delay:
            await asyncio.sleep(delay)
        while started < spec.requests and time.perf_counter() < stop_at:
            url = spec.urls[started % len(spec.urls)]
            started += 1
            try:
                await one_request(session, url, spec, result)
                result.ok += 1
            except asyncio.CancelledError:
                result.errors += 1
                result.error_kinds["cancelled at the time limit"] += 1
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, StreamError) as exc:
                result.errors += 1
                result.error_kinds[str(exc) if isinstance(exc, StreamError) else type(exc).__name__] += 1

    tasks = [asyncio.create_task(worker(i * spec.ramp / spec.concurrency)) for i in range(spec.concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=spec.seconds + spec.grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    result.elapsed = time.perf_counter() - t_start
    return result


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        auto_decompress=False,
    )


async def _main(args: argparse.Namespace) -> LoadResult:
    kind = "completions" if args.url.rstrip("/").endswith("/v1/completions") else "chat"
    spec = LoadSpec((args.url,), request_body(kind, args.tokens, stream=args.stream, rate=args.rate, tpc=args.tpc,
                                           client_usage=args.client_usage, model=args.model),
                    args.stream, args.concurrency, args.requests, args.seconds, args.grace)
    async with client_session() as session:
        return await run_load(session, spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="must be on 127.0.0.1")
    p.add_argument("--model", default="bench-model")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--client-usage", action="store_true", help="ask for the usage chunk")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0, help="fake runtime pacing, tokens/s per stream")
    p.add_argument("--tpc", type=int, default=1, help="tokens per chunk")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--grace", type=float, default=30.0)
    args = p.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        p.error("--url must point at 127.0.0.1")
    print(orjson.dumps(run_loop(_main(args)).summary(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
