"""The fake runtime of the tests and the bench: a real aiohttp server on 127.0.0.1 that answers as
an OpenAI runtime (vLLM-flavoured) does, or replays a runtime's golden transcripts.

    python -m bench.fake_runtime [--port 0] [--ports N] [--tokens 16] [--rate 0] [--tpc 1]
                                 [--models bench-model] [--version 0.0.0-bench]

:class:`FakeRuntime` serves ``GET /health``, ``/v1/models`` (and the paths of
``Behaviour.routes``), ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``,
unary and SSE; its :class:`Behaviour` sets what it answers and how: tokens, pacing, faults, and
which runtime it stands for (``flavour``: the route of its ``version``; Ollama's /api/chat), with
the client APIs it serves itself (``native``: /v1/messages, /v1/responses in their own shapes).
:class:`ReplayRuntime` serves a directory of golden transcripts (tests/data/<runtime>/) as that
runtime writes them. The tests start them in their own event loop on port 0; the bench, the soak
(bench/soak/faulty_runtime.py builds on this one) and the tests' managed backends run the command
above, which prints ``LISTENING <port> [<port> …]`` once it accepts connections (``--ports 8``:
eight listening ports in one process, eight backends) and answers as each request asks
(:attr:`Behaviour.from_body`):
- ``max_tokens``: tokens in the answer (exactly; the fake never stops early);
- ``bench_rate``: tokens per second per stream, 0 = the whole answer at once;
- ``bench_tpc``: tokens per SSE chunk;
- ``stream`` / ``stream_options.include_usage``: SSE, and a final usage chunk when asked for.
Streams end with ``data: [DONE]``; chat streams start with a role chunk (``content: ""``), as
vLLM's do. Paced, that chunk is sent at once and content chunk k after k×tpc/rate seconds (one
decode step per chunk), the finish chunk, the usage chunk and [DONE] with the last one.

Every answer is encoded once per shape and cached, so the fake spends its time on HTTP only;
paced chunks go out from timer callbacks straight to the transport, pre-framed (a coroutine per
chunk through ``StreamResponse.write`` costs as much as the proxy under test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

if __package__ in (None, ""):  # `python bench/fake_runtime.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LOCALHOST, run_loop
from bench.fake_swap import Swapper

Kind = Literal["chat", "completions"]
CREATED = 1_700_000_000
PROMPT_TOKENS = 5
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
Steps = tuple[tuple[float, int], ...]
Writes = tuple[tuple[float, tuple[bytes, ...]], ...]


# --- the answers, encoded once per shape ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Shape:
    """One answer: ``tokens`` tokens, ``tpc`` to a chunk. ``texts``: the tokens (empty: :data:`WORDS`
    over and over); ``extra``: a JSON object merged into the unary body, or into a stream's finish
    chunk (its usage chunk when there is one)."""

    kind: Kind
    model: str
    tokens: int
    tpc: int = 1
    usage: bool = False  # a stream's usage chunk
    role: bool = True  # a chat stream opens with a role chunk, as vLLM's do
    finish: str = "length"
    texts: tuple[str, ...] = ()
    extra: bytes = b""
    done: bool = True  # a stream ends with [DONE]
    reasoning: int = 0  # a chat stream's first content chunks that are reasoning...
    reasoning_field: str = "reasoning_content"  # ...in this delta field (vLLM: "reasoning")


def words(n: int, start: int = 0) -> str:
    """``n`` tokens of :data:`WORDS` from the ``start``-th: the text of an answer without ``texts``."""
    return "".join(WORDS[i % len(WORDS)] for i in range(start, start + n))


def _texts(shape: Shape) -> list[str]:
    """The text of each content chunk."""
    k = shape.tpc
    if shape.texts:
        return ["".join(shape.texts[i:i + k]) for i in range(0, len(shape.texts), k)]
    return [words(min(k, shape.tokens - i), i) for i in range(0, shape.tokens, k)]


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _typed(name: str, obj: dict[str, Any]) -> bytes:
    """One typed SSE event (Anthropic's, OpenAI Responses')."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens, "total_tokens": PROMPT_TOKENS + tokens}


