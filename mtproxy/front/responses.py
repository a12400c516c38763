"""The OpenAI Responses API served to its clients: ``POST /v1/responses`` (streamed or not),
``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

A request becomes a chat completions request (front/responses_wire.py) routed like any other,
and the OpenAI events of the answer are written back as the typed Responses events, each with
its ``sequence_number``, ``output_index``, ``content_index``, ``logprobs: []``, the whole
Response object on ``response.created``/``.completed`` (the published schema, notes §2.4, §4.5).
Where nothing would be lost, the client's own request rides along (``ApiRequest.native``): a
backend whose runtime serves /v1/responses itself gets that one, and its events are relayed with
the fields the schema requires and the runtime left out filled in, renumbered in order. Either
way, with ``store`` (the default) the response and its conversation go to the response store
(front/response_store.py) before the client gets its last byte.
Errors are OpenAI's ``{"error": {...}}``; a stream that fails after its first byte ends with a
flat ``error`` event and ``response.failed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest, ProxyError
from ..state import POOL, PROXY
from ..stream.events import DONE, PLAIN, Batch, Report, Run
from ..stream.tap import parse_event
from ..wire import CHAT, RESPONSES, ApiRequest, Endpoint, Native, deeply_nested, from_payload, too_deep
from . import responses_wire as rw
from .response_store import MAX_ID, ResponseStore, StoreSlot, open_store

log = logging.getLogger("mtproxy.responses")

JSON = "application/json"
STORE = web.AppKey("responses_store", StoreSlot)
_UNPARSED: Any = object()


def not_found(rid: str, param: str | None = None) -> ProxyError:
    shown = rid if len(rid) <= 64 else rid[:64] + "…"
    if param is None:
        return ProxyError(f"Response with id '{shown}' not found.", status=404, type_="invalid_request_error")
    return ProxyError(f"Previous response with id '{shown}' not found.", status=404, type_="invalid_request_error",
                      param=param, code="previous_response_not_found")


def _sse(type_: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


@dataclass(slots=True)
class Turn:
    """One request's state for its answer (ApiRequest.context)."""

    create: rw.Create
    store: ResponseStore
    history: list[dict[str, Any]]  # the earlier turns' items (previous_response_id), oldest first
    rid: str = field(default_factory=rw.response_id)
    created_at: int = field(default_factory=lambda: int(time.time()))
    model: str = ""
    record: bytes | None = None  # what settle() stores
    fragments: list[bytes] | None = None  # the request's fields as JSON (rw.echo_fragments)

    def response(self, **kwargs: Any) -> dict[str, Any]:
        return rw.response_object(self.rid, self.created_at, self.model or self.create.model, self.create.echo,
                                  **kwargs)

    def response_json(self, **kwargs: Any) -> bytes:
        if self.fragments is None:
            self.fragments = rw.echo_fragments(self.create.echo)
        return rw.response_json(self.rid, self.created_at, self.model or self.create.model, self.create.echo,
                                fragments=self.fragments, **kwargs)

    def keep(self, response: dict[str, Any], encoded: bytes | None = None) -> None:
        """The finished response (``encoded``: as JSON already), to be stored (``store`` true)
        with its conversation."""
        self.keep_json(response.get("status"), response.get("output"), encoded or orjson.dumps(response))

    def keep_json(self, status: Any, output: Any, encoded: bytes, *, ours: bool = False) -> None:
        """``ours``: the output items are the proxy's own (translated), checked already."""
        if not self.create.store or status not in ("completed", "incomplete"):
            return
        self.record = b"".join((b'{"response":', encoded, b',"input":', orjson.dumps(self.create.items),
                                b',"history":', orjson.dumps([*self.history, *self.create.items,
                                                              *(output if ours else rw.history_items(output))]),
                                b"}"))

    async def settle(self) -> None:
        record, self.record = self.record, None
        if record is None:
            return
        try:
            await self.store.put(self.rid, record)
        except ProxyError as err:  # the answer still goes out; continuing it will not find it
            log.warning("response %s not stored: %s", self.rid, err.message)


