"""A fake OpenAI-compatible runtime: a real aiohttp server on 127.0.0.1, port 0.

Its behaviour is set per test through :class:`Behaviour`; every request it receives is recorded,
and it notices when the proxy closes a stream early (``closed_early``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


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
    routes: dict[str, Any] = field(default_factory=dict)  # GET path → JSON body (str: text body)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the body / the last chunk
    response_headers: dict[str, str] = field(default_factory=dict)  # sent with non-streaming answers


class FakeRuntime:
    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.b = behaviour or Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.closed_early = asyncio.Event()
        self.stream_started = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeRuntime:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.generate)
        app.router.add_post("/v1/completions", self.generate)
        app.router.add_post("/v1/embeddings", self.embeddings)
        for path in self.b.routes:
            app.router.add_get(path, self.route)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def route(self, request: web.Request) -> web.Response:
        body = self.b.routes[request.path]
        if isinstance(body, str):
            return web.Response(text=body)
        return web.json_response(body)

    async def health(self, request: web.Request) -> web.Response:
        if not self.b.healthy:
            return web.json_response({"error": "loading"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.b.models]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        })

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.requests.append(body)
        self.headers.append(dict(request.headers))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.received_at = asyncio.get_running_loop().time()
        body = await request.json()
        self._record(request, body)
        if self.b.reset:
            sock = request.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.close()  # type: ignore[union-attr]
            return web.Response()  # never sent: the connection is gone
        if self.b.status != 200:
            return web.Response(status=self.b.status, body=self.b.error_body, content_type="application/json")
        chat = request.path.endswith("/chat/completions")
        if not body.get("stream"):
            await asyncio.sleep(self.b.first_token_delay)
            text = "".join(self.b.tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            return web.json_response({
                "id": "cmpl-1", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body["model"], "choices": [choice],
                "usage": self._usage(), **self.b.extra,
            }, headers=self.b.response_headers)
        return await self._stream(request, body, chat)

    def _usage(self) -> dict[str, int]:
        n = len(self.b.tokens)
        return {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}

    def _chunk(self, body: dict[str, Any], chat: bool, token: str | None, finish: str | None) -> bytes:
        if chat:
            choice = {"index": 0, "delta": {"content": token} if token is not None else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": token or "", "finish_reason": finish}
        obj = {"id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion",
               "created": 0, "model": body["model"], "choices": [choice]}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    async def _stream(self, request: web.Request, body: dict[str, Any], chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.stream_started.set()
        try:
            await asyncio.sleep(self.b.first_token_delay)
            if self.b.rate:
                await self._paced(resp, body, chat)
                return resp
            if self.b.steps:
                await self._replay(resp, body, chat)
                return resp
            for i, token in enumerate(self.b.tokens):
                if self.b.die_after is not None and i >= self.b.die_after:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                if i == 1 and self.b.gate is not None:
                    await self.b.gate.wait()
                if i:
                    await asyncio.sleep(self.b.token_delay)
                await self._write(resp, self._chunk(body, chat, token, None))
            usage_asked = (body.get("stream_options") or {}).get("include_usage")
            finish = self._chunk(body, chat, None, "stop")
            if not usage_asked and self.b.extra:
                finish = b"data: " + orjson.dumps({**orjson.loads(finish[6:]), **self.b.extra}) + b"\n\n"
            await self._write(resp, finish)
            if usage_asked:
                usage = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0,
                         "model": body["model"], "choices": [], "usage": self._usage(), **self.b.extra}
                await self._write(resp, b"data: " + orjson.dumps(usage) + b"\n\n")
            if self.b.send_done:
                await self._write(resp, b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.closed_early.set()
            raise
        return resp

    async def _paced(self, resp: web.StreamResponse, body: dict[str, Any], chat: bool) -> None:
        """Steps on an absolute schedule (no drift): each step writes `burst` chunks of
        `tokens_per_chunk` tokens back to back, `burst * tokens_per_chunk / rate` seconds apart."""
        b = self.b
        k = b.tokens_per_chunk
        chunks = ["".join(b.tokens[i:i + k]) for i in range(0, len(b.tokens), k)]
        steps = [chunks[i:i + b.burst] for i in range(0, len(chunks), b.burst)]
        loop = asyncio.get_running_loop()
        start, interval = loop.time(), b.burst * k / b.rate
        self.write_times = []
        for j, step in enumerate(steps):
            delay = start + j * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(b"".join(self._chunk(body, chat, text, None) for text in step))
            self.write_times.append(loop.time())  # when each step really left, on a busy machine too
        await resp.write(self._chunk(body, chat, None, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [], "usage": self._usage(), **b.extra}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")

    async def _replay(self, resp: web.StreamResponse, body: dict[str, Any], chat: bool) -> None:
        """Steps on the absolute schedule of `steps`; `write_times` holds when each step left."""
        b = self.b
        assert b.steps is not None and sum(n for _, n in b.steps) == len(b.tokens)
        loop = asyncio.get_running_loop()
        start, i = loop.time(), 0
        self.write_times = []
        for at, n in b.steps:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            chunks = [self._chunk(body, chat, text, None) for text in b.tokens[i:i + n]]
            i += n
            for data in [b"".join(chunks)] if b.coalesce else chunks:
                await resp.write(data)
            self.write_times.append(loop.time())
        await resp.write(self._chunk(body, chat, None, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [], "usage": self._usage(), **b.extra}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        if self.b.split_events:
            half = len(data) // 2
            await resp.write(data[:half])
            await asyncio.sleep(0.005)
            data = data[half:]
        await resp.write(data)