@lru_cache(maxsize=256)
def stream_events(shape: Shape) -> tuple[tuple[bytes, ...], tuple[bytes, ...], bytes]:
    """(head, content chunks, tail) of one stream, each an encoded SSE event (or events).

    head: the role chunk (chat) or nothing; tail: finish chunk, usage chunk if asked, [DONE].
    """
    chat = shape.kind == "chat"
    base = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": CREATED, "model": shape.model}

    def choice(text: str | None, finish: str | None = None, field: str = "content") -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {} if text is None else {field: text}, "logprobs": None,
                    "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    head: tuple[bytes, ...] = ()
    if chat and shape.role:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        head = (_sse({**base, "choices": [role]}),)
    chunks = tuple(_sse({**base, "choices": [choice(text, None, shape.reasoning_field if i < shape.reasoning
                                                          else "content")]})
                   for i, text in enumerate(_texts(shape)))
    extra = orjson.loads(shape.extra) if shape.extra else {}
    finish = {**base, "choices": [choice(None, shape.finish)]}
    if shape.usage:
        tail = _sse(finish) + _sse({**base, "choices": [], "usage": _usage(shape.tokens), **extra})
    else:
        tail = _sse({**finish, **extra})
    return head, chunks, tail + (DONE if shape.done else b"")


def event_count(kind: Kind, tokens: int, tpc: int, usage: bool) -> int:
    """SSE events in one stream the bench asks for (what a proxy relays), [DONE] included."""
    head, chunks, _ = stream_events(Shape(kind, "m", tokens, tpc, usage))
    return len(head) + len(chunks) + 1 + int(usage) + 1


@lru_cache(maxsize=256)
def stream_body(shape: Shape) -> bytes:
    head, chunks, tail = stream_events(shape)
    return b"".join((*head, *chunks, tail))


@lru_cache(maxsize=256)
def unary_body(shape: Shape) -> bytes:
    text = "".join(_texts(shape))
    if shape.kind == "chat":
        obj, choice = "chat.completion", {"index": 0, "message": {"role": "assistant", "content": text},
                                          "logprobs": None, "finish_reason": shape.finish}
    else:
        obj, choice = "text_completion", {"index": 0, "text": text, "logprobs": None, "finish_reason": shape.finish}
    extra = orjson.loads(shape.extra) if shape.extra else {}
    return orjson.dumps({"id": "cmpl-fake", "object": obj, "created": CREATED, "model": shape.model,
                         "choices": [choice], "usage": _usage(shape.tokens), **extra})


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


