"""The one seam between the proxy core and a runtime: the :class:`Runtime` protocol.

Nothing outside ``mtproxy/runtimes/`` branches on a runtime's name; it asks the backend's
``Runtime`` object instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

from ..errors import UpstreamError, normalise_upstream_error


@dataclass(frozen=True, slots=True)
class Probe:
    """What one health/discovery round learnt about a backend."""

    up: bool
    detail: str = "ok"
    models: tuple[str, ...] | None = None  # None: not asked or not known
    version: str | None = None


class BackendHTTP:
    """Bounded GETs against one backend, for probes (never on the request path)."""

    __slots__ = ("session", "base_url", "headers", "timeout")

    def __init__(self, session: aiohttp.ClientSession, base_url: URL, headers: dict[str, str],
                 timeout: float) -> None:
        self.session = session
        self.base_url = base_url
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``; returns (status, parsed JSON or None). Raises ``OSError``,
        ``aiohttp.ClientError`` or ``TimeoutError`` when the backend cannot be reached."""
        async with self.session.get(self.base_url.join(URL(path)), headers=self.headers,
                                    timeout=self.timeout) as resp:
            body = await resp.read()
        try:
            return resp.status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return resp.status, None


class Runtime(Protocol):
    """What the core needs from a runtime adapter."""

    name: str

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        """Liveness (the runtime's own health endpoint) and, when ``discover``, its model list."""
        ...

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        """The runtime's error body as the one OpenAI error shape."""
        ...


PROBE_ERRORS = (OSError, aiohttp.ClientError, asyncio.TimeoutError)


def model_ids(data: Any) -> tuple[str, ...] | None:
    """Model ids from an OpenAI ``/v1/models`` list body."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return tuple(m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str))
    return None


class OpenAICompatible:
    """A runtime that serves the OpenAI API under ``/v1`` and a health endpoint.

    ``health_path`` None means the runtime has no health endpoint and ``/v1/models`` answers for it.
    """

    def __init__(self, name: str, *, health_path: str | None = "/health") -> None:
        self.name = name
        self.health_path = health_path

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        try:
            if self.health_path is not None:
                status, _ = await http.get(self.health_path)
                if status != 200:
                    return Probe(False, f"{self.health_path} answered HTTP {status}")
            if not discover and self.health_path is not None:
                return Probe(True)
            status, data = await http.get("/v1/models")
        except PROBE_ERRORS as exc:
            return Probe(False, describe(exc))
        if status != 200:
            return Probe(False, f"/v1/models answered HTTP {status}")
        return Probe(True, models=model_ids(data) if discover else None)

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        return normalise_upstream_error(status, body)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection-level failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
