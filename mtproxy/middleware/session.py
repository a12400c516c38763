"""The page's login sessions (/ui, mtproxy/ui/): a random token in an HttpOnly, SameSite=Strict
cookie stands for a key that was shown once at the login form; the key itself is never stored
in the cookie or in memory here. Each session has its CSRF token, which a request authenticated
by the cookie must echo in the ``X-CSRF-Token`` header to change anything (any POST)."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "mtproxy_ui"
CSRF_HEADER = "X-CSRF-Token"
LIFETIME = 12 * 3600.0  # seconds a session lasts
MAX_SESSIONS = 256  # the oldest goes first


@dataclass(slots=True)
class Session:
    admin: bool  # logged in with an admin key (else a client key)
    csrf: str
    expires: float


class Sessions:
    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}

    def __bool__(self) -> bool:
        return bool(self._by_token)

    def create(self, *, admin: bool) -> tuple[str, Session]:
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.pop(next(iter(self._by_token)))
        token = secrets.token_urlsafe(32)
        session = self._by_token[token] = Session(admin, secrets.token_urlsafe(24), time.monotonic() + LIFETIME)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is not None and session.expires < time.monotonic():
            del self._by_token[token]
            return None
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def clear(self) -> None:
        self._by_token.clear()


def csrf_ok(session: Session, sent: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), sent.encode("utf-8", "surrogateescape"))