# --- translated: chat events -> Responses events -----------------------------------------------------

_DELTA_HEAD = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"sequence_number":')
_ARGS_HEAD = (b'event: response.function_call_arguments.delta\ndata: '
              b'{"type":"response.function_call_arguments.delta","sequence_number":')
_REASONING_HEAD = (b'event: response.reasoning_text.delta\ndata: {"type":"response.reasoning_text.delta",'
                   b'"sequence_number":')


class _Open:
    """The output item being written: a message, a reasoning item or a function call."""

    __slots__ = ("kind", "item_id", "index", "parts", "mid", "call_id", "name")

    def __init__(self, kind: str, item_id: str, index: int, call_id: str = "", name: str = "") -> None:
        self.kind = kind
        self.item_id = item_id
        self.index = index
        self.parts: list[bytes] = []  # the text so far, as escaped JSON string contents
        self.call_id = call_id
        self.name = name
        # the bytes between a delta event's sequence number and its delta
        part = b',"content_index":0' if kind != "call" else b""
        self.mid = (b',"item_id":"' + item_id.encode() + b'","output_index":' + str(index).encode() + part
                    + b',"delta":')


# A content chunk's text field, compact or spaced JSON: what its template is learnt around.
_CONTENT_MARKERS = (b'"content":"', b'"content": "')
_TEXT_TAIL = b',"logprobs":[]}\n\n'
_TEXT_SEP = b'"' + _TEXT_TAIL + _DELTA_HEAD  # one text delta's end and the next one's start
_TEXT_END = b'"' + _TEXT_TAIL
_NUMBERS: list[bytes] = []  # sequence numbers as bytes, made as streams need them (up to 8192)


def _numbers(start: int, n: int) -> list[bytes]:
    end = start + n
    if end > len(_NUMBERS) and len(_NUMBERS) < 8192:
        _NUMBERS.extend(str(i).encode() for i in range(len(_NUMBERS), min(max(end, 256), 8192)))
    if end <= len(_NUMBERS):
        return _NUMBERS[start:end]
    return [str(i).encode() for i in range(start, end)]


def _valid(texts: bytes) -> bool:
    """Whether ``texts`` (escaped JSON string contents) are valid JSON text: they are copied
    into the client's events unparsed."""
    try:
        orjson.loads(b'"' + texts + b'"')
    except orjson.JSONDecodeError:
        return False
    return True


