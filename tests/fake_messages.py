"""Fake runtimes for the Anthropic Messages tests: real aiohttp servers on 127.0.0.1, port 0.

:class:`MessagesRuntime` is the fake OpenAI runtime of fakes.py plus, as configured:
- ``native``: it serves ``/v1/messages`` itself, answering with recorded llama-server bytes (or
  any SSE given), and ``/v1/messages/count_tokens``;
- ``tokenize``: vLLM's ``/tokenize`` (chat messages in, ``count`` out), llama-server's
  ``/apply-template`` and ``/tokenize`` (text in, ``tokens`` out);
- ``script``: its chat completions stream these OpenAI deltas (tool calls, reasoning) instead of
  plain tokens, then the finish chunk (``finish``), the usage chunk and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.fake_runtime import Behaviour, FakeRuntime

DATA = Path(__file__).parent / "data"
MESSAGE = orjson.loads((DATA / "llamacpp" / "messages.json").read_bytes())
MESSAGE_STREAM = (DATA / "llamacpp" / "messages_stream.txt").read_bytes()


@dataclass
class Extra:
    native: bool = False
    native_stream: bytes = MESSAGE_STREAM
    native_status: int = 200
    native_error: bytes = b'{"error":{"code":400,"message":"bad request","type":"invalid_request_error"}}'
    tokenize: bool = False
    script: list[dict[str, Any]] | None = None  # OpenAI deltas
    finish: str = "stop"
    stop_reason: str | None = None  # vLLM's: the stop string that ended the answer
    usage: dict[str, Any] = field(default_factory=lambda: {"prompt_tokens": 5, "completion_tokens": 4,
                                                            "total_tokens": 9})
    event_delay: float = 0.0


class MessagesRuntime(FakeRuntime):
    def __init__(self, name: str, behaviour: Behaviour, extra: Extra) -> None:
        super().__init__(name, behaviour)
        self.x = extra

    async def start(self) -> MessagesRuntime:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.generate)
        if self.x.native:
            app.router.add_post("/v1/messages", self.messages)
            app.router.add_post("/v1/messages/count_tokens", self.count)
        if self.x.tokenize:
            app.router.add_post("/tokenize", self.tokenize)
            app.router.add_post("/apply-template", self.apply_template)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.x.script is None:
            return await self.generate(request)
        body = await request.json()
        self._record(request, body)
        if not body.get("stream"):
            return web.json_response(self._message(body))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks = [{"role": "assistant", "content": ""}, *self.x.script]
        for delta in chunks:
            await resp.write(self._sse(body, [{"index": 0, "delta": delta, "finish_reason": None}]))
            await asyncio.sleep(self.x.event_delay)
        finish = {"index": 0, "delta": {}, "finish_reason": self.x.finish}
        if self.x.stop_reason is not None:
            finish["stop_reason"] = self.x.stop_reason
        await resp.write(self._sse(body, [finish]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(self._sse(body, [], usage=self.x.usage))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    @staticmethod
    def _sse(body: dict[str, Any], choices: list[Any], **extra: Any) -> bytes:
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
               "choices": choices, **extra}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The script's deltas gathered into one chat completion message."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        calls: dict[int, dict[str, Any]] = {}
        for delta in self.x.script or ():
            message["content"] += delta.get("content") or ""
            if delta.get("reasoning_content"):
                message["reasoning_content"] = message.get("reasoning_content", "") + delta["reasoning_content"]
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"id": "", "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": self.x.finish,
                             "stop_reason": self.x.stop_reason}],
                "usage": self.x.usage}

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        if self.x.native_status != 200:
            return web.Response(status=self.x.native_status, body=self.x.native_error, content_type="application/json")
        if not body.get("stream"):
            return web.json_response({**MESSAGE, "model": body["model"]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in self.x.native_stream.split(b"\n\n"):
            if event.strip():
                await resp.write(event + b"\n\n")
                await asyncio.sleep(self.x.event_delay)
        return resp

    async def count(self, request: web.Request) -> web.Response:
        self._record(request, await request.json())
        return web.json_response({"input_tokens": 21})

    async def apply_template(self, request: web.Request) -> web.Response:
        """llama-server's: the chat template applied to the messages."""
        body = await request.json()
        self._record(request, body)
        return web.json_response({"prompt": "".join(f"<{m['role']}>{m['content']}\n" for m in body["messages"])})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's (chat messages -> count) and llama-server's (content -> tokens) in one."""
        body = await request.json()
        if "content" in body:
            self._record(request, body)
            return web.json_response({"tokens": list(range(len(body["content"].split())))})
        self._record(request, body)
        n = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or ()) + 3
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})
