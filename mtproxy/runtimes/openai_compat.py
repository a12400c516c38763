"""The shared base of every runtime that speaks the OpenAI API: SSE decoding, usage in
streams, OpenAI ``usage`` extraction, model discovery from ``/v1/models``.

Runtime modules subclass :class:`OpenAICompatible` and override only what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import orjson

from ..errors import UpstreamError, normalise_upstream_error
from ..mtp import detect
from ..mtp.state import NO_EVIDENCE, Evidence
from ..sse import EventFramer
from ..wire import ApiRequest
from .base import DONE, PLAIN, PROBE_ERRORS, BackendHTTP, Batch, Event, Probe, Report, Upstream, as_int, describe


def model_ids(data: Any) -> tuple[str, ...] | None:
    """Model ids from an OpenAI ``/v1/models`` list body."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return tuple(m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str))
    return None


def parse_event(raw: bytes) -> Any:
    """The data of one SSE event (without its blank line): dict, DONE, or None."""
    if raw.startswith(b"data: ") and b"\n" not in raw:
        data = raw[6:]
    else:
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return None
    if data == b"[DONE]":
        return DONE
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# Events carrying any of these need the proxy's attention (usage to read, the end of the stream,
# errors, tool calls); a block of events without them is relayed as it is, and its content chunks
# are counted without parsing a byte of JSON. A runtime adds the fields it reports figures in
# (llama.cpp "timings", vLLM "metrics"): every marker is one more scan of every byte relayed.
ATTENTION = (b'"usage"', b"[DONE]", b'"error"', b'"tool_calls"', b"event:")
# Fields carrying generated text, per endpoint kind, as key suffixes: `content":"` counts both
# "content" and "reasoning_content" in one scan.
_TEXT_FIELDS = {"chat": (b"content", b'"reasoning'), "completions": (b'"text',)}