def _template(event: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, suffix) around the text of a one-line content chunk with a plain text (no quote
    or escape in it): every content chunk of a stream is written alike but for its text (same
    id, model, created, keys in the same order)."""
    for marker in _CONTENT_MARKERS:
        at = event.find(marker)
        if at >= 0:
            break
    else:
        return None
    start = at + len(marker)
    end = event.find(b'"', start)
    if end <= start or b"\\" in event[start:end] or b"\n" in event or event.find(marker, end) >= 0:
        return None
    return event[:start], event[end:]


def _text(parts: list[bytes]) -> str:
    return orjson.loads(b'"' + b"".join(parts) + b'"')


class ResponsesStream:
    """OpenAI chat chunks in, Responses events out.

    The decoder's fast paths stay on (``parse_all`` False): events that need attention (tool
    calls, usage, the end) come parsed, plain content chunks as raw blocks. A run of content
    chunks alike but for their text (prefix and suffix learnt here from
    the first parsed one) becomes text deltas with bytes operations only: each text is copied,
    still escaped, from its chunk into its delta event; the rest of a block is parsed.
    """

    content_type = "text/event-stream"

    def __init__(self, turn: Turn, report: Report) -> None:
        self.turn = turn
        self.report = report
        self.finished = False
        self.seq = 0
        self.started = False
        self.output: list[dict[str, Any]] = []
        self.open: _Open | None = None
        self.calls: dict[int, _Open] = {}
        self.call_ids: set[str] = set()
        self.finish_reason: Any = None
        self.usage: Any = None
        self.template: tuple[bytes, bytes] | None = None  # (prefix, suffix) of a content chunk

    def _event(self, type_: str, **fields: Any) -> bytes:
        seq = self.seq
        self.seq = seq + 1
        return b"".join((b"event: ", type_.encode(), b"\ndata: ",
                         orjson.dumps({"type": type_, "sequence_number": seq, **fields}), b"\n\n"))

    def _start(self, out: list[bytes]) -> None:
        self.started = True
        response = self.turn.response_json(status="in_progress", output=b"[]")
        for seq, type_ in enumerate(("response.created", "response.in_progress")):
            out.append(b"event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%d,\"response\":%s}\n\n"
                       % (type_.encode(), type_.encode(), seq, response))
        self.seq = 2

    def encode(self, batch: Batch) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self._start(out)
        events, run = batch.events, batch.run
        if events is None:
            if run is None or run.data is not batch.raw or not self._run(run, out):
                self._plain(batch.raw or b"", out)
        else:
            for raw, obj in events:
                if obj is PLAIN:
                    if run is None or raw is not run.data or not self._run(run, out):
                        self._plain(raw or b"", out)
                else:
                    self._parsed(raw, obj, out)
        return b"".join(out)

    def _run(self, run: Run, out: list[bytes]) -> bool:
        """A run of content chunks the decoder cut into their texts (checked there against the
        stream's template): text deltas, the texts copied as they are. False when the texts are
        not valid JSON string contents (then the run is taken as any block)."""
        joined = run.joined
        if not _valid(joined):
            return False
        texts = run.texts
        self._texts(texts if all(texts) else [t for t in texts if t], out, joined)
        return True

    def _parsed(self, raw: bytes | None, obj: Any, out: list[bytes]) -> None:
        if obj.__class__ is dict:
            usage = obj.get("usage")
            if usage:
                self.usage = usage
            choices = obj.get("choices")
            if choices and choices[0].__class__ is dict:
                if self.template is None and raw is not None and len(raw) < 4096:
                    self.template = _template(raw.rstrip(b"\n"))
                self._choice(choices[0], out)
        elif obj is DONE and not self.finished:
            self._finish(out)

    def _plain(self, block: bytes, out: list[bytes]) -> None:
        """Plain events (content chunks, a role or finish chunk): those shaped as the template
        become text deltas straight from their bytes, the others are parsed."""
        template = self.template
        if template is None:
            if len(block) > 256:  # several events: learn from the first or the second
                template = self.template = self._learn(block)
            if template is None:
                self._plain_parsed(block, out)
                return
        lines = block.split(b"\n")
        if lines[-1] or any(lines[1::2]):  # not one `data:` line per event
            self._plain_parsed(block, out)
            return
        events = lines[0:-1:2]
        prefix, suffix = template
        end_marker = suffix + b"\n\n"
        first, last = 0, len(events)
        if not events[0].startswith(prefix):  # a role chunk
            first = 1
        while last > first and not events[last - 1].endswith(suffix):  # finish, usage, [DONE]
            last -= 1
        if last - first < 1:
            self._plain_parsed(block, out)
            return
        cut_head, cut_tail = len(prefix), -len(suffix)
        texts = [event[cut_head:cut_tail] for event in events[first:last]]
        # one check for the whole run: its bytes are the template around these texts, and no
        # text holds a quote (then it is nothing but text)
        start = len(events[0]) + 2 if first else 0
        stop = len(block) - sum(len(e) + 2 for e in events[last:])
        whole = b"".join(texts)
        if b'"' in whole or block[start:stop] != prefix + (end_marker + prefix).join(texts) + end_marker \
                or not _valid(whole):
            self._each(events, template, out)
            return
        if first:
            self._parsed(events[0] + b"\n\n", parse_event(events[0]), out)
        self._texts([t for t in texts if t] if b"" in texts else texts, out)
        for event in events[last:]:
            self._parsed(event + b"\n\n", parse_event(event), out)

    def _each(self, events: list[bytes], template: tuple[bytes, bytes], out: list[bytes]) -> None:
        """Event by event (a block with something else in it): the template's with a text
        without quote or escape as text deltas, the others parsed, in order."""
        prefix, suffix = template
        head, tail = len(prefix), -len(suffix)
        texts: list[bytes] = []
        for event in events:
            if event.startswith(prefix) and event.endswith(suffix):
                text = event[head:tail]
                if b'"' not in text and b"\\" not in text:
                    if text:
                        texts.append(text)
                    continue
            self._flush(texts, out)
            self._parsed(event + b"\n\n", parse_event(event), out)
        self._flush(texts, out)

    def _flush(self, texts: list[bytes], out: list[bytes]) -> None:
        if not texts:
            return
        if _valid(b"".join(texts)):
            self._texts(texts[:], out)
        else:  # a control character: not JSON, as the runtime's parsed chunk would show
            for text in texts:
                if _valid(text):
                    self._texts([text], out)
        texts.clear()

    @staticmethod
    def _learn(block: bytes) -> tuple[bytes, bytes] | None:
        start = 0
        for _ in range(2):  # the first may be a role chunk
            end = block.find(b"\n\n", start)
            if end < 0:
                return None
            template = _template(block[start:end])
            if template is not None:
                return template
            start = end + 2
        return None

    def _plain_parsed(self, block: bytes, out: list[bytes]) -> None:
        for part in block.split(b"\n\n"):
            if part:
                self._parsed(part + b"\n\n", parse_event(part), out)

    def _texts(self, texts: list[bytes], out: list[bytes], joined: bytes | None = None) -> None:
        """Text deltas of the message, each text as its chunk had it (escaped, unquoted);
        ``joined``: the texts in one already."""
        if not texts:
            return
        current = self.open
        if current is None or current.kind != "message":
            current = self._open_item("message", out)
        if joined is None:
            current.parts.extend(texts)
        else:
            current.parts.append(joined)
        n = len(texts)
        seq = self.seq
        self.seq = seq + n
        # head, then per delta: number, item and indexes, text, its end and the next head;
        # joined once with the rest (1,150 instructions a delta; a bytes format: 2,300)
        parts: list[bytes] = [b""] * (4 * n)
        parts[0::4] = _numbers(seq, n)
        parts[1::4] = [current.mid + b'"'] * n
        parts[2::4] = texts
        parts[3::4] = [_TEXT_SEP] * n
        parts[-1] = _TEXT_END
        out.append(_DELTA_HEAD)
        out.extend(parts)

    def _choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta")
        if delta.__class__ is dict:
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking and thinking.__class__ is str:
                self._delta("reasoning", _REASONING_HEAD, thinking, out)
            text = delta.get("content")
            if text and text.__class__ is str:
                self._delta("message", _DELTA_HEAD, text, out)
            calls = delta.get("tool_calls")
            if calls and calls.__class__ is list:
                for call in calls:
                    if call.__class__ is dict:
                        self._call(call, out)
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason

    def _delta(self, kind: str, head: bytes, text: str, out: list[bytes]) -> None:
        current = self.open
        if current is None or current.kind != kind:
            current = self._open_item(kind, out)
        escaped = orjson.dumps(text)
        current.parts.append(escaped[1:-1])
        seq = self.seq
        self.seq = seq + 1
        out.append(head + str(seq).encode() + current.mid + escaped + (_TEXT_TAIL if kind == "message" else b"}\n\n"))

    def _open_item(self, kind: str, out: list[bytes], call_id: str = "", name: str = "") -> _Open:
        self._close(out)
        index = len(self.output)
        if kind == "message":
            item = _Open(kind, rw.new_id("msg"), index)
            seq = self.seq
            self.seq = seq + 2
            out.append(b'event: response.output_item.added\ndata: {"type":"response.output_item.added",'
                       b'"sequence_number":%d,"output_index":%d,"item":{"id":"%s","type":"message",'
                       b'"status":"in_progress","content":[],"role":"assistant"}}\n\n'
                       % (seq, index, item.item_id.encode()))
            out.append(b'event: response.content_part.added\ndata: {"type":"response.content_part.added",'
                       b'"sequence_number":%d,"item_id":"%s","output_index":%d,"content_index":0,'
                       b'"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}\n\n'
                       % (seq + 1, item.item_id.encode(), index))
        elif kind == "reasoning":
            item = _Open(kind, rw.new_id("rs"), index)
            out.append(self._event("response.output_item.added", output_index=index, item={
                "id": item.item_id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}))
            out.append(self._event("response.content_part.added", item_id=item.item_id, output_index=index,
                                   content_index=0, part={"type": "reasoning_text", "text": ""}))
        else:
            item = _Open(kind, rw.new_id("fc"), index, call_id, name)
            out.append(self._event("response.output_item.added", output_index=index,
                                   item=rw.call_item(item.item_id, call_id, name, "", "in_progress")))
        self.output.append({})  # its place, filled when it closes
        self.open = item
        return item

    def _call(self, call: dict[str, Any], out: list[bytes]) -> None:
        index = call.get("index", 0)
        fn = call.get("function")
        fn = fn if fn.__class__ is dict else {}
        current = self.calls.get(index) if index.__class__ is int else None
        if current is None:
            call_id = call.get("id")
            if call_id.__class__ is not str or not call_id or call_id in self.call_ids:
                call_id = rw.new_id("call")
            self.call_ids.add(call_id)
            name = fn.get("name")
            current = self._open_item("call", out, call_id, name if name.__class__ is str else "")
            if index.__class__ is int:
                self.calls[index] = current
        elif current is not self.open:  # a late piece of a call already closed: kept in the final item
            args = fn.get("arguments")
            if args and args.__class__ is str:
                item = self.output[current.index]
                item["arguments"] += args
            return
        args = fn.get("arguments")
        if args and args.__class__ is str:
            escaped = orjson.dumps(args)
            current.parts.append(escaped[1:-1])
            seq = self.seq
            self.seq = seq + 1
            out.append(_ARGS_HEAD + str(seq).encode() + current.mid + escaped + b"}\n\n")

    def _close(self, out: list[bytes], status: str = "completed") -> None:
        current, self.open = self.open, None
        if current is None:
            return
        text = _text(current.parts)
        index, item_id = current.index, current.item_id
        if current.kind == "message":  # three events with the whole text: written as bytes
            item = rw.message_item(item_id, text, status)
            self.output[index] = item
            seq, quoted = self.seq, b'"' + b"".join(current.parts) + b'"'
            self.seq = seq + 3
            ids = b'"item_id":"%s","output_index":%d,"content_index":0' % (item_id.encode(), index)
            part = b'{"type":"output_text","annotations":[],"logprobs":[],"text":%s}' % quoted
            out.append(b'event: response.output_text.done\ndata: {"type":"response.output_text.done",'
                       b'"sequence_number":%d,%s,"text":%s,"logprobs":[]}\n\n' % (seq, ids, quoted))
            out.append(b'event: response.content_part.done\ndata: {"type":"response.content_part.done",'
                       b'"sequence_number":%d,%s,"part":%s}\n\n' % (seq + 1, ids, part))
            out.append(b'event: response.output_item.done\ndata: {"type":"response.output_item.done",'
                       b'"sequence_number":%d,"output_index":%d,"item":{"id":"%s","type":"message",'
                       b'"status":"%s","content":[%s],"role":"assistant"}}\n\n'
                       % (seq + 2, index, item_id.encode(), status.encode(), part))
            return
        elif current.kind == "reasoning":
            out.append(self._event("response.reasoning_text.done", item_id=item_id, output_index=index,
                                   content_index=0, text=text))
            out.append(self._event("response.content_part.done", item_id=item_id, output_index=index,
                                   content_index=0, part={"type": "reasoning_text", "text": text}))
            item = rw.reasoning_item(item_id, text, status)
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                   name=current.name, arguments=text))
            item = rw.call_item(item_id, current.call_id, current.name, text, "completed")
        self.output[index] = item
        out.append(self._event("response.output_item.done", output_index=index, item=item))

    def _finish(self, out: list[bytes]) -> None:
        status, incomplete = rw.terminal(self.finish_reason)
        self._close(out, "incomplete" if status == "incomplete" else "completed")
        usage = rw.usage(self.usage, self.report.prompt_tokens, self.report.completion_tokens)
        encoded = self.turn.response_json(status=status, output=orjson.dumps(self.output), usage=orjson.dumps(usage),
                                          incomplete=orjson.dumps(incomplete))
        type_ = b"response.completed" if status == "completed" else b"response.incomplete"
        out.append(b'event: %s\ndata: {"type":"%s","sequence_number":%d,"response":%s}\n\n'
                   % (type_, type_, self.seq, encoded))
        self.seq += 1
        self.finished = True
        self.turn.keep_json(status, self.output, encoded, ours=True)

    def error(self, body: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self._start(out)
        err = body.get("error") or {}
        message = err.get("message") or "The stream failed."
        out.append(self._event("error", code=err.get("code"), message=message, param=err.get("param")))
        failed = self.turn.response(status="failed", output=[o for o in self.output if o],
                                    error={"code": "server_error", "message": message})
        out.append(self._event("response.failed", response=failed))
        return b"".join(out)

    async def settle(self) -> None:
        await self.turn.settle()


# --- native: the runtime's Responses events, completed to the schema --------------------------------

_ITEM_DEFAULTS: dict[str, dict[str, Any]] = {
    "message": {"content": [], "role": "assistant", "status": "in_progress"},
    "function_call": {"arguments": "", "status": "in_progress"},
    "reasoning": {"summary": []},
}
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_LIFECYCLE = frozenset({"response.created", "response.in_progress", "response.queued", *_TERMINAL})


def _complete_item(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    kind = item.get("type")
    out = {**(_ITEM_DEFAULTS.get(kind, {}) if isinstance(kind, str) else {}), **item}
    if out.get("type") == "message" and isinstance(out.get("content"), list):
        out["content"] = [_complete_part(p) for p in out["content"]]
    return out


def _complete_part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "output_text":
        return {"annotations": [], "logprobs": [], "text": "", **part}
    return part


def complete_response(turn: Turn, response: Any, status: str) -> dict[str, Any]:
    """A runtime's Response object (whole or partial) over the proxy's: every field the schema
    requires present, the runtime's values kept (its id, model, output, usage)."""
    runtime = response if isinstance(response, dict) else {}
    if isinstance(runtime.get("id"), str) and 0 < len(runtime["id"]) <= MAX_ID:
        turn.rid = runtime["id"]
    if isinstance(runtime.get("created_at"), int) and status == "in_progress":
        turn.created_at = runtime["created_at"]
    out = turn.response(status=status, output=[])
    for key, value in runtime.items():
        if value is not None and key != "id" and (key not in ("output", "usage") or status != "in_progress"):
            out[key] = value
    output = out.get("output")
    out["output"] = [_complete_item(item) for item in output] if isinstance(output, list) else []
    if out.get("usage") is not None:
        out["usage"] = rw.complete_usage(out["usage"])
    return out


class NativeResponsesStream:
    """A runtime's own Responses events in, the same events out with ``sequence_number``,
    ``output_index``, ``content_index``, ``logprobs`` and the whole Response object filled in
    where the runtime left them out (llama-server: notes §3.2)."""

    content_type = "text/event-stream"

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.finished = False
        self.seq = 0
        self.indexes: dict[str, int] = {}  # item id -> output_index
        self.parts: dict[str, int] = {}  # item id -> content parts added so far
        self.names: dict[str, str] = {}  # function call item id -> name
        self.items = 0
        self.last_item = ""

    def encode(self, batch: Batch) -> bytes:
        out = []
        for _raw, obj in batch.events or ():
            if obj.__class__ is dict and obj.get("type").__class__ is str:
                out.append(self._event(obj))
        return b"".join(out)

    def _event(self, obj: dict[str, Any]) -> bytes:
        type_ = obj["type"]
        event: dict[str, Any] = {"type": type_, "sequence_number": self.seq}
        self.seq += 1
        event.update((k, v) for k, v in obj.items() if k != "type" and k != "sequence_number")
        if type_ in _LIFECYCLE:
            status = {"response.completed": "completed", "response.incomplete": "incomplete",
                      "response.failed": "failed"}.get(type_, "in_progress")
            event["response"] = complete_response(self.turn, obj.get("response"), status)
            if type_ in _TERMINAL:
                self.finished = True
                self.turn.keep(event["response"])
        elif type_ == "error":
            self.finished = True
        elif type_ == "response.output_item.added" or type_ == "response.output_item.done":
            item = _complete_item(obj.get("item"))
            if type_ == "response.output_item.done" and isinstance(item, dict):
                item["status"] = item.get("status") if item.get("status") != "in_progress" else "completed"
            event["item"] = item
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str):
                item_id = self.last_item
            if type_ == "response.output_item.added":
                self.indexes[item_id] = self.items
                self.items += 1
                self.last_item = item_id
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    self.names[item_id] = item["name"]
            event["output_index"] = self.indexes.get(item_id, max(self.items - 1, 0))
        else:
            item_id = obj.get("item_id")
            if not isinstance(item_id, str):
                item_id = self.last_item
                event["item_id"] = item_id
            event["output_index"] = self.indexes.get(item_id, max(self.items - 1, 0))
            if type_ == "response.content_part.added":
                self.parts[item_id] = self.parts.get(item_id, 0) + 1
            if "part" in event:
                event["part"] = _complete_part(event["part"])
            if type_.startswith("response.reasoning_summary"):
                event.setdefault("summary_index", 0)
            elif type_.startswith(("response.output_text", "response.content_part", "response.refusal",
                                   "response.reasoning_text")):
                event["content_index"] = max(self.parts.get(item_id, 1) - 1, 0)
                if type_.startswith("response.output_text"):
                    event.setdefault("logprobs", [])
            elif type_ == "response.function_call_arguments.done":
                event.setdefault("name", self.names.get(item_id, ""))
        return _sse(type_, event)

    def error(self, body: dict[str, Any]) -> bytes:
        err = body.get("error") or {}
        message = err.get("message") or "The stream failed."
        out = [_sse("error", {"type": "error", "sequence_number": self.seq, "code": err.get("code"),
                              "message": message, "param": err.get("param")})]
        self.seq += 1
        failed = self.turn.response(status="failed", output=[], error={"code": "server_error", "message": message})
        out.append(_sse("response.failed", {"type": "response.failed", "sequence_number": self.seq,
                                            "response": failed}))
        self.seq += 1
        return b"".join(out)

    async def settle(self) -> None:
        await self.turn.settle()


