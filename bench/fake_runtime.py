"""A fast fake OpenAI runtime (vLLM-flavoured) for benchmarking proxies.

    python -m bench.fake_runtime [--port 0] [--ports N] [--tokens 16] [--rate 0] [--tpc 1]

Serves ``/health``, ``/version``, ``/metrics``, ``/v1/models``, ``POST /v1/chat/completions``
and ``POST /v1/completions``, non-streaming and SSE. Prints ``LISTENING <port> [<port> …]`` on
one line once it accepts connections (``--ports 8``: eight listening ports in one process, for
the eight-backend scenario).

What each answer looks like is decided per request from its body, defaults from the command line:
- ``max_tokens``: tokens in the answer (exactly; the fake never stops early);
- ``bench_rate``: tokens per second per stream, 0 = the whole answer at once;
- ``bench_tpc``: tokens per SSE chunk;
- ``stream`` / ``stream_options.include_usage``: SSE, and a final usage chunk when asked for.
Streams end with ``data: [DONE]``. Chat streams start with a role chunk (``content: ""``), as
vLLM's do; when paced, that chunk is sent at once and content chunk k after k×tpc/rate seconds
(one decode step per chunk), then the finish chunk, the usage chunk and [DONE] together.

Every answer is encoded once per shape and cached, so the fake spends its time on HTTP only;
paced chunks go out from timer callbacks straight to the transport, pre-framed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import orjson
from aiohttp import web

if __package__ in (None, ""):  # `python bench/fake_runtime.py`
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import LOCALHOST, run_loop

Kind = Literal["chat", "completions"]
CREATED = 1_700_000_000
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True, slots=True)
class Shape:
    kind: Kind
    model: str
    tokens: int
    tpc: int
    usage: bool


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}


def _text(start: int, n: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(start, start + n))


@lru_cache(maxsize=256)
def stream_events(shape: Shape) -> tuple[tuple[bytes, ...], tuple[bytes, ...], bytes]:
    """(head, content chunks, tail) of one stream, each an encoded SSE event (or events).

    head: the role chunk (chat) or nothing; tail: finish chunk, usage chunk if asked, [DONE].
    """
    base = {"id": "cmpl-bench", "created": CREATED, "model": shape.model}
    chunks: list[bytes] = []
    done = 0
    while done < shape.tokens:
        n = min(shape.tpc, shape.tokens - done)
        text = _text(done, n)
        if shape.kind == "chat":
            choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
            chunks.append(_sse({**base, "object": "chat.completion.chunk", "choices": [choice]}))
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": None}
            chunks.append(_sse({**base, "object": "text_completion", "choices": [choice]}))
        done += n
    obj = "chat.completion.chunk" if shape.kind == "chat" else "text_completion"
    head: tuple[bytes, ...] = ()
    if shape.kind == "chat":
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}
        head = (_sse({**base, "object": obj, "choices": [role]}),)
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    else:
        finish = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    tail = _sse({**base, "object": obj, "choices": [finish]})
    if shape.usage:
        tail += _sse({**base, "object": obj, "choices": [], "usage": _usage(shape.tokens)})
    return head, tuple(chunks), tail + DONE


def event_count(kind: Kind, tokens: int, tpc: int, usage: bool) -> int:
    """SSE events in one stream of this shape (what a proxy relays), [DONE] included."""
    head, chunks, _ = stream_events(Shape(kind, "m", tokens, tpc, usage))
    return len(head) + len(chunks) + 1 + int(usage) + 1


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


@lru_cache(maxsize=256)
def paced_frames(shape: Shape) -> tuple[bytes, tuple[bytes, ...]]:
    """(first write, later writes) of a paced stream: the first is plain SSE (aiohttp sends it
    with the headers), the later ones already framed as HTTP chunks, the tail riding with the
    last content chunk."""
    head, chunks, tail = stream_events(shape)
    writes = [*head, *chunks[:-1], chunks[-1] + tail] if chunks else [*head, tail]
    return writes[0], tuple(_frame(w) for w in writes[1:])


@lru_cache(maxsize=256)
def stream_body(shape: Shape) -> bytes:
    head, chunks, tail = stream_events(shape)
    return b"".join((*head, *chunks, tail))


@lru_cache(maxsize=256)
def unary_body(shape: Shape) -> bytes:
    base = {"id": "cmpl-bench", "created": CREATED, "model": shape.model, "usage": _usage(shape.tokens)}
    text = _text(0, shape.tokens)
    if shape.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": "length"}
        return orjson.dumps({**base, "object": "chat.completion", "choices": [choice]})
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
    return orjson.dumps({**base, "object": "text_completion", "choices": [choice]})


class RuntimeInfo:
    """The GET endpoints every fake runtime answers: health, version, metrics, model list."""

    def __init__(self, model: str, version: str) -> None:
        self.version_body = orjson.dumps({"version": version})
        self.models_body = orjson.dumps({"object": "list", "data": [
            {"id": model, "object": "model", "created": CREATED, "owned_by": "bench", "root": model}]})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=self.version_body, content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="# no spec_decode counters: this fake does not speculate\n")

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.models_body, content_type="application/json")


class FakeRuntime:
    def __init__(self, tokens: int, rate: float, tpc: int, model: str) -> None:
        self.tokens, self.rate, self.tpc, self.model = tokens, rate, tpc, model
        self.info = RuntimeInfo(model, "0.0.0-bench")

    def app(self) -> web.Application:
        app = web.Application()
        self.info.add_routes(app)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "completions")

    async def answer(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "bad json", "type": "invalid_request_error"}},
                                     status=400)
        tokens = int(body.get("max_tokens") or self.tokens)
        rate = float(body.get("bench_rate", self.rate))
        tpc = max(1, int(body.get("bench_tpc", self.tpc)))
        stream = bool(body.get("stream"))
        usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        shape = Shape(kind, str(body.get("model") or self.model), tokens, tpc, usage)
        if not stream:
            if rate > 0:
                await asyncio.sleep(tokens / rate)
            return web.Response(body=unary_body(shape), content_type="application/json")
        resp = web.StreamResponse(headers=SSE_HEADERS)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if rate <= 0:
            await resp.write(stream_body(shape))
        elif not await self._paced(request, resp, shape, tpc / rate):
            return resp  # the client went away
        await resp.write_eof()
        return resp

    @staticmethod
    async def _paced(request: web.Request, resp: web.StreamResponse, shape: Shape, interval: float) -> bool:
        """Chunk k at t0 + k × interval (the role chunk of chat at once). After the first write
        (through aiohttp, which sends the headers with it) every chunk is one timer callback and
        one ``transport.write`` of pre-framed bytes: a few µs, where a coroutine per chunk through
        ``StreamResponse.write`` costs as much as the proxy under test."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first, rest = paced_frames(shape)
        k0 = 0 if shape.kind == "chat" else 1  # completions have no role chunk: wait one step
        if k0:
            await asyncio.sleep(interval)
        await resp.write(first)
        transport = request.transport
        done: asyncio.Future[bool] = loop.create_future()

        def step(k: int) -> None:
            if done.done():
                return
            if transport is None or transport.is_closing():
                done.set_result(False)
                return
            transport.write(rest[k])
            if k + 1 < len(rest):
                loop.call_at(t0 + (k0 + k + 2) * interval, step, k + 1)
            else:
                done.set_result(True)

        if not rest:
            return True
        loop.call_at(t0 + (k0 + 1) * interval, step, 0)
        try:
            return await done
        finally:
            if not done.done():  # cancelled: stop the timer chain
                done.set_result(False)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeRuntime(args.tokens, args.rate, args.tpc, args.model)
    runner = web.AppRunner(fake.app(), access_log=None, handle_signals=False)
    await runner.setup()
    ports = []
    for i in range(args.ports):
        site = web.TCPSite(runner, args.host, args.port + i if args.port else 0, backlog=1024)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    print("LISTENING", *ports, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fake_runtime", description=__doc__.split("\n")[0])
    p.add_argument("--host", default=LOCALHOST)
    p.add_argument("--port", type=int, default=0, help="first port; 0 = any free ports (printed)")
    p.add_argument("--ports", type=int, default=1, help="how many ports to listen on (backends)")
    p.add_argument("--tokens", type=int, default=16, help="tokens per answer without max_tokens")
    p.add_argument("--rate", type=float, default=0.0, help="tokens/s per stream; 0 = all at once")
    p.add_argument("--tpc", type=int, default=1, help="tokens per SSE chunk")
    p.add_argument("--model", default="bench-model")
    args = p.parse_args(argv)
    try:
        run_loop(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
