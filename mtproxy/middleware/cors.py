"""CORS, off unless ``server.cors_origins`` lists origins (``*`` allows any).

Headers are added in ``on_response_prepare``, so streamed responses get them too; preflight
``OPTIONS`` requests are answered by the middleware (front.py), before any route.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

ALLOW_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta"
EXPOSE_HEADERS = "x-mtproxy-backend, x-mtproxy-mtp"

OriginsOf = Callable[[web.Application], list[str]]


def _allowed(request: web.Request, origins_of: OriginsOf) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    origins = origins_of(request.app)
    return origin if ("*" in origins or origin in origins) else None


def preflight(request: web.Request, origins_of: OriginsOf) -> web.Response | None:
    """The answer to a CORS preflight from an allowed origin; None for any other request."""
    if "Access-Control-Request-Method" in request.headers and _allowed(request, origins_of) is not None:
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600"})
    return None


def add_cors(app: web.Application, origins_of: OriginsOf) -> None:
    """CORS headers on every response to an allowed origin (preflights: :func:`preflight`)."""
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = _allowed(request, origins_of)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            response.headers["Vary"] = "Origin"

    app.on_response_prepare.append(on_prepare)
