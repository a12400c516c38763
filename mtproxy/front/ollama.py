"""The Ollama API served to Ollama clients, in front of any backend whatever its runtime.

Requests are translated to the proxy's (OpenAI-shaped) request (front/ollama_wire.py), routed like
any other, and the OpenAI events the backend's adapter yields are written back as Ollama NDJSON
(``application/x-ndjson``); errors are ``{"error": "<text>"}``.
May import: the proxy's layers below (formats, wire, stream, errors, state).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..errors import InvalidRequest, ProxyError
from ..runtimes.ollama_wire import now_iso
from ..state import POOL, PROXY
from ..stream.events import DONE, Batch, Report
from ..wire import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    ApiRequest,
    Endpoint,
    deeply_nested,
    from_payload,
    load_request,
    too_deep,
)
from . import ollama_wire as wire

PREFIX = "/api/"  # the routes answered in this format, errors included
JSON = "application/json"


def error_body(err: ProxyError) -> tuple[bytes, str]:
    """Ollama's error shape: ``{"error": "<text>"}``."""
    return orjson.dumps({"error": err.message}), JSON


class OllamaStream:
    """OpenAI events in, Ollama NDJSON lines out (``chat`` or ``generate`` shaped)."""

    content_type = "application/x-ndjson"

    def __init__(self, model: str, generate: bool, report: Report) -> None:
        self.model = model
        self.generate = generate
        self.report = report
        self.finished = False
        self.started = time.monotonic()
        self.usage: dict[str, Any] | None = None
        self.reason = "stop"
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def _line(self, text: str = "", thinking: str = "", **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.generate:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            out["message"] = message
        out.update(extra)
        return out

    def encode(self, batch: Batch) -> bytes:
        lines: list[bytes] = []
        for _raw, obj in batch.events or ():
            if obj is DONE:
                self.finished = True
                lines.append(orjson.dumps(self._final()))
            elif obj.__class__ is dict:
                if obj.get("usage"):
                    self.usage = obj["usage"]
                for choice in obj.get("choices") or ():
                    line = self._choice(choice)
                    if line is not None:
                        lines.append(orjson.dumps(line))
        return b"".join(line + b"\n" for line in lines)

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        if choice.get("finish_reason"):
            self.reason = wire.DONE_REASON.get(choice["finish_reason"], "stop")
        delta = choice.get("delta")
        if delta is None:  # a text completion chunk
            text, thinking = choice.get("text") or "", ""
        else:
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
        if not text and not thinking:
            return None
        return self._line(text, thinking, done=False)

    def _final(self) -> dict[str, Any]:
        line = self._line()
        if self.tool_calls and not self.generate:
            line["message"]["tool_calls"] = [
                {"function": {"name": c["name"], "arguments": _json_or_empty(c["arguments"])}}
                for _, c in sorted(self.tool_calls.items())]
        line.update(wire.final_fields(self.usage, self.reason, int((time.monotonic() - self.started) * 1e9),
                                      self.report.prompt_seconds, self.report.decode_seconds))
        return line

    def error(self, body: dict[str, Any]) -> bytes:
        return orjson.dumps({"error": body["error"]["message"]}) + b"\n"

    async def settle(self) -> None:
        pass


def _json_or_empty(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}


class OllamaFormat:
    """/api/chat (``generate`` False) and /api/generate."""

    parse_all = True  # every event is rewritten as an NDJSON line
    texts = False
    error_body = staticmethod(error_body)

    def __init__(self, generate: bool) -> None:
        self.generate = generate

    def parse(self, raw: bytes, endpoint: Endpoint) -> ApiRequest:
        body = _json(raw)
        if not self.generate:
            if not body.get("messages"):  # Ollama loads the model and answers "load"
                return load_request(body["model"], endpoint)
            return from_payload(_with_usage(wire.openai_chat_from_ollama(body)), CHAT)
        if not body.get("prompt") and not body.get("images"):
            return load_request(body["model"], endpoint)
        payload, is_chat = wire.openai_from_generate(body)
        return from_payload(_with_usage(payload), CHAT if is_chat else COMPLETIONS)

    async def settle(self, req: ApiRequest) -> None:
        pass

    def loaded(self, req: ApiRequest) -> bytes:
        """Ollama answers a request with no input by loading the model; here it is always ready."""
        out: dict[str, Any] = {"model": req.model, "created_at": now_iso()}
        out.update({"response": ""} if self.generate else {"message": {"role": "assistant", "content": ""}})
        out.update({"done_reason": "load", "done": True})
        return orjson.dumps(out)

    def stream_encoder(self, req: ApiRequest, report: Report) -> OllamaStream:
        return OllamaStream(req.model, self.generate, report)

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        enc = OllamaStream(req.model, self.generate, report)
        obj = orjson.loads(body)
        choice = (obj.get("choices") or [{}])[0]
        message = choice.get("message")
        text = message.get("content") if message is not None else choice.get("text")
        thinking = (message or {}).get("reasoning_content") or (message or {}).get("reasoning") or ""
        enc.usage = obj.get("usage")
        enc.reason = wire.DONE_REASON.get(choice.get("finish_reason") or "stop", "stop")
        for i, call in enumerate((message or {}).get("tool_calls") or ()):
            fn = call.get("function") or {}
            enc.tool_calls[i] = {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}
        out = enc._final()
        if self.generate:
            out["response"] = text or ""
        else:
            out["message"]["content"] = text or ""
        if thinking:
            (out if self.generate else out["message"])["thinking"] = thinking
        return orjson.dumps(out), JSON


CHAT_FORMAT = OllamaFormat(generate=False)
GENERATE_FORMAT = OllamaFormat(generate=True)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from None
    if too_deep(body, raw):
        raise deeply_nested("The request body")
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if "model" not in body and isinstance(body.get("name"), str):  # the older spelling
        body["model"] = body["name"]
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model is required", param="model")
    return body


def _with_usage(payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("stream"):
        payload["stream_options"] = {"include_usage": True}  # the final line carries the counts
    return payload


async def chat(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].serve(request, CHAT, CHAT_FORMAT)


async def generate(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].serve(request, COMPLETIONS, GENERATE_FORMAT)


class OllamaEmbedFormat:
    """OpenAI embeddings → /api/embed ({"embeddings": [...]}) or legacy /api/embeddings
    ({"embedding": [...]})."""

    parse_all = True
    texts = False
    error_body = staticmethod(error_body)

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy

    def parse(self, raw: bytes, endpoint: Endpoint) -> ApiRequest:
        body = _json(raw)
        payload = {"model": body["model"],
                   "input": body.get("prompt", "") if self.legacy else body.get("input", "")}
        if body.get("dimensions"):
            payload["dimensions"] = body["dimensions"]
        return from_payload(payload, EMBEDDINGS)

    async def settle(self, req: ApiRequest) -> None:
        pass

    def loaded(self, req: ApiRequest) -> bytes:  # pragma: no cover (parse never asks for it)
        raise InvalidRequest("embeddings need input")

    def stream_encoder(self, req: ApiRequest, report: Report) -> OllamaStream:  # pragma: no cover
        raise InvalidRequest("embeddings do not stream")

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        data = orjson.loads(body)
        vectors = [d.get("embedding") for d in data.get("data") or ()]
        if self.legacy:
            return orjson.dumps({"embedding": vectors[0] if vectors else []}), JSON
        return orjson.dumps({"model": req.model, "embeddings": vectors,
                             "prompt_eval_count": (data.get("usage") or {}).get("prompt_tokens")}), JSON


EMBED_FORMAT = OllamaEmbedFormat(legacy=False)
LEGACY_EMBED_FORMAT = OllamaEmbedFormat(legacy=True)


async def embed(request: web.Request) -> web.StreamResponse:
    fmt = LEGACY_EMBED_FORMAT if request.path == "/api/embeddings" else EMBED_FORMAT
    return await request.app[PROXY].serve(request, EMBEDDINGS, fmt)


def _tag(name: str) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z", "size": 0, "digest": "",
            "details": {"parent_model": "", "format": "", "family": "", "families": None,
                        "parameter_size": "", "quantization_level": ""}}


async def tags(request: web.Request) -> web.Response:
    return web.json_response({"models": [_tag(name) for name in request.app[POOL].model_names()]})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def show(request: web.Request) -> web.Response:
    model = _json(await request.read())["model"]
    shown = await request.app[PROXY].show(model)
    if shown is None:
        shown = {"modelfile": "", "parameters": "", "template": "", "details": _tag(model)["details"],
                 "model_info": {}, "capabilities": ["completion"]}
    return web.json_response(shown)


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running (mtproxy)")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embed)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    app.router.add_post("/api/show", show)
    app.router.add_get("/", root)
