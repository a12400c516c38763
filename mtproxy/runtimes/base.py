"""The one seam between the proxy core and a runtime: the :class:`Runtime` protocol.

Nothing outside ``mtproxy/runtimes/`` branches on a runtime's name; it asks the backend's
``Runtime`` object instead. Everything a runtime hands back is in OpenAI's format by the time it
leaves its adapter (``mtproxy.stream.events``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiohttp
import orjson
from yarl import URL

from .. import upstream
from ..errors import UpstreamError
from ..mtp.detect import Trained
from ..mtp.registry import Support, version_key
from ..mtp.state import Evidence
from ..stream.events import Report, StreamDecoder
from ..wire import ApiRequest, Native


@dataclass(frozen=True, slots=True)
class Probe:
    """What one health/discovery round learnt about a backend."""

    up: bool
    detail: str = "ok"
    models: tuple[str, ...] | None = None  # None: not asked or not known
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """The request as the runtime wants it."""

    path: str
    body: bytes
    content_type: str | None = None  # None: JSON (the backend's headers say so)


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

    name: ClassVar[str]  # the config's `runtime:` (runtimes/__init__.py ADAPTERS)
    # Whether the model list is asked for again at every health check, or only when the backend
    # first appears or comes back up (a runtime whose model listing disturbs running requests).
    rediscover: ClassVar[bool]
    # The MTP registry's row for this runtime (mtp/registry.py): since when, how it is switched on.
    mtp_support: ClassVar[Support]
    # Client APIs besides chat/completions/embeddings the runtime serves itself ("messages":
    # Anthropic Messages, "responses": OpenAI Responses) -> the first version that serves it
    # ("" when every version the adapter supports does, or none is recorded).
    native_apis: ClassVar[dict[str, str]]
    # Whether requests to the rest of the local API (Endpoint.relay: rerank, tokenize, audio,
    # images) go to the runtime as they came, to the same path; False: it serves none of them.
    relays_local: ClassVar[bool]

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

    def relays(self, native: Native) -> bool:
        """Whether this runtime's own serving of ``native.kind`` (one of ``native_apis``) has
        every capability the request asks for; when not, the request is translated instead."""
        ...

    def prepare(self, req: ApiRequest) -> Upstream:
        """The request for this runtime: its path, usage asked for in streams, fields it
        rejects removed, another API translated to; the client's own request when
        ``req.relayed``."""
        ...

    async def count_tokens(self, http: BackendHTTP, req: ApiRequest) -> int | None:
        """The prompt tokens of ``req`` by the runtime's own tokenizer (its native counting
        route when ``req.relayed``); None when the runtime cannot count."""
        ...

    def stream_decoder(self, req: ApiRequest, report: Report, *, parse_all: bool = False,
                       texts: bool = False) -> StreamDecoder:
        """Turns the runtime's stream into OpenAI events, filling ``report`` on the way;
        ``parse_all``: every event parsed (a client format that rewrites every event needs it);
        ``texts``: runs of content chunks cut into their texts where the decoder finds them
        (``Batch.run``, for a format that rewrites them; a hint a decoder may ignore)."""
        ...

    def decode_body(self, req: ApiRequest, body: bytes, report: Report) -> bytes:
        """The runtime's non-streaming answer as an OpenAI JSON body; fills ``report``."""
        ...

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        """The runtime's error body as the one OpenAI error shape."""
        ...


PROBE_ERRORS = upstream.ERRORS  # what a probe's request can raise (upstream.py)

def native_kinds(native_apis: dict[str, str], version: str | None) -> frozenset[str]:
    """The client APIs a runtime reporting ``version`` serves itself: those it declares, unless
    the version it reports is a release number older than the first that serves one. A build
    without a release number (llama.cpp's ``b1-<commit>`` from a source tree) or no version at
    all is taken at its word: what serves the route is relayed."""
    kinds = set()
    for kind, since in native_apis.items():
        have = version_key(version) if version else None
        need = version_key(since) if since else None
        if have is None or need is None or have[0] != need[0] or have >= need:
            kinds.add(kind)
    return frozenset(kinds)


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
