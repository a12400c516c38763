"""The OpenAI API served to OpenAI clients: chat and text completions, embeddings, models.

The OpenAI format relays the runtime's bytes untouched; it re-encodes an event only when the
client must get something different (the usage chunk it did not ask for is dropped). Errors are
OpenAI's ``{"error": {message, type, param, code}}`` (errors.py).
May import: the proxy's layers below (formats, wire, stream, errors, backends, state).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..backends import BackendPool
from ..errors import InvalidRequest, ModelNotFound, ProxyError
from ..state import POOL, PROXY
from ..stream.events import DONE, Batch, Report
from ..stream.sse import DONE as DONE_BYTES
from ..stream.sse import error_event
from ..wire import CHAT, COMPLETIONS, EMBEDDINGS, ApiRequest, Endpoint, parse_request
from . import anthropic

JSON = "application/json"


def sse_bytes(obj: Any) -> bytes:
    return DONE_BYTES if obj is DONE else b"data: " + orjson.dumps(obj) + b"\n\n"


class OpenAIStream:
    __slots__ = ("strip_usage", "finished")
    content_type = "text/event-stream"

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.finished = False

    def encode(self, batch: Batch) -> bytes:
        if batch.events is None:  # plain content chunks: relayed as they came
            return batch.raw  # type: ignore[return-value]
        out = []
        changed = batch.raw is None
        for raw, obj in batch.events:
            if obj is DONE:
                self.finished = True
            elif self.strip_usage and obj.__class__ is dict and obj.get("usage") is not None:
                changed = True
                if not obj.get("choices"):
                    continue  # the usage chunk the proxy asked for, not the client
                obj = {k: v for k, v in obj.items() if k != "usage"}
                raw = None
            out.append(raw if raw is not None else sse_bytes(obj))
        return b"".join(out) if changed else batch.raw  # type: ignore[return-value]

    def error(self, body: dict[str, Any]) -> bytes:
        return error_event(body)

    async def settle(self) -> None:
        pass


class OpenAIFormat:
    """The OpenAI API: the runtime's own bytes relayed, the request validated by wire.py."""

    parse_all = False
    texts = False

    def parse(self, body: bytes, endpoint: Endpoint) -> ApiRequest:
        return parse_request(body, endpoint)

    def stream_encoder(self, req: ApiRequest, report: Report) -> OpenAIStream:
        return OpenAIStream(strip_usage=not req.client_usage)

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        return body, JSON

    @staticmethod
    def error_body(err: ProxyError) -> tuple[bytes, str]:
        return err.json(), JSON

    async def settle(self, req: ApiRequest) -> None:
        pass

    def loaded(self, req: ApiRequest) -> bytes:  # pragma: no cover (parse never asks for it)
        raise InvalidRequest("Nothing to generate.")


OPENAI = OpenAIFormat()


# --- routes --------------------------------------------------------------------------------------

def _forward(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY].serve(request, endpoint, OPENAI)

    return handler


def _model_entry(pool: BackendPool, name: str) -> dict[str, Any]:
    target = pool.aliases.get(name, name)
    backends = [b.name for b in pool.by_model.get(target, ())]
    entry: dict[str, Any] = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "mtproxy",
                             "mtproxy": {"backends": backends}}
    if target != name:
        entry["mtproxy"]["alias_of"] = target
    return entry


async def list_models(request: web.Request) -> web.Response:
    if anthropic.VERSION_HEADER in request.headers:  # an Anthropic client: its page of models
        return await anthropic.list_models(request)
    pool = request.app[POOL]
    data = [_model_entry(pool, name) for name in pool.model_names()]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    if anthropic.VERSION_HEADER in request.headers:
        return await anthropic.get_model(request)
    pool = request.app[POOL]
    name = request.match_info["model"]
    if pool.aliases.get(name, name) not in pool.by_model:
        raise ModelNotFound(f"The model `{name}` does not exist or no backend serves it.", param="model")
    return web.json_response(_model_entry(pool, name))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", _forward(CHAT))
    app.router.add_post("/v1/completions", _forward(COMPLETIONS))
    app.router.add_post("/v1/embeddings", _forward(EMBEDDINGS))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
