"""The Anthropic Messages API served to Anthropic clients, in front of any backend.

- ``POST /v1/messages``, streaming and not. A backend whose runtime serves the API itself
  (``Runtime.native_apis``; the proxy decides per attempt, ``Backend.relays``) gets the client's
  own body, and its answer is relayed as the runtime wrote it (:class:`AnthropicRelay`; measured
  by stream/anthropic.py). Any other gets the request translated to chat completions
  (front/anthropic_wire.py), and the OpenAI events its adapter yields are written as Anthropic's
  (:class:`AnthropicStream`): message_start, ping, content_block_start/delta/stop per block in
  order (text_delta, thinking_delta, input_json_delta), message_delta with the stop reason and
  usage, message_stop; a failure after the first byte is an ``error`` event.
- ``POST /v1/messages/count_tokens``: by the backend's own tokenizer (Proxy.count_tokens).
- ``GET /v1/models`` and ``/v1/models/{id}`` in Anthropic's shape when the client sends
  ``anthropic-version`` (front/openai.py asks :func:`wants_anthropic`).
Errors: ``{"type": "error", "error": {"type", "message"}}``, the type from the HTTP status.
May import: the proxy's layers below (formats, wire, stream, errors, state).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest, ModelNotFound, ProxyError, UpstreamError
from ..state import POOL, PROXY
from ..stream.events import DONE, PLAIN, Batch, Report, Run
from ..stream.tap import Template
from ..wire import CHAT, MESSAGES, ApiRequest, Endpoint, Native, deeply_nested, from_payload, too_deep
from . import anthropic_wire as wire

PREFIX = "/v1/messages"  # the routes answered in this format, errors included
COUNT_PATH = "/v1/messages/count_tokens"
VERSION_HEADER = "anthropic-version"
JSON = "application/json"


def wants_anthropic(request: web.Request) -> bool:
    """Whether ``request`` is answered in Anthropic's shape: a Messages route, or a model
    listing asked for by a client that sends ``anthropic-version``."""
    path = request.path
    return path.startswith(PREFIX) or (path.startswith("/v1/models") and VERSION_HEADER in request.headers)


def error_body(err: ProxyError) -> tuple[bytes, str]:
    return orjson.dumps(wire.error_body(err.message, wire.error_type(err.status))), JSON


def _event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def error_event(body: dict[str, Any]) -> bytes:
    """The ``error`` event that ends a stream, from the proxy's OpenAI-shaped error body."""
    inner = body.get("error") or {}
    type_ = "timeout_error" if inner.get("code") == "upstream_timeout" else "api_error"
    return _event(b"error", wire.error_body(str(inner.get("message") or "error"), type_))


PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTAS = {"text": (b"text_delta", b"text"), "thinking": (b"thinking_delta", b"thinking"),
           "tool": (b"input_json_delta", b"partial_json")}


# The fields of a plain chat chunk (one the tap did not parse: no tool calls, usage, error) that
# matter here, read from its bytes: the text fields (stream/tap.py TEXT_FIELDS) and the finish
# reason. Inside a JSON string every quote is escaped, so a match is always a key and its value.
_TEXT_MARKERS = (b'"content":"', b'"content": "')
_PLAIN_FIELDS = re.compile(rb'"(content|reasoning_content|reasoning|finish_reason|stop_reason)": ?"((?:[^"\\]|\\.)*)"')


def _delta_prefix(index: int, kind: str) -> bytes:
    """The bytes of a content_block_delta event before its JSON string: one string per chunk
    is all that is encoded."""
    delta_type, field = _DELTAS[kind]
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(index).encode()
            + b',"delta":{"type":"' + delta_type + b'","' + field + b'":')


class AnthropicRelay:
    """A runtime's own Anthropic stream, relayed as it came."""

    __slots__ = ("finished",)
    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.finished = False

    def encode(self, batch: Batch) -> bytes:
        if batch.events is not None:
            for _raw, obj in batch.events:
                if obj.__class__ is dict and obj.get("type") in ("message_stop", "error"):
                    self.finished = True
        return batch.raw or b""

    def error(self, body: dict[str, Any]) -> bytes:
        return error_event(body)

    async def settle(self) -> None:
        """Nothing to keep before the stream's last bytes go out."""