def _text_markers(kind: str, spaced: bool) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(field with text, field with empty text) markers, compact (pydantic, llama.cpp) or spaced
    (json.dumps) JSON."""
    sep = b'": "' if spaced else b'":"'
    fields = _TEXT_FIELDS.get(kind, ())
    return tuple(f + sep for f in fields), tuple(f + sep + b'"' for f in fields)


def _needs_attention(data: bytes, markers: tuple[bytes, ...]) -> bool:
    for marker in markers:
        if marker in data:
            return True
    return False


def _first_attention(data: bytes, markers: tuple[bytes, ...]) -> int:
    """Where the first marker needing attention starts; -1 when there is none."""
    first = -1
    for marker in markers:
        at = data.find(marker)
        if at >= 0 and (first < 0 or at < first):
            first = at
    return first


def _texts(data: bytes, markers: tuple[tuple[bytes, ...], tuple[bytes, ...]]) -> int:
    """How many text fields with something in them: one per content chunk."""
    n = 0
    for marker in markers[0]:
        n += data.count(marker)
    for marker in markers[1]:
        n -= data.count(marker)
    return n


def has_content(obj: Any) -> bool:
    """Whether one parsed OpenAI event carries generated content (text, reasoning, tool calls)."""
    if obj.__class__ is not dict:
        return False
    choices = obj.get("choices")
    if not choices:
        return False
    choice = choices[0]
    delta = choice.get("delta")
    if delta is not None:
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
                    or delta.get("tool_calls"))
    return bool(choice.get("text"))


class SSEDecoder:
    """OpenAI SSE in, OpenAI events out, each keeping the runtime's own bytes.

    Fast path: a block of whole events none of which needs attention comes out as one raw block
    with a content count; otherwise events that need attention are parsed (all of them with
    ``parse_all``), the others pass as PLAIN.
    """

    __slots__ = ("_framer", "_observe", "_report", "_parse_all", "_kind", "_markers", "_attention")

    def __init__(self, observe: Any, report: Report, parse_all: bool = False, kind: str = "chat",
                 attention: tuple[bytes, ...] = ATTENTION) -> None:
        self._framer = EventFramer()
        self._attention = attention
        self._observe = observe
        self._report = report
        self._parse_all = parse_all
        self._kind = kind
        self._markers: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None  # set by the first event

    def feed(self, data: bytes) -> Batch | None:
        complete = self._framer.feed(data)
        return self._batch(complete) if complete else None

    def flush(self) -> Batch | None:
        tail = self._framer.flush()
        return self._batch(tail) if tail else None

    def _batch(self, complete: bytes) -> Batch:
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n")
        markers = self._markers
        if markers is None:  # a runtime writes all its JSON one way: compact or spaced
            markers = self._markers = _text_markers(self._kind, b'": ' in complete[:complete.find(b"\n\n")])
        parse_all = self._parse_all
        events: list[Event] = []
        content = 0
        rest = complete
        if not parse_all:
            first = _first_attention(complete, self._attention)
            if first < 0:
                return Batch(complete, None, _texts(complete, markers))
            # the plain events before the first one needing attention pass as one block
            boundary = complete.rfind(b"\n\n", 0, first)
            if boundary >= 0:
                cut = boundary + 2
                events.append((complete[:cut], PLAIN))
                content = _texts(complete[:cut], markers)
                rest = complete[cut:]
        observe, report = self._observe, self._report
        for part in rest.split(b"\n\n"):
            if not part:
                continue
            if parse_all or _needs_attention(part, self._attention):
                obj = parse_event(part)
                if obj.__class__ is dict:
                    observe(obj, report)
                    content += has_content(obj)
            else:
                obj = PLAIN
                content += _texts(part, markers) > 0
            events.append((part + b"\n\n", obj))
        return Batch(complete, events, content)


def observe_usage(obj: dict[str, Any], report: Report) -> None:
    """OpenAI ``usage``: prompt and completion tokens."""
    usage = obj.get("usage")
    if usage:
        prompt = as_int(usage.get("prompt_tokens"))
        if prompt is not None:
            report.prompt_tokens = prompt
        completion = as_int(usage.get("completion_tokens"))
        if completion is not None:
            report.completion_tokens = completion


class OpenAICompatible:
    """A runtime that serves the OpenAI API under ``/v1``.

    ``health_path`` None: the runtime has no health endpoint and ``/v1/models`` answers for it.
    ``version_path`` None: it does not report a version.
    """

    name: ClassVar[str] = "openai"
    health_path: ClassVar[str | None] = None
    version_path: ClassVar[str | None] = None
    # Request fields this runtime rejects; None: it accepts (and ignores) unknown fields.
    accepted_fields: ClassVar[dict[str, frozenset[str]] | None] = None
    # Fields mtproxy itself understands as extensions (Ollama `options`); never sent to
    # runtimes that do not know them.
    extension_fields: ClassVar[tuple[str, ...]] = ("options",)
    # Stream events with any of these are parsed (``observe``); the others are relayed unread.
    attention: ClassVar[tuple[bytes, ...]] = ATTENTION

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        try:
            if self.health_path is not None:
                status, _ = await http.get(self.health_path)
                if status != 200:
                    return Probe(False, f"{self.health_path} answered HTTP {status}")
            version = await self._version(http)
            models = None
            if discover or self.health_path is None:
                status, data = await http.get("/v1/models")
                if status != 200:
                    return Probe(False, f"/v1/models answered HTTP {status}")
                models = model_ids(data) if discover else None
        except PROBE_ERRORS as exc:
            return Probe(False, describe(exc))
        return Probe(True, models=models, version=version)

    async def _version(self, http: BackendHTTP) -> str | None:
        if self.version_path is None:
            return None
        status, data = await http.get(self.version_path)
        return self.version_from(data) if status == 200 else None

    def version_from(self, data: Any) -> str | None:
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version is not None else None

    async def show(self, http: BackendHTTP, model: str) -> dict[str, Any] | None:
        return None

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[detect.Trained | None, Evidence]:
        return None, NO_EVIDENCE

    def prepare(self, req: ApiRequest) -> Upstream:
        payload = req.payload
        changes: dict[str, Any] = {}
        if req.stream and not req.client_usage:  # always ask for usage: token counts are exact
            changes["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        drop = self._dropped_fields(req, payload)
        if not changes and not drop:
            return Upstream(req.endpoint.path, req.body())
        body = {k: v for k, v in payload.items() if k not in drop}
        body.update(changes)
        return Upstream(req.endpoint.path, orjson.dumps(body))

    def _dropped_fields(self, req: ApiRequest, payload: dict[str, Any]) -> Iterable[str]:
        if self.accepted_fields is not None:
            accepted = self.accepted_fields[req.endpoint.kind]
            return [k for k in payload if k not in accepted]
        return [k for k in self.extension_fields if k in payload]

    def observe(self, obj: dict[str, Any], report: Report) -> None:
        """Fill ``report`` from one response object or stream chunk."""
        observe_usage(obj, report)

    def stream_decoder(self, req: ApiRequest, report: Report, *, parse_all: bool = False) -> SSEDecoder:
        return SSEDecoder(self.observe, report, parse_all, req.endpoint.kind, self.attention)

    def decode_body(self, req: ApiRequest, body: bytes, report: Report) -> bytes:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if isinstance(obj, dict):
            self.observe(obj, report)
        return body

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        return normalise_upstream_error(status, body)