@lru_cache(maxsize=256)
def paced(shape: Shape, interval: float, lead: int = 1, burst: int = 1, steps: Steps | None = None,
          coalesce: bool = True) -> tuple[float, tuple[bytes, ...], Writes]:
    """A paced stream's writes: (when the first goes out, its writes, the later ones), times in
    seconds after the stream's start. The head (a role chunk) at once; then a step of ``burst``
    chunks every ``interval`` seconds, the first after ``lead`` steps, or the decode ``steps``
    given ((seconds, content chunks) each, irregular as a real runtime's). A step's chunks go in
    one write (``coalesce``) or one each, back to back; the tail rides with the last. The first
    write is plain SSE (aiohttp sends it with the headers), the later ones are framed as HTTP
    chunks already."""
    head, chunks, tail = stream_events(shape)
    if steps is None:
        steps = tuple(((i // burst + lead) * interval, len(chunks[i:i + burst])) for i in range(0, len(chunks), burst))
    writes: list[tuple[float, list[bytes]]] = [(0.0, list(head))] if head else []
    done = 0
    for at, n in steps:
        step = list(chunks[done:done + n])
        done += n
        writes.append((at, [b"".join(step)] if coalesce else step))
    if writes:
        writes[-1][1][-1] += tail
    else:
        writes.append((0.0, [tail]))
    (at, first), rest = writes[0], writes[1:]
    return at, tuple(first), tuple((t, tuple(_frame(w) for w in ws)) for t, ws in rest)


# --- how it answers ------------------------------------------------------------------------------

@dataclass
class Behaviour:
    models: list[str] = field(default_factory=lambda: ["m1"])
    tokens: list[str] = field(default_factory=lambda: ["Hel", "lo", " wor", "ld"])
    token_delay: float = 0.0  # seconds between stream chunks
    first_token_delay: float = 0.0
    status: int = 200  # answer every generation request with this status...
    error_body: bytes = b'{"error":{"message":"boom","type":"server_error","code":500}}'
    healthy: bool = True
    die_after: int | None = None  # ...or close the connection after this many stream chunks
    reset: bool = False  # ...or reset the connection (RST) instead of answering
    send_done: bool = True
    split_events: bool = False  # write each event in two TCP writes, cut mid-JSON
    gate: asyncio.Event | None = None  # when set: hold the stream after the first token until set
    rate: float | None = None  # paced mode: tokens per second after the first chunk...
    tokens_per_chunk: int = 1  # ...this many tokens in each chunk...
    burst: int = 1  # ...and this many chunks written back to back per decode step
    # replay mode: (seconds after the first step, content chunks) per decode step, irregular as a
    # real runtime's; one token per chunk; each step's chunks in one write (coalesce), or one write
    # per chunk back to back, as llama-server writes the tokens of a step
    steps: list[tuple[float, int]] | None = None
    coalesce: bool = True
    # GET path → JSON body (str: text body; an async function of the request: its answer)
    routes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the body / the last chunk
    reasoning: int = 0  # a chat stream's first content chunks sent as reasoning deltas...
    reasoning_field: str = "reasoning_content"  # ...in this field (vLLM: "reasoning")
    response_headers: dict[str, str] = field(default_factory=dict)  # sent with non-streaming answers
    # the bench's mode: each answer as its request asks (max_tokens tokens of WORDS, else `length`;
    # bench_rate, bench_tpc), a role chunk first, the first paced chunk one step after it
    from_body: bool = False
    length: int = 16
    role_chunk: bool = False
    record: bool = True  # keep every request (`requests`, `headers`): not over 100,000 requests
    # the runtime it stands for: "vllm" (GET /version), "sglang" (GET /server_info), "ollama"
    # (GET /api/version, /api/tags; POST /api/chat in NDJSON instead of the OpenAI routes) ...
    flavour: Literal["vllm", "sglang", "ollama"] = "vllm"
    version: str | None = None  # ...the version it reports there (None: no such route)...
    # ...and the client APIs it serves itself, answering in that API's shape (streamed or not,
    # with usage): "messages" (POST /v1/messages, /v1/messages/count_tokens), "responses"
    native: tuple[str, ...] = ()
    # a runtime's load/unload API (bench/fake_swap.py): llama.cpp's router mode, Ollama, vLLM's
    # sleep mode; how long a load (a wake-up) takes (None: forever), models whose load fails, and
    # whether the router loads a model a request asks for (--no-models-autoload: False)
    swap: Literal["llamacpp", "ollama", "vllm"] | None = None
    load_seconds: float | None = 0.0
    fail_load: list[str] = field(default_factory=list)
    autoload: bool = True
    # Ollama's OLLAMA_KEEP_ALIVE: seconds a model stays loaded after a request that names no
    # keep_alive (Ollama's default: 5 minutes), after which the fake unloads it by itself
    keep_alive: float = 300.0


def as_asked(models: list[str], version: str, tokens: int = 16, rate: float = 0.0, tpc: int = 1) -> Behaviour:
    """What the command runs: answers as each request asks, ``/version`` and ``/metrics`` as vLLM's."""
    return Behaviour(models=models, from_body=True, length=tokens, rate=rate, tokens_per_chunk=tpc,
                     role_chunk=True, record=False, routes={
                         "/version": {"version": version},
                         "/metrics": "# no spec_decode counters: this fake does not speculate\n"})


def reset(request: web.Request) -> None:
    """Close the connection with a RST (SO_LINGER 0), as a crashed runtime's kernel would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; {} when it is none (a fake answers anything)."""
    data = await request.read()
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            body = json.loads(data)  # integers beyond 64 bits
        except ValueError:
            return {}
    return body if isinstance(body, dict) else {}


def _number(value: Any, default: float) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else default


# --- the server ----------------------------------------------------------------------------------

class FakeRuntime:
    """The fake as a server: every request it receives is recorded (``requests``, ``headers``), and
    it notices when the proxy closes a stream early (``closed_early``)."""

    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None, *, ports: int = 1) -> None:
        self.name = name
        self.b = behaviour or Behaviour()
        self.n_ports = ports
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []  # the path of each recorded request
        self.route_hits: dict[str, int] = {}  # GETs of each Behaviour.routes path
        self.fetched = self.route_hits  # the same counts, by the name the MTP tests use
        self.closed_early = asyncio.Event()
        self.stream_started = asyncio.Event()
        self.write_times: list[float] = []  # when each step of the last paced stream really left
        self.received_at = 0.0  # loop time of the last generation request
        self.runner: web.AppRunner | None = None
        self.port = 0  # the first port; set it before start() to choose one
        self.ports: list[int] = []
        self.swapper = Swapper(self.b) if self.b.swap else None  # its models' load state

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://{LOCALHOST}:{p}" for p in self.ports]

    def app(self) -> web.Application:
        app = web.Application()
        if self.swapper is not None:  # first: its /v1/models (llama.cpp's router) wins
            self.swapper.routes(app, read_json)
        self.add_info_routes(app)
        if self.b.flavour == "ollama":
            app.router.add_post("/api/chat", self.ollama_chat)
        else:
            app.router.add_post("/v1/chat/completions", self.generate)
            app.router.add_post("/v1/completions", self.generate)
            app.router.add_post("/v1/embeddings", self.embeddings)
        if "messages" in self.b.native:
            app.router.add_post("/v1/messages", self.messages)
            app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        if "responses" in self.b.native:
            app.router.add_post("/v1/responses", self.responses)
        return app

    def add_info_routes(self, app: web.Application) -> None:
        b = self.b
        taken = {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}
        app.router.add_get("/health", self.health)
        gets: list[tuple[str, Any]] = [("/v1/models", self.models)]
        if b.flavour == "ollama":
            gets.append(("/api/tags", self.tags))
        if b.version is not None:
            gets.append(({"vllm": "/version", "sglang": "/server_info", "ollama": "/api/version"}[b.flavour],
                         self.version))
        gets.extend((path, self.route) for path in b.routes)
        for path, handler in gets:
            if path not in taken:
                app.router.add_get(path, handler)

    async def start(self) -> FakeRuntime:
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self.runner.setup()
        for i in range(self.n_ports):
            await web.TCPSite(self.runner, LOCALHOST, self.port + i if self.port else 0, backlog=1024).start()
        self.ports = [address[1] for address in self.runner.addresses]
        self.port = self.ports[0]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.swapper is not None:
            await self.swapper.stop()

    async def route(self, request: web.Request) -> web.Response:
        body = self.b.routes[request.path]
        self.route_hits[request.path] = self.route_hits.get(request.path, 0) + 1
        if callable(body):
            return await body(request)
        if isinstance(body, str):
            return web.Response(text=body)
        return web.json_response(body)

    async def health(self, request: web.Request) -> web.Response:
        if not self.b.healthy:
            return web.json_response({"error": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": CREATED, "owned_by": self.name, "root": m} for m in self.b.models]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        self._record(request, body)
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) and inputs else 1
        return web.json_response({
            "object": "list", "model": body.get("model") or self.b.models[0],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(n)],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        })

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        if self.b.record:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            self.paths.append(request.path)

    # --- a runtime's own APIs: Ollama's, and the client APIs it serves itself ------------------

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.b.version})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in self.b.models]})

    async def ollama_chat(self, request: web.Request) -> web.StreamResponse:
        """Ollama's /api/chat: NDJSON (streaming unless "stream": false), counts on the last line."""
        body = await read_json(request)
        self._record(request, body)
        model, texts = body.get("model") or self.b.models[0], self.b.tokens
        last = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "stop", "prompt_eval_count": PROMPT_TOKENS, "eval_count": len(texts),
                "prompt_eval_duration": 1_000_000, "eval_duration": 2_000_000}
        if body.get("stream") is False:
            return web.json_response({**last, "message": {"role": "assistant", "content": "".join(texts)}})
        lines = [{"model": model, "created_at": last["created_at"], "message": {"role": "assistant", "content": t},
                  "done": False} for t in texts]
        return await self._events(request, [orjson.dumps(obj) + b"\n" for obj in (*lines, last)], "application/x-ndjson")

    async def _events(self, request: web.Request, events: list[bytes], content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for event in events:
            await resp.write(event)
            await asyncio.sleep(self.b.token_delay)
        await resp.write_eof()
        return resp

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages as vLLM (and Ollama) write them: usage on message_start and on
        message_delta (input and output tokens)."""
        body = await read_json(request)
        self._record(request, body)
        if self.b.status != 200:
            return web.Response(status=self.b.status, body=self.b.error_body, content_type="application/json")
        model, texts = body.get("model"), self.b.tokens
        usage = {"input_tokens": PROMPT_TOKENS, "output_tokens": len(texts)}
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                   "stop_sequence": None}
        if not body.get("stream"):
            return web.json_response({**message, "content": [{"type": "text", "text": "".join(texts)}],
                                      "stop_reason": "end_turn", "usage": usage})
        events = [("message_start", {"type": "message_start", "message": {
                      **message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
                  *(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": t}}) for t in texts),
                  ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
                  ("message_stop", {"type": "message_stop"})]
        return await self._events(request, [_typed(name, obj) for name, obj in events], "text/event-stream")

    async def count_tokens(self, request: web.Request) -> web.Response:
        self._record(request, await read_json(request))
        return web.json_response({"input_tokens": PROMPT_TOKENS})

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI Responses as vLLM writes them: the Response with its usage (cached and
        reasoning tokens in the details), on response.completed when streamed."""
        body = await read_json(request)
        self._record(request, body)
        if self.b.status != 200:
            return web.Response(status=self.b.status, body=self.b.error_body, content_type="application/json")
        texts = self.b.tokens
        text = "".join(texts)
        usage = {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(texts), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": PROMPT_TOKENS + len(texts)}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {"id": "msg_fake", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        response = {"id": "resp_fake", "object": "response", "created_at": CREATED, "model": body.get("model"),
                    "status": "completed", "output": [item], "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "usage": usage}
        if not body.get("stream"):
            return web.json_response(response)
        begun = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": begun}), ("response.in_progress", {"response": begun}),
            ("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
            ("response.content_part.added", {"output_index": 0, "item_id": "msg_fake", "content_index": 0,
                                             "part": {**part, "text": ""}}),
            *(("response.output_text.delta", {"output_index": 0, "item_id": "msg_fake", "content_index": 0,
                                              "delta": t, "logprobs": []}) for t in texts),
            ("response.output_text.done", {"output_index": 0, "item_id": "msg_fake", "content_index": 0,
                                           "text": text, "logprobs": []}),
            ("response.content_part.done", {"output_index": 0, "item_id": "msg_fake", "content_index": 0, "part": part}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response})]
        return await self._events(request, [_typed(name, {"type": name, "sequence_number": i, **obj})
                                            for i, (name, obj) in enumerate(events)], "text/event-stream")

    def shape(self, body: dict[str, Any], kind: Kind) -> tuple[Shape, float]:
        """The answer this request gets, and its pace (tokens/s; 0: at once)."""
        b = self.b
        model = body.get("model")
        model = model if isinstance(model, str) else b.models[0]
        stream, options = body.get("stream"), body.get("stream_options")
        usage = bool(stream) and isinstance(options, dict) and bool(options.get("include_usage"))
        extra = orjson.dumps(b.extra) if b.extra else b""
        if b.from_body:
            tokens = int(_number(body.get("max_tokens"), 0)) or b.length
            rate = float(_number(body.get("bench_rate"), b.rate or 0.0))
            tpc = max(1, int(_number(body.get("bench_tpc"), b.tokens_per_chunk)))
            return Shape(kind, model, tokens, tpc, usage, b.role_chunk, "length", (), extra, b.send_done), rate
        return Shape(kind, model, len(b.tokens), b.tokens_per_chunk, usage, b.role_chunk, "stop", tuple(b.tokens),
                     extra, b.send_done, b.reasoning, b.reasoning_field), b.rate or 0.0

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.received_at = asyncio.get_running_loop().time()
        body = await read_json(request)
        self._record(request, body)
        b = self.b
        if b.reset:
            reset(request)
            return web.Response()  # never sent: the connection is gone
        if b.status != 200:
            return web.Response(status=b.status, body=b.error_body, content_type="application/json")
        if self.swapper is not None:  # its model loaded on demand, or a refusal
            refused = await self.swapper.before_generate(str(body.get("model") or b.models[0]))
            if refused is not None:
                return refused
        shape, rate = self.shape(body, "chat" if request.path.endswith("/chat/completions") else "completions")
        if not body.get("stream"):
            delay = b.first_token_delay + (shape.tokens / rate if b.from_body and rate > 0 else 0.0)
            if delay:
                await asyncio.sleep(delay)
            return web.Response(body=unary_body(shape), content_type="application/json", headers=b.response_headers)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.stream_started.set()
        try:
            if b.first_token_delay:
                await asyncio.sleep(b.first_token_delay)
            if rate > 0 or b.steps:
                whole = await self._paced(request, resp, shape, rate)
            elif b.from_body:
                await resp.write(stream_body(shape))
                whole = True
            else:
                whole = await self._one_by_one(request, resp, shape)
            if whole:
                await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.closed_early.set()
            raise
        return resp

    async def _paced(self, request: web.Request, resp: web.StreamResponse, shape: Shape, rate: float) -> bool:
        """Each write at its time after the start (absolute: no drift), the first through aiohttp
        (which sends the headers with it), each later one a timer callback and a
        ``transport.write`` of pre-framed bytes: a few µs. False: the client went away."""
        b = self.b
        if b.steps:
            first_at, first, rest = paced(shape, 0.0, steps=tuple(map(tuple, b.steps)), coalesce=b.coalesce)
        else:
            first_at, first, rest = paced(shape, b.burst * shape.tpc / rate, int(b.from_body), b.burst)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        times: list[float] | None = [] if b.record else None
        if times is not None:
            self.write_times = times
        if first_at > 0:
            await asyncio.sleep(first_at)
        for data in first:
            await resp.write(data)
        if times is not None:
            times.append(loop.time())
        if not rest:
            return True
        transport = request.transport
        done: asyncio.Future[bool] = loop.create_future()

        def step(k: int) -> None:
            if done.done():
                return
            if transport is None or transport.is_closing():
                done.set_result(False)
                return
            for data in rest[k][1]:
                transport.write(data)
            if times is not None:
                times.append(loop.time())
            if k + 1 < len(rest):
                loop.call_at(t0 + rest[k + 1][0], step, k + 1)
            else:
                done.set_result(True)

        loop.call_at(t0 + rest[0][0], step, 0)
        try:
            return await done
        finally:
            if not done.done():  # cancelled: stop the timer chain
                done.set_result(False)

    async def _one_by_one(self, request: web.Request, resp: web.StreamResponse, shape: Shape) -> bool:
        """One write per chunk, ``token_delay`` apart (a turn of the event loop at least, so the
        proxy reads them one by one), with the faults that need a coroutine: the gate after the
        first chunk, the connection closed after ``die_after``, events cut in two. False: the fake
        cut the stream."""
        b = self.b
        head, chunks, tail = stream_events(shape)
        for i, data in enumerate((*head, *chunks)):
            if b.die_after is not None and i >= b.die_after:
                assert request.transport is not None
                request.transport.close()
                return False
            if i == 1 and b.gate is not None:
                await b.gate.wait()
            if i:
                await asyncio.sleep(b.token_delay)
            await self._write(resp, data)
        await self._write(resp, tail)
        return True

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        if self.b.split_events:
            half = len(data) // 2
            await resp.write(data[:half])
            await asyncio.sleep(0.005)
            data = data[half:]
        await resp.write(data)


# --- golden transcripts ----------------------------------------------------------------------------

def events_of(raw: bytes, ndjson: bool) -> list[bytes]:
    """A transcript cut where the runtime flushes: per SSE event or per NDJSON line."""
    sep = b"\n" if ndjson else b"\n\n"
    return [part + sep for part in raw.split(sep) if part]


class ReplayRuntime:
    """A runtime's golden transcripts served as it writes them: ``directory`` holds its answers
    (``chat_stream_usage.sse``, ``models.json``, … or Ollama's ``api_*``) and a ``meta.json``;
    streams are written event by event."""

    def __init__(self, directory: Path, *, variant: str = "", fail: bool = False, gap: float = 0.0) -> None:
        self.dir = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.ollama = (directory / "api_version.json").exists()
        self.variant = variant  # e.g. "_spec": chat_stream_usage_spec.sse instead of chat_stream_usage.sse
        self.fail = fail  # answer generation requests with error.body
        self.gap = gap
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def file(self, name: str) -> bytes:
        if self.variant:
            stem, dot, ext = name.partition(".")
            special = self.dir / f"{stem}{self.variant}{dot}{ext}"
            if special.exists():
                return special.read_bytes()
        return (self.dir / name).read_bytes()

    async def start(self) -> ReplayRuntime:
        app = web.Application()
        m = self.meta
        if self.ollama:
            app.router.add_get("/api/version", self._static("api_version.json"))
            app.router.add_get("/api/tags", self._static("api_tags.json"))
            app.router.add_post("/api/show", self._static("api_show.json"))
            app.router.add_post("/api/chat", self._generate("api_chat"))
            app.router.add_post("/api/generate", self._generate("api_generate"))
            app.router.add_post("/api/embed", self._static("api_embed.json", record=True))
        else:
            if m.get("health_path"):
                app.router.add_get(m["health_path"], self._health)
            if m.get("version_path") and m["version_path"] != m.get("health_path"):
                app.router.add_get(m["version_path"], self._static("version.json"))
            app.router.add_get("/v1/models", self._static("models.json"))
            app.router.add_post("/v1/chat/completions", self._generate("chat"))
            app.router.add_post("/v1/completions", self._generate("completions"))
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOCALHOST, 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _health(self, request: web.Request) -> web.Response:
        path = self.dir / "health.json"
        return web.Response(body=path.read_bytes() if path.exists() else b'{"status":"ok"}',
                            content_type="application/json")

    def _static(self, name: str, record: bool = False):
        async def handler(request: web.Request) -> web.Response:
            if record:
                self.requests.append((request.path, await read_json(request)))
            return web.Response(body=self.file(name), content_type="application/json")
        return handler

    def _rejected_fields(self, kind: str, body: dict[str, Any]) -> list[str]:
        path = self.dir / "request_fields.json"
        if not path.exists():
            return []
        accepted = set(json.loads(path.read_text())[kind])
        return sorted(k for k in body if k not in accepted)

    def _generate(self, stem: str):
        ndjson = self.ollama

        async def handler(request: web.Request) -> web.StreamResponse:
            body = await read_json(request)
            self.requests.append((request.path, body))
            if self.fail:
                return web.Response(status=self.meta["error_status"], body=self.file("error.body"),
                                    content_type="application/json")
            unknown = self._rejected_fields("chat" if stem == "chat" else "completions", body)
            if unknown:  # TensorRT-LLM's request models forbid extra fields
                return web.json_response({"object": "error", "message": f"Extra inputs are not permitted: {unknown}",
                                          "type": "BadRequestError", "param": None, "code": 400}, status=400)
            if not body.get("stream", ndjson):
                return web.Response(body=self.file(f"{stem}.json"), content_type="application/json")
            if ndjson:
                name, ctype = f"{stem}.ndjson", "application/x-ndjson"
            else:
                options = body.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage")
                name, ctype = f"{stem}_stream{'_usage' if usage else ''}.sse", "text/event-stream"
            resp = web.StreamResponse(headers={"Content-Type": ctype})
            await resp.prepare(request)
            for event in events_of(self.file(name), ndjson):
                await resp.write(event)
                if self.gap:
                    await asyncio.sleep(self.gap)
            await resp.write_eof()
            return resp

        return handler


# --- the command -------------------------------------------------------------------------------------

async def serve(fake: FakeRuntime) -> None:
    """Run ``fake`` until SIGTERM (or SIGINT), after printing ``LISTENING <port> …``."""
    await fake.start()
    print("LISTENING", *fake.ports, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_runtime", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="first port; 0 = any free ports (printed)")
    p.add_argument("--ports", type=int, default=1, help="how many ports to listen on (backends)")
    p.add_argument("--tokens", type=int, default=16, help="tokens per answer without max_tokens")
    p.add_argument("--rate", type=float, default=0.0, help="tokens/s per stream; 0 = all at once")
    p.add_argument("--tpc", type=int, default=1, help="tokens per SSE chunk")
    p.add_argument("--models", default="bench-model", help="the models it serves, comma-separated")
    p.add_argument("--version", default="0.0.0-bench", help="what GET /version reports (vLLM's shape)")
    args = p.parse_args(argv)
    fake = FakeRuntime("bench", as_asked(args.models.split(","), args.version, args.tokens, args.rate, args.tpc),
                       ports=args.ports)
    fake.port = args.port
    run_loop(serve(fake))


if __name__ == "__main__":
    main()
