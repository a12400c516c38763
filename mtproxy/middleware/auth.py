"""Client and admin API keys: ``Authorization: Bearer <key>`` (or ``x-api-key``).

Client keys (``server.api_keys``, ``server.api_keys_file``) guard the API when any is set; admin
keys (``server.admin_keys``) guard the endpoints that change state (``/mtproxy/reload``), which are
off without one. Liveness and readiness stay open; ``/metrics`` too unless
``server.metrics_auth``. Keys are compared in constant time and never logged.

The page (``/ui``) logs in once with a key and then sends a session cookie instead
(session.py): it counts as the key it was made with, for a POST only with the session's CSRF
token in ``X-CSRF-Token``. The page's shell and its static files are open (they hold no data);
what it shows comes from the guarded ``/mtproxy/*`` routes.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ..config import Config
from ..errors import ProxyError, Unauthorized
from .session import COOKIE, CSRF_HEADER, Session, Sessions, csrf_ok

OPEN_PATHS = frozenset({"/", "/health", "/ready", "/openapi.json"})  # and CORS preflights (OPTIONS)
OPEN_PREFIX = "/ui"  # the page's shell, static files, login and logout: no data in them
ADMIN_PATHS = frozenset({"/mtproxy/reload", "/mtproxy/verify"})
ADMIN_ACTIONS = ("/start", "/stop")
# what the page shows, live and exported: behind a key (or the page's session) when any is set
PAGE_PATHS = frozenset({"/mtproxy/events", "/mtproxy/requests"})  # POST /mtproxy/backends/{name}/start|stop


def is_admin(path: str) -> bool:
    return path in ADMIN_PATHS or (path.startswith("/mtproxy/backends/") and path.endswith(ADMIN_ACTIONS))


class Keys:
    """The keys in force; replaced as a whole on config reload."""

    def __init__(self, config: Config) -> None:
        self.sessions = Sessions()
        self.client: list[bytes] = []
        self.admin: list[bytes] = []
        self.update(config)

    def update(self, config: Config) -> None:
        s = config.server
        client = [k.get_secret_value().encode() for k in s.api_keys]
        admin = [k.get_secret_value().encode() for k in s.admin_keys]
        if client != self.client or admin != self.admin:
            self.sessions.clear()  # a session stands for a key that may be gone now
        self.client, self.admin = client, admin
        self.metrics_auth = s.metrics_auth

    @property
    def login_required(self) -> bool:
        return bool(self.client or self.admin)

    def login(self, key: str) -> tuple[str, Session]:
        """A new session for ``key`` (raises Unauthorized): admin for an admin key."""
        if self.admin and self._match(key, self.admin):
            return self.sessions.create(admin=True)
        if self.client and self._match(key, self.client):
            return self.sessions.create(admin=False)
        raise Unauthorized("Incorrect API key provided.")

    @staticmethod
    def _match(token: str, keys: list[bytes]) -> bool:
        # aiohttp decodes header bytes that are not UTF-8 to lone surrogates ('surrogateescape'):
        # encoded the same way, the client's very bytes are compared, and no header can raise here
        candidate = token.encode("utf-8", "surrogateescape")
        # compare with every key, so timing does not tell which one nearly matched
        return sum(hmac.compare_digest(candidate, k) for k in keys) > 0

    def guards(self, path: str) -> bool:
        """Whether ``path`` needs a check at all (so an open proxy reads no header)."""
        head = path[:2]  # compared rather than two startswith calls: this runs once per request
        if path in OPEN_PATHS or (head == "/u" and (path == OPEN_PREFIX or path.startswith("/ui/"))):
            return False
        if self.client:
            return True
        # every admin, page and metrics path starts with "/m": an API request checks no more
        return head == "/m" and (is_admin(path) or (path == "/metrics" and self.metrics_auth)
                                 or (bool(self.admin) and path in PAGE_PATHS))

    def authorize(self, request: web.Request) -> None:
        """Check a guarded request: its key, else its page session (session.py)."""
        token = bearer(request)
        if not token and self.sessions and COOKIE in request.cookies:
            session = self.sessions.get(request.cookies[COOKIE])
            if session is not None:
                self._check_session(request, session)
                return
        self.check(request.path, token)

    def _check_session(self, request: web.Request, session: Session) -> None:
        if request.method not in ("GET", "HEAD") and not csrf_ok(session, request.headers.get(CSRF_HEADER, "")):
            raise ProxyError("Missing or wrong X-CSRF-Token for a request made with the page's session.",
                             status=403, type_="permission_error", code="csrf_failed")
        if is_admin(request.path) and not session.admin:
            raise ProxyError("This action needs a session opened with an admin key.",
                             status=403, type_="permission_error", code="admin_required")

    def check(self, path: str, token: str) -> None:
        if is_admin(path):
            if not self.admin:
                raise ProxyError("Admin endpoints are off: set server.admin_keys to enable them.",
                                 status=403, type_="permission_error", code="admin_disabled")
            self._require(token, self.admin)
        elif path == "/metrics":
            if self.metrics_auth:
                self._require(token, self.client + self.admin)
        elif path in PAGE_PATHS:
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