# --- the format ----------------------------------------------------------------------------------------

class ResponsesFormat:
    """One ``POST /v1/responses``: made per request, with the body the handler parsed already
    (to look up ``previous_response_id``) and what the store holds for it."""

    parse_all = False  # plain content chunks come as raw blocks (ResponsesStream._plain)
    texts = True  # and a long run of them as the texts the decoder cut out (ResponsesStream._run)

    def __init__(self, store: ResponseStore, parsed: Any = _UNPARSED, prior: dict[str, Any] | None = None) -> None:
        self.store = store
        self.parsed = parsed
        self.prior = prior

    @staticmethod
    def error_body(err: ProxyError) -> tuple[bytes, str]:
        return err.json(), JSON

    def parse(self, body: bytes, endpoint: Endpoint) -> ApiRequest:
        obj = self.parsed
        if obj is _UNPARSED:
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
        if too_deep(obj, body):
            raise deeply_nested("The request body")
        create = rw.parse_create(obj)
        history: list[dict[str, Any]] = []
        if create.previous_response_id is not None:
            if self.prior is None:
                raise not_found(create.previous_response_id, "previous_response_id")
            history = self.prior.get("history") or []
        turn = Turn(create, self.store, history)
        messages = rw.chat_messages(create.echo["instructions"], [*history, *create.items])
        req = from_payload({**create.chat, "messages": messages}, CHAT)
        req.context = turn
        if create.native and not any(item.get("type") == "reasoning" for item in history):
            req.native = self._native(obj, body, create, history, turn)
        return req

    @staticmethod
    def _native(obj: dict[str, Any], body: bytes, create: rw.Create, history: list[dict[str, Any]],
                turn: Turn) -> Native:
        """The client's request for a runtime that serves /v1/responses: as sent, or with the
        earlier turns put in front of its input (the runtime keeps no state of its own here)."""
        raw: bytes | None = body
        payload = obj
        if history:
            given = obj["input"]
            given = [{"role": "user", "content": given}] if isinstance(given, str) else given
            payload = {k: v for k, v in obj.items() if k != "previous_response_id"}
            payload["input"] = [*history, *given]
            raw = None
        return Native("responses", RESPONSES.path, payload, raw if raw is not None else orjson.dumps(payload))

    def stream_encoder(self, req: ApiRequest, report: Report) -> ResponsesStream | NativeResponsesStream:
        turn: Turn = req.context
        turn.model = req.payload["model"]
        if req.relayed:  # the runtime's own Responses events, completed to the schema
            return NativeResponsesStream(turn)
        return ResponsesStream(turn, report)

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        turn: Turn = req.context
        turn.model = req.payload["model"]
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProxyError("The backend's answer is not valid JSON.", status=502, type_="upstream_error") from None
        if not isinstance(obj, dict):
            raise ProxyError("The backend's answer is not a JSON object.", status=502, type_="upstream_error")
        if req.relayed:
            given = obj.get("status")
            status = given if given in ("completed", "incomplete", "failed") else "completed"
            response = complete_response(turn, obj, status)
        else:
            output, status, incomplete = rw.output_from_chat(obj)
            usage = rw.usage(obj.get("usage"), report.prompt_tokens, report.completion_tokens)
            response = turn.response(status=status, output=output, usage=usage, incomplete=incomplete)
        turn.keep(response)
        return orjson.dumps(response), JSON

    async def settle(self, req: ApiRequest) -> None:
        await req.context.settle()

    def loaded(self, req: ApiRequest) -> bytes:  # pragma: no cover (parse never asks for it)
        raise InvalidRequest("Nothing to generate.")


