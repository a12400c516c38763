"""Client API keys: ``Authorization: Bearer <key>`` (or ``x-api-key``) when keys are configured."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import Unauthorized

# Liveness, readiness and scraping stay open so orchestrators and Prometheus need no secret.
OPEN_PATHS = frozenset({"/", "/health", "/ready", "/metrics"})


def auth_middleware(keys: Iterable[str]) -> Middleware:
    encoded = [k.encode() for k in keys]

    def known(candidate: str) -> bool:
        c = candidate.encode()
        # compare against every key so timing does not reveal which one nearly matched
        return sum(hmac.compare_digest(c, k) for k in encoded) > 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                token = request.headers.get("x-api-key", "")
            if not token:
                raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
            if not known(token.strip()):
                raise Unauthorized("Incorrect API key provided.")
        return await handler(request)

    return middleware
