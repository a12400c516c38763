"""A fake OpenAI runtime (vLLM-flavoured) that misbehaves on purpose, for the soak (bench/soak/run.py).

    python -m bench.soak.faulty_runtime [--ports 3] [--seed 0] [--stall 30]

Serves ``/health``, ``/version``, ``/metrics``, ``/v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` on ``--ports`` ports, one backend each (the server and the answers of
bench/fake_runtime.py, which it extends), and prints ``LISTENING <port> …``. It starts
well-behaved; ``POST /soak/start`` switches the faults on, ``POST /soak/stop`` off again. While
on, each completion request draws one fault:

- ``error_503``: HTTP 503 before the first byte;
- ``reset_before``: the connection reset (RST) before the first byte;
- ``stall_first``: silence before the first byte, ``--stall`` seconds (longer than any proxy timeout);
- ``stall_mid``: half the answer, then silence;
- ``reset_mid``: half the answer, then a reset;

and every so often one port "flaps": it answers 503 to everything, ``/health`` included, for a few
seconds. Otherwise the answer is normal: the body's ``max_tokens`` tokens, paced at ``bench_rate``
tokens/s (streams: the chunks due are written every 10 ms or more), after ``soak_first_delay``
seconds of silence.

Every completion request leaves a record: the request id (the body's ``user`` field), port, fault,
start, end, and how it ended: ``done``, ``fault`` (the fake cut it), ``closed`` (the peer closed
the connection first: aiohttp cancels the handler, ``handler_cancellation=True``) or ``expired``
(a stall nobody cut). Times are ``time.monotonic()``, CLOCK_MONOTONIC, the same clock as the soak's
on this machine. ``GET /soak/live``: completion requests being served now. ``GET /soak/records``:
the records, the counters, the moments this fake's event loop ran late (its close times are late
as much), and for every client connection (by its port) the time of the last request it carried:
a connection a proxy keeps in its pool carries its health probes now and then, a leaked one never
again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

if __package__ in (None, ""):  # `python bench/soak/faulty_runtime.py`
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from bench.common import LoopLag, run_loop
from bench.fake_runtime import SSE_HEADERS, FakeRuntime, Kind, Shape, as_asked, reset, stream_events, unary_body

FAULTS = ("error_503", "reset_before", "stall_first", "stall_mid", "reset_mid")
NONE = "none"
FLAP = "flap_503"
MIN_WRITE_GAP = 0.01  # seconds between two writes of a paced stream


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probability of each fault per completion request while faults are on."""

    error_503: float = 0.03
    reset_before: float = 0.02
    stall_first: float = 0.01
    stall_mid: float = 0.01
    reset_mid: float = 0.02
    flap_every: float = 45.0  # mean seconds between two flaps (of any port); the first comes within 15 s
    flap_seconds: tuple[float, float] = (3.0, 6.0)

    def draw(self, rng: random.Random) -> str:
        x = rng.random()
        for name in FAULTS:
            x -= getattr(self, name)
            if x < 0:
                return name
        return NONE


@dataclass(slots=True)
class Record:
    rid: str
    port: int
    fault: str
    stream: bool
    t_start: float
    t_fault: float | None = None  # when the fault began (a stall, a reset)
    t_end: float | None = None
    end: str = "done"

    def row(self) -> list[Any]:
        return [self.rid, self.port, self.fault, self.stream, self.t_start, self.t_fault, self.t_end, self.end]


@dataclass(slots=True)
class Faults:
    """What is switched on, the flaps going on, and the counters."""

    rates: FaultRates
    rng: random.Random
    on: bool = False
    flapping: dict[int, float] = field(default_factory=dict)  # port -> until (monotonic)
    injected: Counter[str] = field(default_factory=Counter)
    flaps: int = 0
    flap_seconds: float = 0.0
    flap_refusals: Counter[str] = field(default_factory=Counter)  # by route

    def flaps_now(self, port: int) -> bool:
        return self.flapping.get(port, 0.0) > time.monotonic()

    async def flap_loop(self, ports: list[int]) -> None:
        """From the moment the faults are switched on: a first flap within 15 s, then one every
        ``flap_every`` s on average (±50 %)."""
        await asyncio.sleep(self.rng.uniform(5.0, 15.0))
        while True:
            port = self.rng.choice(ports)
            seconds = self.rng.uniform(*self.rates.flap_seconds)
            if not self.flaps_now(port):
                self.flapping[port] = time.monotonic() + seconds
                self.flaps += 1
                self.flap_seconds += seconds
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.rates.flap_every)


