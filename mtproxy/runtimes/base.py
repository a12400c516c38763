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
from ..errors import UpstreamError, normalise_upstream_error
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
    body: bytes | upstream.Streamed  # streamed: a multipart form (wire.FormBody)
    content_type: str | None = None  # None: JSON (the backend's headers say so)


class BackendHTTP:
    """Bounded requests against one backend, for probes and swaps (never on the request path)."""

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

    async def request(self, method: str, path: str, json: Any = None, *,
                      timeout: float | None = None) -> tuple[int, Any]:
        status, body = await self.raw(method, path, json, timeout=timeout)
        try:
            return status, orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            return status, None

    async def raw(self, method: str, path: str, json: Any = None, *,
                  timeout: float | None = None) -> tuple[int, bytes]:
        """(status, body bytes). ``timeout``: seconds for the whole request (a model load takes
        minutes), connecting still within the probe timeout; None: the probe timeout."""
        limit = self.timeout if timeout is None else aiohttp.ClientTimeout(
            total=timeout, sock_connect=self.timeout.total)
        data = None if json is None else orjson.dumps(json)
        async with self.session.request(method, self.base_url.join(URL(path)), data=data,
                                        headers=self.headers, timeout=limit) as resp:
            return resp.status, await resp.read()


class SwapFailed(Exception):
    """A runtime refused to load or unload a model, or said the load failed; ``message`` quotes
    the runtime's own words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    # Whether the runtime loads and unloads models on request (llama.cpp router mode, Ollama,
    # vLLM sleep mode), so a group can swap it without launching a process (swap.py).
    swaps: ClassVar[bool]
    # The path of the runtime's own metrics (GET), None when it has none (Ollama, MLX-LM,
    # llama-cpp-python): read only with metrics.runtime_metrics (metrics/scrape.py).
    metrics_path: ClassVar[str | None]
    # Whether what ``mtp_probe`` reads changes once the runtime has served requests (vLLM's
    # spec_decode counters, llama.cpp's /slots types, shown after a slot's first task), so the pool
    # reads it again soon after a request while it has not said yet (backends.py).
    reprobe_mtp: ClassVar[bool]

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

    def exposition(self, body: bytes) -> str:
        """What ``metrics_path`` answered, in the Prometheus text format (TensorRT-LLM's JSON
        converted); raises ``ValueError`` when it is not in the shape this runtime writes."""
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

    async def load(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        """Load ``models`` and return once they serve; raises ``SwapFailed`` (a message quoting the
        runtime's own words) when the runtime refuses or reports a failure. The caller bounds the
        wait (asyncio.timeout) and may cancel it."""
        ...

    async def unload(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        """Free the memory of ``models`` (returns when the runtime says it is done); raises SwapFailed."""
        ...

    async def loaded(self, http: BackendHTTP, models: tuple[str, ...]) -> bool | None:
        """Whether all of ``models`` are loaded now (None: the runtime cannot tell)."""
        ...


PROBE_ERRORS = upstream.ERRORS  # what a probe's request can raise (upstream.py)
# A swap's blocking request (Ollama's load, vLLM's wake-up) may take this long; the caller bounds
# the whole swap with its own asyncio.timeout, usually far sooner.
SWAP_REQUEST_SECONDS = 3600.0
POLL_SECONDS = 0.25  # between two looks at a runtime's model status while it loads or unloads


async def swap_request(http: BackendHTTP, method: str, path: str, json: Any = None, *,
                       timeout: float | None = None) -> tuple[int, bytes]:
    """A request of a swap; a backend that cannot be reached is a :class:`SwapFailed`."""
    try:
        return await http.raw(method, path, json, timeout=timeout)
    except PROBE_ERRORS as exc:
        raise SwapFailed(f"{method} {path}: {upstream.describe(exc)}") from None


def runtime_words(method: str, path: str, status: int, body: bytes) -> str:
    """What the runtime said when it refused: its error message, and the status."""
    return f"{method} {path} answered HTTP {status}: {normalise_upstream_error(status, body).message}"


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


def int_list(value: Any) -> list[int] | None:
    """A list of non-negative ints, else None."""
    if value.__class__ is not list or not all(as_int(v) is not None and v >= 0 for v in value):
        return None
    return value


def accepted_by_position(histogram: Any) -> list[int] | None:
    """Accepted drafts by draft position from an acceptance histogram (index j: the verification
    steps that accepted exactly j drafts, as vLLM's ``acceptance_histogram`` and SGLang's
    ``spec_acceptance_histogram``): a step that accepted j drafts accepted positions 0 … j-1, so
    position i counts the steps that accepted more than i."""
    counts = int_list(histogram)
    if counts is None:
        return None
    positions, above = [], 0
    for n in reversed(counts[1:]):
        above += n
        positions.append(above)
    return positions[::-1]


def accepted_by_position_of_steps(per_step: Any) -> list[int] | None:
    """The same from the drafts each step accepted, in order (vLLM's ``per_step_accepted``)."""
    steps = int_list(per_step)
    if steps is None:
        return None
    positions = [0] * max(steps, default=0)
    for accepted in steps:
        for i in range(accepted):
            positions[i] += 1
    return positions
