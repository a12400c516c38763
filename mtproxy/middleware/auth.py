"""Client and admin API keys: ``Authorization: Bearer <key>`` (or ``x-api-key``).

Client keys (``server.api_keys``, ``server.api_keys_file``) guard the API when any is set; admin
keys (``server.admin_keys``) guard the endpoints that change state (``/mtproxy/reload``), which are
off without one. Liveness and readiness stay open; ``/metrics`` too unless
``server.metrics_auth``. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..config import Config
from ..errors import ProxyError, Unauthorized

OPEN_PATHS = frozenset({"/", "/health", "/ready", "/openapi.json"})  # and CORS preflights (OPTIONS)
ADMIN_PATHS = frozenset({"/mtproxy/reload"})
ADMIN_ACTIONS = ("/start", "/stop")  # POST /mtproxy/backends/{name}/start|stop


def is_admin(path: str) -> bool:
    return path in ADMIN_PATHS or (path.startswith("/mtproxy/backends/") and path.endswith(ADMIN_ACTIONS))


class Keys:
    """The keys in force; replaced as a whole on config reload."""

    def __init__(self, config: Config) -> None:
        self.update(config)

    def update(self, config: Config) -> None:
        s = config.server
        self.client = [k.get_secret_value().encode() for k in s.api_keys]
        self.admin = [k.get_secret_value().encode() for k in s.admin_keys]
        self.metrics_auth = s.metrics_auth

    @staticmethod
    def _match(token: str, keys: list[bytes]) -> bool:
        # aiohttp decodes header bytes that are not UTF-8 to lone surrogates ('surrogateescape'):
        # encoded the same way, the client's very bytes are compared, and no header can raise here
        candidate = token.encode("utf-8", "surrogateescape")
        # compare with every key, so timing does not tell which one nearly matched
        return sum(hmac.compare_digest(candidate, k) for k in keys) > 0

    def guards(self, path: str) -> bool:
        """Whether ``path`` needs a check at all (so an open proxy reads no header)."""
        if path in OPEN_PATHS:
            return False
        return bool(self.client) or is_admin(path) or (path == "/metrics" and self.metrics_auth)

    def check(self, path: str, token: str) -> None:
        if is_admin(path):
            if not self.admin:
                raise ProxyError("Admin endpoints are off: set server.admin_keys to enable them.",
                                 status=403, type_="permission_error", code="admin_disabled")
            self._require(token, self.admin)
        elif path == "/metrics":
            if self.metrics_auth:
                self._require(token, self.client + self.admin)
        elif self.client:
            self._require(token, self.client)

    def _require(self, token: str, keys: list[bytes]) -> None:
        if not token:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`.")
        if not keys or not self._match(token, keys):
            raise Unauthorized("Incorrect API key provided.")


def bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = request.headers.get("x-api-key", "")
    return token.strip()
