"""The one seam between the proxy core and a runtime: the :class:`Runtime` protocol.

Nothing outside ``mtproxy/runtimes/`` branches on a runtime's name; it asks the backend's
``Runtime`` object instead. Everything a runtime hands back is in OpenAI's format by the time it
leaves its adapter: SSE events as ``(raw bytes, parsed object)`` pairs, bodies as JSON bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from yarl import URL

from ..errors import UpstreamError
from ..mtp.detect import Trained
from ..mtp.state import Evidence
from ..wire import ApiRequest


@dataclass(frozen=True, slots=True)
class Probe:
    """What one health/discovery round learnt about a backend."""

    up: bool
    detail: str = "ok"
    models: tuple[str, ...] | None = None  # None: not asked or not known
    version: str | None = None


@dataclass(slots=True)
class Report:
    """What the runtime itself reported about one request. ``None`` means it did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    draft_tokens: int | None = None  # speculative tokens proposed (MTP heads or a draft model)
    accepted_tokens: int | None = None  # of those, accepted
    tokens_per_step: float | None = None  # runtime's own tokens per decode iteration
    prompt_seconds: float | None = None  # runtime's own prompt-processing time
    decode_seconds: float | None = None  # runtime's own generation time


class _Done:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


DONE: Any = _Done()  # the parsed form of `data: [DONE]`

# One stream event in OpenAI's format: the bytes the runtime sent for it (None when the adapter
# made the event up, e.g. translating NDJSON), and its parsed data: a dict, DONE, or None for
# events without JSON data (comments, keep-alives).
Event = tuple[bytes | None, Any]


class _Plain:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PLAIN"


# The parsed form of an event the decoder did not need to parse: a plain content chunk.
PLAIN: Any = _Plain()


class Batch:
    """The complete events one upstream read finished.

    ``raw``: the runtime's bytes for them (None when the adapter made the events up);
    ``events``: the events one by one, or None when every one is a plain content chunk (the
    fast path: nothing in them needs the proxy's attention, and ``raw`` is relayed as it is);
    ``content``: how many carry generated content.
    """

    __slots__ = ("raw", "events", "content")

    def __init__(self, raw: bytes | None, events: list[Event] | None, content: int) -> None:
        self.raw = raw
        self.events = events
        self.content = content


class StreamFailure(Exception):
    """The runtime reported an error inside a stream that had already started."""


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> Batch | None:
        """Upstream bytes in, the complete OpenAI events they finish out (None: none yet)."""
        ...

    def flush(self) -> Batch | None:
        """At upstream EOF: whatever a trailing partial event still completes."""
        ...


@dataclass(frozen=True, slots=True)
class Upstream:
    """The request as the runtime wants it."""

    path: str
    body: bytes


class BackendHTTP:
    """Bounded requests against one backend, for probes (never on the request path)."""

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
        return await self.request("GET", path)

    async def text(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base_url.join(URL(path)), headers=self.headers,
                                    timeout=self.timeout) as resp:
            return resp.status, await resp.text(errors="replace")

    async def request(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        data = None if json is None else orjson.dumps(json)
        async with self.session.request(method, self.base_url.join(URL(path)), data=data,
                                        headers=self.headers, timeout=self.timeout) as resp:
            body = await resp.read()
        try:
            return resp.status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return resp.status, None


class Runtime(Protocol):
    """What the core needs from a runtime adapter."""

    name: str

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        """Liveness (the runtime's own health endpoint), version, and when ``discover`` the
        model list."""
        ...

    async def show(self, http: BackendHTTP, model: str) -> dict[str, Any] | None:
        """The runtime's own description of a model (Ollama ``/api/show``), if it has one."""
        ...

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[Trained | None, Evidence]:
        """The runtime's own word on ``model``: is it MTP-trained, and is MTP drafting on."""
        ...

    def prepare(self, req: ApiRequest) -> Upstream:
        """The request for this runtime: its path, usage asked for in streams, fields it
        rejects removed, another API translated to."""
        ...

    def stream_decoder(self, req: ApiRequest, report: Report, *, parse_all: bool = False) -> StreamDecoder:
        """Turns the runtime's stream into OpenAI events, filling ``report`` on the way;
        ``parse_all``: every event parsed (a client format that rewrites every event needs it)."""
        ...

    def decode_body(self, req: ApiRequest, body: bytes, report: Report) -> bytes:
        """The runtime's non-streaming answer as an OpenAI JSON body; fills ``report``."""
        ...

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        """The runtime's error body as the one OpenAI error shape."""
        ...


PROBE_ERRORS = (OSError, aiohttp.ClientError, asyncio.TimeoutError)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection-level failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
