"""The proxy's own routes: liveness, readiness, backend state, reload, the OpenAPI spec."""

from __future__ import annotations

import logging

from aiohttp import web

from .errors import InvalidRequest, ProxyError
from .openapi import spec
from .reload import reload
from .state import DRAINING, POOL
from .status import pool_status

log = logging.getLogger("mtproxy.admin")


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


async def backend_action(request: web.Request) -> web.Response:
    """``POST /mtproxy/backends/{name}/start|stop`` (admin key): start (or swap in) a backend
    mtproxy manages and wait until it is ready, or drain and stop it."""
    pool = request.app[POOL]
    name, action = request.match_info["name"], request.match_info["action"]
    swapper = pool.swapper
    if swapper is None or name not in swapper.members:
        known = ", ".join(sorted(swapper.members)) if swapper is not None else ""
        raise ProxyError(f"No backend {name!r} that mtproxy starts and stops"
                         + (f" (those are: {known})." if known else "."),
                         status=404, type_="invalid_request_error", code="backend_not_found")
    log.info("admin: %s backend %s", action, name)
    member = await (swapper.start(name) if action == "start" else swapper.stop(name))
    return web.json_response({"backend": name, **member.status()})


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
    app.router.add_post(r"/mtproxy/backends/{name}/{action:start|stop}", backend_action)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