def _port(request: web.Request, which: str = "sockname") -> int:
    """The local port (the backend this request came to) or the peer's port."""
    transport = request.transport
    address = transport.get_extra_info(which) if transport is not None else None
    return int(address[1]) if address else 0


class FaultyRuntime(FakeRuntime):
    """The fake runtime's server (its ports, ``/health``, ``/version``, ``/metrics``, ``/v1/models``)
    with faults drawn per completion request, flaps, and the soak's endpoints."""

    def __init__(self, faults: Faults, ports: int, model: str, stall: float) -> None:
        super().__init__("soak", as_asked([model], "0.0.0-soak"), ports=ports)
        self.faults = faults
        self.flapper: asyncio.Task[None] | None = None
        self.model = model
        self.stall = stall
        self.records: list[Record] = []
        self.live = 0  # completion handlers running now
        self.last_request: dict[int, float] = {}  # peer port -> time of its connection's last request
        self.lag = LoopLag()  # when this fake itself was late: its close times are late as much

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.flap_middleware])
        self.add_info_routes(app)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/soak/start", self.start_faults)
        app.router.add_post("/soak/stop", self.stop_faults)
        app.router.add_get("/soak/records", self.get_records)
        app.router.add_get("/soak/live", self.get_live)
        return app

    @web.middleware
    async def flap_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/soak/"):
            return await handler(request)
        self.last_request[_port(request, "peername")] = time.monotonic()
        if not self.faults.flaps_now(_port(request)):
            return await handler(request)
        self.faults.flap_refusals[request.path] += 1
        if request.method == "POST":
            body = await request.read()
            self.records.append(self._flap_record(request, body))
        return web.json_response({"error": {"message": "flapping", "type": "server_error"}}, status=503)

    def _flap_record(self, request: web.Request, body: bytes) -> Record:
        try:
            payload = orjson.loads(body)
            rid, stream = str(payload.get("user") or ""), bool(payload.get("stream"))
        except (orjson.JSONDecodeError, AttributeError):
            rid, stream = "", False
        now = time.monotonic()
        return Record(rid, _port(request), FLAP, stream, now, now, now, "fault")

    async def start_faults(self, request: web.Request) -> web.Response:
        self.faults.on = True
        if self.flapper is None:
            self.flapper = asyncio.create_task(self.faults.flap_loop(self.ports), name="flaps")
        return web.json_response({"faults": "on"})

    async def stop_faults(self, request: web.Request) -> web.Response:
        await self.stop_flapping()
        self.faults.on = False
        self.faults.flapping.clear()
        return web.json_response({"faults": "off"})

    async def stop_flapping(self) -> None:
        if self.flapper is not None:
            self.flapper.cancel()
            await asyncio.gather(self.flapper, return_exceptions=True)
            self.flapper = None

    async def get_live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": self.live})

    async def get_records(self, request: web.Request) -> web.Response:
        f = self.faults
        body = {"records": [r.row() for r in self.records], "live": self.live,
                "injected": dict(f.injected), "flaps": f.flaps, "flap_seconds": f.flap_seconds,
                "flap_refusals": dict(f.flap_refusals), "now": time.monotonic(),
                "last_request": self.last_request, "lags": self.lag.late}
        return web.Response(body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
                            content_type="application/json")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        kind: Kind = "chat" if request.path.endswith("/chat/completions") else "completions"
        rec = Record("", _port(request), NONE, False, time.monotonic())
        self.live += 1
        try:
            body = orjson.loads(await request.read())
            rec.rid, rec.stream = str(body.get("user") or ""), bool(body.get("stream"))
            if self.faults.on:
                rec.fault = self.faults.rates.draw(self.faults.rng)
            if rec.fault != NONE:
                self.faults.injected[rec.fault] += 1
            return await self._respond(request, kind, body, rec)
        except (asyncio.CancelledError, ConnectionError):
            if rec.t_end is None:  # the peer closed the connection before the fake was done
                rec.t_end, rec.end = time.monotonic(), "closed"
            raise
        finally:
            if rec.t_end is None:
                rec.t_end = time.monotonic()
            self.records.append(rec)
            self.live -= 1

    async def _respond(self, request: web.Request, kind: Kind, body: dict[str, Any], rec: Record) -> web.StreamResponse:
        fault = rec.fault
        if fault == "error_503":
            rec.t_fault = rec.t_end = time.monotonic()
            rec.end = "fault"
            return web.json_response({"error": {"message": "injected 503", "type": "server_error"}}, status=503)
        if fault == "reset_before":
            return self._cut(request, web.Response(), rec)
        if fault == "stall_first":
            await self._stall(rec)
            return web.Response()
        tokens = max(1, int(body.get("max_tokens") or 16))
        rate = float(body.get("bench_rate") or 0.0)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        shape = Shape(kind, str(body.get("model") or self.model), tokens, 1, usage and rec.stream)
        delay = float(body.get("soak_first_delay") or 0.0)
        if rec.stream:
            return await self._stream(request, shape, rate, delay, rec)
        return await self._unary(request, shape, rate, delay, rec)

    def _cut(self, request: web.Request, resp: web.StreamResponse, rec: Record) -> web.StreamResponse:
        rec.t_fault = rec.t_end = time.monotonic()
        rec.end = "fault"
        reset(request)
        return resp  # aiohttp's write to the closed transport fails quietly

    async def _stall(self, rec: Record) -> None:
        """Silence until the proxy gives up and closes (the handler is cancelled), or ``stall`` s."""
        rec.t_fault = time.monotonic()
        await asyncio.sleep(self.stall)
        rec.t_end, rec.end = time.monotonic(), "expired"

    async def _unary(self, request: web.Request, shape: Shape, rate: float, delay: float,
                     rec: Record) -> web.StreamResponse:
        await asyncio.sleep(delay + (shape.tokens / rate if rate > 0 else 0.0))
        data = unary_body(shape)
        if rec.fault not in ("stall_mid", "reset_mid"):
            return web.Response(body=data, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        if rec.fault == "reset_mid":
            await asyncio.sleep(MIN_WRITE_GAP)  # let the half go out first
            return self._cut(request, resp, rec)
        await self._stall(rec)
        return resp

    async def _stream(self, request: web.Request, shape: Shape, rate: float, delay: float,
                      rec: Record) -> web.StreamResponse:
        head, chunks, tail = stream_events(shape)
        events = [*head, *chunks]
        cut = len(events) // 2 if rec.fault in ("stall_mid", "reset_mid") else len(events)
        interval = 1.0 / rate if rate > 0 else 0.0
        await asyncio.sleep(delay)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        t0 = time.monotonic()
        sent = 0
        while sent < cut:
            due = cut if interval == 0 else min(cut, max(sent + 1, int((time.monotonic() - t0) / interval) + 1))
            await resp.write(b"".join(events[sent:due]))
            sent = due
            if sent < cut:
                await asyncio.sleep(max(MIN_WRITE_GAP, t0 + sent * interval - time.monotonic()))
        if rec.fault == "reset_mid":
            await asyncio.sleep(MIN_WRITE_GAP)
            return self._cut(request, resp, rec)
        if rec.fault == "stall_mid":
            await self._stall(rec)
            return resp
        await resp.write(tail)
        await resp.write_eof()
        return resp


async def serve(args: argparse.Namespace) -> None:
    rates = FaultRates(flap_every=args.flap_every)
    fake = FaultyRuntime(Faults(rates, random.Random(args.seed)), args.ports, args.model, args.stall)
    fake.port = args.port
    await fake.start()
    watch = asyncio.create_task(fake.lag.watch(), name="loop-lag")
    print("LISTENING", *fake.ports, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        watch.cancel()
        await fake.stop_flapping()
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.soak.faulty_runtime", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="first port; 0 = any free ports (printed)")
    p.add_argument("--ports", type=int, default=3, help="how many ports to listen on (backends)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stall", type=float, default=30.0, help="seconds a stall lasts if nobody cuts it")
    p.add_argument("--flap-every", type=float, default=45.0, help="mean seconds between two flaps")
    p.add_argument("--model", default="soak-model")
    args = p.parse_args(argv)
    try:
        run_loop(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
