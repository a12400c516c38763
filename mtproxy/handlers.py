"""HTTP routes: the OpenAI endpoints, model listing, liveness and readiness."""

from __future__ import annotations

import time

from aiohttp import web

from .errors import InvalidRequest, ModelNotFound
from .openapi import spec
from .reload import reload
from .state import DRAINING, POOL, PROXY
from .status import pool_status
from .wire import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint

def _forward(endpoint: Endpoint):
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY].handle(request, endpoint)

    return handler


def _model_entry(pool, name: str) -> dict:
    target = pool.aliases.get(name, name)
    backends = [b.name for b in pool.by_model.get(target, ())]
    entry = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "mtproxy",
             "mtproxy": {"backends": backends}}
    if target != name:
        entry["mtproxy"]["alias_of"] = target
    return entry


async def list_models(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    data = [_model_entry(pool, name) for name in pool.model_names()]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    name = request.match_info["model"]
    if pool.aliases.get(name, name) not in pool.by_model:
        raise ModelNotFound(f"The model `{name}` does not exist or no backend serves it.", param="model")
    return web.json_response(_model_entry(pool, name))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    app = request.app
    backends = {b.name: {"up": b.up, "detail": b.detail} for b in app[POOL].backends}
    if app[DRAINING].is_set():
        return web.json_response({"status": "draining", "backends": backends}, status=503)
    up = any(b["up"] for b in backends.values())
    return web.json_response({"status": "ready" if up else "unavailable", "backends": backends},
                             status=200 if up else 503)


async def backends(request: web.Request) -> web.Response:
    return web.json_response(pool_status(request.app[POOL]))


async def reload_config(request: web.Request) -> web.Response:
    ok, message = await reload(request.app)
    if ok:
        return web.json_response({"status": "reloaded", "message": message})
    raise InvalidRequest(message, code="config_rejected")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(spec())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/mtproxy/reload", reload_config)
    app.router.add_get("/mtproxy/backends", backends)
    app.router.add_post("/v1/chat/completions", _forward(CHAT))
    app.router.add_post("/v1/completions", _forward(COMPLETIONS))
    app.router.add_post("/v1/embeddings", _forward(EMBEDDINGS))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
