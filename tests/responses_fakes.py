"""Runtimes for the /v1/responses tests: a real aiohttp server on 127.0.0.1, port 0.

:class:`Scripted` answers chat completions with scripted deltas (text, reasoning, tool calls),
streamed or not; given ``native`` SSE or JSON it also serves ``POST /v1/responses`` itself, as
llama-server does (answering an empty request 400, so the proxy finds the route), replaying the
bytes it was given event by event. Every request body is recorded with its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

DATA = Path(__file__).parent / "data" / "responses"


def sse_events(text: str | bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every event of an SSE text."""
    raw = text.encode() if isinstance(text, str) else text
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data += line[5:].strip()
        if data and data != b"[DONE]":
            out.append((name, orjson.loads(data)))
    return out


def golden(name: str) -> list[tuple[str, dict[str, Any]]]:
    return sse_events((DATA / name).read_bytes())


class Scripted:
    def __init__(self, deltas: list[dict[str, Any]] | None = None, *, finish: str = "stop",
                 usage: tuple[int, int] = (5, 3), models: tuple[str, ...] = ("m1",),
                 native_sse: bytes | None = None, native_json: bytes | None = None,
                 build: str = "b1-0c1e570", status: int = 200, at_once: bool = False) -> None:
        self.deltas = deltas if deltas is not None else [{"content": "Hel"}, {"content": "lo"}, {"content": "!"}]
        self.finish = finish
        self.usage = usage
        self.models = models
        self.native_sse = native_sse
        self.native_json = native_json
        self.build = build
        self.status = status
        self.at_once = at_once  # the whole stream in one write (the proxy reads it as one block)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path and body]

    async def start(self) -> Scripted:
        app = web.Application()
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def props(request: web.Request) -> web.Response:
            return web.json_response({"build_info": self.build})

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

        app.router.add_get("/health", health)
        app.router.add_get("/props", props)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.native_sse is not None or self.native_json is not None:
            app.router.add_post("/v1/responses", self.responses)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _usage(self) -> dict[str, int]:
        p, c = self.usage
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.status != 200:
            return web.json_response({"error": {"message": "no", "type": "invalid_request_error"}}, status=self.status)
        model = body["model"]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None}
            for d in self.deltas:
                for key in ("content", "reasoning_content"):
                    if d.get(key):
                        message[key] = (message.get(key) or "") + d[key]
                for call in d.get("tool_calls") or ():
                    calls = message.setdefault("tool_calls", [])
                    while len(calls) <= call["index"]:
                        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                    slot = calls[call["index"]]
                    slot["id"] = call.get("id") or slot["id"]
                    fn = call.get("function") or {}
                    slot["function"]["name"] += fn.get("name") or ""
                    slot["function"]["arguments"] += fn.get("arguments") or ""
            return web.json_response({"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                                      "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
                                      "usage": self._usage()})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
                                              "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""}), *(chunk(d) for d in self.deltas), chunk({}, self.finish)]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                                    "model": model, "choices": [], "usage": self._usage()}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        for data in [b"".join(events)] if self.at_once else events:
            await resp.write(data)
        return resp

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        if not body:  # what llama-server says to a request without input (the proxy's route probe)
            return web.json_response({"error": {"code": 400, "message": "'input' is required",
                                                "type": "invalid_request_error"}}, status=400)
        if not body.get("stream"):
            return web.Response(body=self.native_json or b"{}", content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for block in (self.native_sse or b"").split(b"\n\n"):
            if block.strip():
                await resp.write(block + b"\n\n")
        return resp