class AnthropicStream:
    """OpenAI chat events in, Anthropic Messages events out. One block is open at a time; block
    indices count up from 0 in the order the blocks start (the SDKs index their content by it)."""

    __slots__ = ("model", "stops", "report", "finished", "started", "index", "block", "prefix", "tools",
                 "usage", "choice", "used_tools", "template", "learnt")
    content_type = "text/event-stream"

    def __init__(self, req: ApiRequest, report: Report) -> None:
        self.model = req.payload["model"]
        self.stops = req.payload.get("stop")
        self.report = report
        self.finished = False
        self.started = False
        self.index = -1  # the open block's index
        self.block: Any = None  # the open block: "text", "thinking" or ("tool", OpenAI call index)
        self.prefix = b""  # the open block's delta prefix
        self.tools: dict[Any, int] = {}  # OpenAI tool call index -> its block index
        self.usage: Any = None
        self.choice: dict[str, Any] = {}  # the finish_reason (and vLLM's stop_reason) seen
        self.used_tools = False
        self.template: Template | None = None  # the runtime's plain text chunk, but for its text
        self.learnt = 0  # attempts at learning the template

    def encode(self, batch: Batch) -> bytes:
        if self.finished:
            return b""
        out: list[bytes] = []
        if not self.started:
            self.started = True
            out.append(_event(b"message_start", {"type": "message_start", "message": {
                "id": wire.new_id("msg"), "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": None, "stop_sequence": None,
                # the counts come with the runtime's usage, at the end: message_delta repeats them all
                "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                          "output_tokens": 0}}}))
            out.append(PING)
        events, run = batch.events, batch.run
        if events is None:  # plain content chunks only (the tap's fast path)
            if run is not None and run.data is batch.raw:
                self._run(run, out)
            else:
                self._plain(batch.raw or b"", out)
            return b"".join(out)
        for raw, obj in events:
            if obj.__class__ is dict:
                self._chunk(obj, out)
                if self.finished:
                    break
            elif obj is PLAIN:
                if run is not None and raw is run.data:
                    self._run(run, out)
                else:
                    self._plain(raw or b"", out)
            elif obj is DONE:
                self._finish(out)
                break
        return b"".join(out)

    def _plain(self, data: bytes, out: list[bytes]) -> None:
        """Plain chat chunks, their texts moved from their bytes into Anthropic's deltas: a JSON
        string's escaped contents stay valid in another JSON string, and nothing is parsed. A run
        of chunks that differ only in their text (the template learnt from the first) is cut
        into its texts and joined with the bytes of Anthropic's deltas between them, in a few C
        passes; the run is checked by building it again from its texts (byte for byte, and no
        quote in any text) before it is used."""
        template = self.template
        if template is None:
            if self.learnt >= 8:  # no two chunks alike (per-token timings in each): read fields
                self._fields(data, out)
                return
            self.learnt += 1
            template = self.template = self._learn(data)
            if template is None:
                self._fields(data, out)
                return
        prefix, end = template.prefix, template.end
        events = data.split(b"\n\n")  # the last is empty: every event ends with a blank line
        first, last = 0, len(events) - 1
        while first < last and not events[first].startswith(prefix):
            first += 1
        suffix = end[:-2]
        while last > first and not events[last - 1].endswith(suffix):
            last -= 1
        if last <= first:
            self._fields(data, out)
            return
        cut, stop = len(prefix), -len(suffix)
        texts = [event[cut:stop] for event in events[first:last]]
        run = data if first == 0 and last == len(events) - 1 else b"\n\n".join(events[first:last]) + b"\n\n"
        joined = b"".join(texts)
        if b'"' in joined or prefix + (end + prefix).join(texts) + end != run:
            self.template = None  # learnt from a chunk unlike the others: learn again
            self._fields(data, out)  # not all alike: read field by field
            return
        if first:
            self._fields(b"\n\n".join(events[:first]) + b"\n\n", out)
        if joined:
            if not all(texts):
                texts = [text for text in texts if text]  # empty texts (a role chunk's) add nothing
            if self.block != "text":
                self._open("text", {"type": "text", "text": ""}, "text", out)
            between = b'"}}\n\n' + self.prefix + b'"'
            out.append(self.prefix + b'"' + between.join(texts) + b'"}}\n\n')
        if last < len(events) - 1:
            self._fields(b"\n\n".join(events[last:]), out)

    def _run(self, run: Run, out: list[bytes]) -> None:
        """A run of content chunks the decoder cut into their texts (checked there against the
        stream's template): joined with the bytes of Anthropic's deltas between them."""
        if not run.joined:
            return
        texts = run.texts
        if not all(texts):
            texts = [text for text in texts if text]  # empty texts add nothing
        if self.block != "text":
            self._open("text", {"type": "text", "text": ""}, "text", out)
        between = b'"}}\n\n' + self.prefix + b'"'
        out.append(self.prefix + b'"' + between.join(texts) + b'"}}\n\n')

    @staticmethod
    def _learn(data: bytes) -> Template | None:
        """The template of the first or second event (the first may be a role chunk)."""
        start = 0
        for _ in range(2):
            cut = data.find(b"\n\n", start)
            if cut < 0:
                return None
            template = Template.learn(data[start:cut], _TEXT_MARKERS)
            if template is not None:
                return template
            start = cut + 2
        return None

    def _fields(self, data: bytes, out: list[bytes]) -> None:
        for field, value in _PLAIN_FIELDS.findall(data):
            if not value:
                continue
            if field == b"content":
                if self.block != "text":
                    self._open("text", {"type": "text", "text": ""}, "text", out)
            elif field == b"finish_reason" or field == b"stop_reason":
                self.choice = {**self.choice, field.decode(): value.decode()}
                continue
            elif self.block != "thinking":
                self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, "thinking", out)
            out.append(self.prefix + b'"' + value + b'"}}\n\n')

    def _open(self, key: Any, block: dict[str, Any], kind: str, out: list[bytes]) -> None:
        if self.block is not None:
            out.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
                       + str(self.index).encode() + b"}\n\n")
        self.index += 1
        self.block = key
        self.prefix = _delta_prefix(self.index, kind)
        out.append(_event(b"content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block}))

    def _chunk(self, obj: dict[str, Any], out: list[bytes]) -> None:
        usage = obj.get("usage")
        if usage:
            self.usage = usage
        choices = obj.get("choices")
        if not choices:
            if obj.get("error") is not None:  # the runtime's error event
                error = obj["error"]
                message = error.get("message") if error.__class__ is dict else error
                out.append(_event(b"error", wire.error_body(str(message), "api_error")))
                self.finished = True
            return
        choice = choices[0]
        if choice.__class__ is not dict:
            return
        delta = choice.get("delta")
        if delta.__class__ is dict:
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking and thinking.__class__ is str:
                if self.block != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, "thinking", out)
                out.append(self.prefix + orjson.dumps(thinking) + b"}}\n\n")
            text = delta.get("content")
            if text and text.__class__ is str:
                if self.block != "text":
                    self._open("text", {"type": "text", "text": ""}, "text", out)
                out.append(self.prefix + orjson.dumps(text) + b"}}\n\n")
            calls = delta.get("tool_calls")
            if calls and calls.__class__ is list:
                self._tool_calls(calls, out)
        if choice.get("finish_reason"):
            self.choice = choice

    def _tool_calls(self, calls: list[Any], out: list[bytes]) -> None:
        for call in calls:
            if call.__class__ is not dict:
                continue
            fn = call.get("function")
            fn = fn if fn.__class__ is dict else {}
            key = ("tool", call.get("index", 0))
            if key not in self.tools:
                self.used_tools = True
                self._open(key, {"type": "tool_use", "id": call.get("id") or wire.new_id("toolu"),
                                 "name": fn.get("name") or "", "input": {}}, "tool", out)
                self.tools[key] = self.index
                out.append(self.prefix + b'""}}\n\n')  # as Anthropic opens a tool's input
            args = fn.get("arguments")
            if args and args.__class__ is str:
                # a call resumed after another began (runtimes stream calls one after another)
                prefix = self.prefix if self.block == key else _delta_prefix(self.tools[key], "tool")
                out.append(prefix + orjson.dumps(args) + b"}}\n\n")

    def _finish(self, out: list[bytes]) -> None:
        if self.block is not None:
            out.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
                       + str(self.index).encode() + b"}\n\n")
            self.block = None
        reason, sequence = wire.stop_of(self.choice, self.stops)
        if reason == "end_turn" and self.used_tools:
            reason = "tool_use"
        report = self.report
        out.append(_event(b"message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": wire.usage_from_chat(self.usage, report.prompt_tokens, report.completion_tokens)}))
        out.append(_STOP)
        self.finished = True

    def error(self, body: dict[str, Any]) -> bytes:
        return error_event(body)

    async def settle(self) -> None:
        """Nothing to keep before the stream's last bytes go out."""


class AnthropicFormat:
    """POST /v1/messages (``count``: /v1/messages/count_tokens, which only parses)."""

    parse_all = False  # plain content chunks are rewritten from their bytes (AnthropicStream._plain)
    texts = True  # and a long run of them from the texts the decoder cut out (AnthropicStream._run)
    error_body = staticmethod(error_body)

    def __init__(self, count: bool = False) -> None:
        self.count = count

    def parse(self, raw: bytes, endpoint: Endpoint) -> ApiRequest:
        body = _json(raw)
        req = from_payload(wire.chat_from_messages(body, count=self.count), CHAT)
        req.native = Native("messages", COUNT_PATH if self.count else PREFIX, body, raw)
        return req

    def stream_encoder(self, req: ApiRequest, report: Report) -> AnthropicRelay | AnthropicStream:
        return AnthropicRelay() if req.relayed else AnthropicStream(req, report)

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        if req.relayed:
            return body, JSON
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("The backend sent a body that is not JSON.", status=502) from None
        if not isinstance(obj, dict):
            raise UpstreamError("The backend sent an unexpected body.", status=502)
        payload = req.payload
        message = wire.message_from_chat(obj, payload["model"], payload.get("stop"), report.prompt_tokens,
                                         report.completion_tokens)
        return orjson.dumps(message), JSON

    async def settle(self, req: ApiRequest) -> None:
        """Nothing to keep before the answer goes out."""

    def loaded(self, req: ApiRequest) -> bytes:  # pragma: no cover (parse never asks for it)
        raise InvalidRequest("Nothing to generate.")


MESSAGES_FORMAT = AnthropicFormat()
COUNT_FORMAT = AnthropicFormat(count=True)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if too_deep(body, raw):
        raise deeply_nested("The request body")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


# --- routes --------------------------------------------------------------------------------------

async def messages(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].serve(request, MESSAGES, MESSAGES_FORMAT)


async def count_tokens(request: web.Request) -> web.Response:
    req = COUNT_FORMAT.parse(await request.read(), MESSAGES)
    return web.json_response({"input_tokens": await request.app[PROXY].count_tokens(req)})


def _model_info(name: str) -> dict[str, Any]:
    # no release date is known for a local model: the epoch, as Anthropic's docs allow
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z",
            "lifecycle": "active"}


async def list_models(request: web.Request) -> web.Response:
    """Anthropic's page of models (``limit``, ``after_id``, ``before_id``)."""
    names = list(request.app[POOL].model_names())
    query = request.query
    try:
        limit = min(max(int(query.get("limit", "20")), 1), 1000)
    except ValueError:
        raise InvalidRequest("limit: Input should be a valid integer", param="limit") from None
    start, end = 0, len(names)
    if query.get("after_id") in names:
        start = names.index(query["after_id"]) + 1
    if query.get("before_id") in names:
        end = names.index(query["before_id"])
        start = max(start, end - limit)
    page = names[start:end][:limit]
    return web.json_response({"data": [_model_info(n) for n in page], "has_more": start + len(page) < end,
                              "first_id": page[0] if page else None, "last_id": page[-1] if page else None})


async def get_model(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    name = request.match_info["model"]
    if pool.aliases.get(name, name) not in pool.by_model:
        raise ModelNotFound(f"model: {name}")
    return web.json_response(_model_info(name))


def add_routes(app: web.Application) -> None:
    app.router.add_post(PREFIX, messages)
    app.router.add_post(COUNT_PATH, count_tokens)