# --- routes ----------------------------------------------------------------------------------------------

async def _record(store: ResponseStore, rid: str) -> dict[str, Any] | None:
    if not rid or len(rid) > MAX_ID:
        return None
    data = await store.get(rid)
    return None if data is None else orjson.loads(data)


async def _lookup(request: web.Request, rid: str) -> dict[str, Any] | None:
    async with request.app[STORE].use() as store:
        return await _record(store, rid)


async def create(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = _UNPARSED  # parse() answers it, counted like any bad request
    # the request keeps the store it began with to its end, whatever a reload puts in meanwhile
    async with request.app[STORE].use() as store:
        prior = None
        previous = parsed.get("previous_response_id") if isinstance(parsed, dict) else None
        if isinstance(previous, str):
            prior = await _record(store, previous)
        return await request.app[PROXY].serve(request, RESPONSES, ResponsesFormat(store, parsed, prior))


async def retrieve(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    record = await _lookup(request, rid)
    if record is None:
        raise not_found(rid)
    return web.json_response(record["response"], dumps=lambda o: orjson.dumps(o).decode())


async def delete(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    if not rid or len(rid) > MAX_ID:
        raise not_found(rid)
    async with request.app[STORE].use() as store:
        deleted = await store.delete(rid)
    if not deleted:
        raise not_found(rid)
    return web.json_response({"id": rid, "object": "response", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    query = request.query
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("`order` must be 'asc' or 'desc'.", param="order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("`limit` must be an integer from 1 to 100.", param="limit")
    record = await _lookup(request, rid)
    if record is None:
        raise not_found(rid)
    items = list(record.get("input") or ())
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit},
                             dumps=lambda o: orjson.dumps(o).decode())


async def store_context(app: web.Application) -> AsyncIterator[None]:
    """The response store, opened with the app and closed with it (cleanup_ctx); a reload may
    replace it (reload.py)."""
    config = app[POOL].config.responses
    slot = app[STORE] = StoreSlot(config, open_store(config))
    try:
        yield
    finally:
        await slot.close()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{id}", retrieve)
    app.router.add_delete("/v1/responses/{id}", delete)
    app.router.add_get("/v1/responses/{id}/input_items", input_items)
