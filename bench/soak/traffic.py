"""The soak's clients: mixed OpenAI traffic at a fixed concurrency, some of it walking away on
purpose, and every outcome classified.

A request either runs to its end through an aiohttp session (keep-alive, as real clients do), or,
when it is planned to disconnect, over a raw connection the client closes at the planned phase:

- ``before_routing``: the headers and part of the body sent, then the connection closed;
- ``first_token``: the whole request sent (the fake is asked to keep silent a while), closed before
  any byte of the answer;
- ``mid_stream``: closed after a few SSE events of the answer.

Half the closes are a FIN, half a RST, sent within the close call (bench/soak/rawhttp.py). The
moment of each close is taken with ``time.monotonic()`` right before it, for the soak to compare
with the fake runtime's record of when the proxy closed the upstream request.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field, replace

import aiohttp
import orjson

from bench.fake_runtime import event_count
from bench.soak.rawhttp import Malformed, RawConnection, RawResponse

PHASES = ("before_routing", "first_token", "mid_stream")
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
HEADERS = {"Content-Type": "application/json"}
DONE = b"data: [DONE]\n\n"
REQUEST_LIMIT = 60.0  # seconds: no request of the soak may take longer (the proxy's timeouts are seconds)

# Outcome categories
OK = "ok"
DISCONNECT = "client disconnect (deliberate)"
OVERLOAD = "overload (429)"
UPSTREAM = "upstream failure, reported"
BUG = "proxy failure"  # what the proxy must never do: its own 5xx, a dropped connection, a bad stream
SOAK = "soak error"  # the soak or the fake misbehaved: says nothing about the proxy
CATEGORIES = (OK, DISCONNECT, OVERLOAD, UPSTREAM, BUG, SOAK)
UPSTREAM_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Mix:
    stream_share: float = 0.7
    chat_share: float = 0.7
    disconnect_share: float = 0.15
    tokens: tuple[int, int] = (16, 256)  # drawn log-uniformly
    rate: tuple[float, float] = (200.0, 1000.0)  # tokens/s per stream, drawn uniformly


@dataclass(frozen=True, slots=True)
class Plan:
    rid: str  # sent as the body's `user` field: the fake records it
    kind: str
    stream: bool
    tokens: int
    rate: float
    model: str
    phase: str | None = None  # a planned disconnect
    how: str = "fin"  # fin | rst
    close_after: float = 0.0  # before_routing, first_token: seconds after sending
    close_events: int = 0  # mid_stream: SSE events read before closing
    sent_bytes: int | None = None  # before_routing: body bytes sent
    first_delay: float = 0.0  # asked of the fake: silence before the first byte

    def body(self) -> bytes:
        body: dict[str, object] = {"user": self.rid, "model": self.model, "max_tokens": self.tokens,
                                   "stream": self.stream, "temperature": 0, "bench_rate": self.rate}
        if self.first_delay:
            body["soak_first_delay"] = self.first_delay
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": "Write a short story about a fox."}]
        else:
            body["prompt"] = "Write a short story about a fox."
        return orjson.dumps(body)


def draw(rng: random.Random, mix: Mix, rid: str, model: str) -> Plan:
    kind = "chat" if rng.random() < mix.chat_share else "completions"
    stream = rng.random() < mix.stream_share
    lo, hi = mix.tokens
    tokens = int(lo * (hi / lo) ** rng.random())
    plan = Plan(rid, kind, stream, tokens, rng.uniform(*mix.rate), model)
    if rng.random() >= mix.disconnect_share:
        return plan
    phase = rng.choice(PHASES if stream else PHASES[:2])
    how = rng.choice(("fin", "rst"))
    if phase == "before_routing":
        return replace(plan, phase=phase, how=how, close_after=rng.uniform(0.01, 0.2),
                       sent_bytes=rng.randrange(len(plan.body())))
    if phase == "first_token":
        return replace(plan, phase=phase, how=how, close_after=rng.uniform(0.02, 0.4),
                       first_delay=rng.uniform(0.5, 1.5))
    return replace(plan, phase=phase, how=how, tokens=max(tokens, 64), rate=rng.uniform(200.0, 400.0),
                   close_events=rng.randint(2, 10))


# --- outcomes --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    category: str
    cause: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    rid: str
    phase: str
    how: str
    t_close: float  # time.monotonic() right before the close


def _error_code(data: bytes) -> str:
    """The code (or type) of an OpenAI error body; '?' when it is not one."""
    try:
        err = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "?"
    if not isinstance(err, dict):
        return "?"
    return str(err.get("code") or err.get("type") or "?")


def classify(plan: Plan, status: int, body: bytes) -> Outcome:
    """One complete answer of the proxy."""
    if status == 429:
        return Outcome(OVERLOAD, f"HTTP 429 {_error_code(body)}")
    if status in UPSTREAM_STATUSES:
        return Outcome(UPSTREAM, f"HTTP {status} {_error_code(body)}")
    if status == 500 and _error_code(body) != "internal_error":
        return Outcome(SOAK, "HTTP 500 relayed from the fake runtime")
    if status != 200:
        return Outcome(BUG, f"HTTP {status} {_error_code(body)}")
    if not plan.stream:
        try:
            obj = orjson.loads(body)
            complete = obj["usage"]["completion_tokens"] == plan.tokens and bool(obj["choices"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            complete = False
        return Outcome(OK, "answer") if complete else Outcome(BUG, "unary answer incomplete or not JSON")
    if b"event: error" in body:
        if not body.endswith(DONE):
            return Outcome(BUG, "stream error event without [DONE] after it")
        data = body[body.index(b"event: error"):].split(b"data: ", 1)[1].split(b"\n", 1)[0]
        return Outcome(UPSTREAM, f"stream error event {_error_code(data)}")
    if not body.endswith(DONE):
        return Outcome(BUG, "stream ended without [DONE] or error event")
    if body.count(b"data: ") != event_count(plan.kind, plan.tokens, 1, False):  # type: ignore[arg-type]
        return Outcome(BUG, "stream with missing or extra events")
    return Outcome(OK, "stream")


@dataclass(slots=True)
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    disconnects: list[Disconnect] = field(default_factory=list)
    planned: Counter[str] = field(default_factory=Counter)  # disconnects planned, by phase
    overtaken: Counter[str] = field(default_factory=Counter)  # … where the answer came first
    kinds: Counter[str] = field(default_factory=Counter)  # requests by endpoint and mode
    examples: dict[str, list[str]] = field(default_factory=dict)  # request ids per failure cause

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    def add(self, plan: Plan, outcome: Outcome) -> None:
        self.outcomes[outcome.category, outcome.cause] += 1
        self.kinds[f"{plan.kind} {'stream' if plan.stream else 'unary'}"] += 1
        if plan.phase is not None:
            self.planned[plan.phase] += 1
            if outcome.category != DISCONNECT:
                self.overtaken[plan.phase] += 1
        if outcome.category in (BUG, SOAK):
            ids = self.examples.setdefault(f"{outcome.category}: {outcome.cause}", [])
            if len(ids) < 5:
                ids.append(plan.rid)

    def by_category(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (category, _), n in self.outcomes.items():
            out[category] += n
        return out


# --- the two ways of sending -----------------------------------------------------------------------

async def complete(session: aiohttp.ClientSession, base_url: str, plan: Plan) -> Outcome:
    """A request the client sees through to its end."""
    try:
        async with asyncio.timeout(REQUEST_LIMIT):
            async with session.post(base_url + PATHS[plan.kind], data=plan.body(), headers=HEADERS) as resp:
                body = await resp.read()
    except TimeoutError:
        return Outcome(BUG, f"no complete answer within {REQUEST_LIMIT:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome(BUG, f"connection to the proxy failed: {type(exc).__name__}")
    return classify(plan, resp.status, body)


async def walk_away(host: str, port: int, plan: Plan, tally: Tally) -> Outcome:
    """A request the client abandons at ``plan.phase``, over a connection of its own."""
    conn: RawConnection | None = None
    try:
        async with asyncio.timeout(REQUEST_LIMIT):
            conn = await RawConnection.open(host, port)
            return await _walk_away(conn, f"{host}:{port}", plan, tally)
    except TimeoutError:
        return Outcome(BUG, f"no answer within {REQUEST_LIMIT:g} s")
    except OSError as exc:
        return Outcome(BUG, f"connection to the proxy failed: {type(exc).__name__}")
    except Malformed as exc:
        return Outcome(BUG, f"malformed HTTP answer: {exc}")
    finally:
        if conn is not None:
            conn.close()


async def _walk_away(conn: RawConnection, host: str, plan: Plan, tally: Tally) -> Outcome:
    body = plan.body()
    head = (f"POST {PATHS[plan.kind]} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    if plan.phase == "before_routing":
        await conn.send(head + body[: plan.sent_bytes])
        await asyncio.sleep(plan.close_after)
        return _left(tally, plan, "before_routing", conn.close(plan.how))
    await conn.send(head + body)
    raw = b""
    if plan.phase == "first_token":
        first = await conn.recv_within(plan.close_after)
        if first is None:
            return _left(tally, plan, "first_token", conn.close(plan.how))
        if not first:
            return Outcome(BUG, "connection closed by the proxy without an answer")
        raw = first
    while b"\r\n\r\n" not in raw:
        data = await conn.recv()
        if not data:
            return Outcome(BUG, "connection closed by the proxy without an answer")
        raw += data
    resp = RawResponse(raw)
    if resp.status == 200 and plan.stream:
        while not (b"[DONE]" in resp.rest or b"event: error" in resp.rest):
            if resp.rest.count(b"data: ") >= max(1, plan.close_events):
                return _left(tally, plan, "mid_stream", conn.close(plan.how))
            data = await conn.recv()
            if not data:
                break
            resp.rest += data
    resp.rest += await conn.recv_all()
    return classify(plan, resp.status, resp.body())


def _left(tally: Tally, plan: Plan, phase: str, t_close: float) -> Outcome:
    tally.disconnects.append(Disconnect(plan.rid, phase, plan.how, t_close))
    return Outcome(DISCONNECT, phase)


# --- the workers -----------------------------------------------------------------------------------

class Traffic:
    """``concurrency`` workers, each sending one request after another until stopped; each request
    for ``model``, or for one of ``models`` drawn at random when given (the swap scenario)."""

    def __init__(self, base_url: str, mix: Mix, seed: int, model: str, prefix: str = "soak",
                 models: tuple[str, ...] = ()) -> None:
        self.base_url = base_url
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.mix = mix
        self.rng = random.Random(seed)
        self.model = model
        self.models = models
        self.prefix = prefix
        self.tally = Tally()
        self._n = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, concurrency: int, seconds: float, grace: float = REQUEST_LIMIT + 15) -> int:
        """Send for ``seconds`` (or until ``stop``), then let what runs finish; returns how many
        workers had to be cancelled after ``grace`` (a request the soak could not bound: 0)."""
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                         auto_decompress=False) as session:
            workers = [asyncio.create_task(self._worker(session)) for _ in range(concurrency)]
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except TimeoutError:
                self._stop.set()
            _, pending = await asyncio.wait(workers, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return len(pending)

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            self._n += 1
            model = self.rng.choice(self.models) if self.models else self.model
            plan = draw(self.rng, self.mix, f"{self.prefix}-{self._n}", model)
            try:
                if plan.phase is None:
                    outcome = await complete(session, self.base_url, plan)
                else:
                    outcome = await walk_away(self.host, self.port, plan, self.tally)
            except Exception as exc:  # noqa: BLE001 - a bug of the soak, never blamed on the proxy
                outcome = Outcome(SOAK, f"{type(exc).__name__}: {exc}")
            self.tally.add(plan, outcome)
            if outcome.category == OVERLOAD or outcome.cause.startswith("HTTP"):
                # back off a little, as a real client does after a 429 or a 5xx: a failing proxy
                # answers in microseconds, and clients retrying at once would flood the soak with them
                await asyncio.sleep(self.rng.uniform(0.05, 0.25))
