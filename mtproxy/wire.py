"""The OpenAI request as the proxy sees it: endpoint, payload and what the client asked for.

Lenient on input (unknown fields pass through to the runtime); strict only about the fields the
proxy itself relies on (``model``, ``stream``, ``stream_options``) and about nesting, which must
stay within what the proxy can encode again (:data:`MAX_DEPTH`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .errors import InvalidRequest, ProxyError, RequestTooLarge

Kind = Literal["chat", "completions", "embeddings", "messages", "responses",
               # the rest of the local API, relayed as it came (Endpoint.relay)
               "rerank", "score", "tokenize", "detokenize", "infill", "transcriptions", "translations",
               "speech", "images"]

# The deepest nesting of objects and arrays a request may have: every encoder on the way out must
# take what was accepted. orjson, the proxy's, writes at most 254 levels (and reads 1024);
# translating for another API puts a value a few levels deeper.
MAX_DEPTH = 128
_ENCODER_DEPTH = 254


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: Kind
    path: str  # the OpenAI path; adapters of runtimes with another API map it
    streams: bool  # whether `stream: true` is allowed
    # The rest of the local API (rerank, tokenize, audio, images): the body relayed as it came to
    # the same path on a runtime that serves it, the runtime's answer relayed as it came
    relay: bool = False


CHAT = Endpoint("chat", "/v1/chat/completions", streams=True)
COMPLETIONS = Endpoint("completions", "/v1/completions", streams=True)
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", streams=False)
# Client APIs served by translation to chat completions, or relayed to a runtime that speaks them
# natively (Runtime.native_apis): the endpoint a request arrived at labels its metrics.
MESSAGES = Endpoint("messages", "/v1/messages", streams=True)  # Anthropic Messages
RESPONSES = Endpoint("responses", "/v1/responses", streams=True)  # OpenAI Responses


def relayed(kind: Kind, path: str) -> Endpoint:
    return Endpoint(kind, path, streams=False, relay=True)


@dataclass(slots=True)
class Form:
    """A multipart form relayed as it came (audio transcriptions), streamed: the bytes read while
    looking for its ``model`` field (``head``, with where that field's value lies in them), its
    content type (with the boundary), and the rest of the client's body, read only as it is sent
    on (None: ``head`` is all of it). Once any of the rest has been read (``started``) the form
    cannot be sent again; ``limit`` (``server.max_body_bytes``) bounds all of it, and ``error`` is
    what cut it short."""

    head: bytes
    content_type: str
    start: int
    end: int
    limit: int
    rest: AsyncIterator[bytes] | None = None
    length: int | None = None  # the client's Content-Length, if it sent one
    started: bool = False
    error: ProxyError | None = None

    def body(self, model: str) -> FormBody:
        """The form to send, with ``model`` as its ``model`` field's value."""
        name = model.encode()
        if self.head[self.start:self.end] == name:
            return FormBody(self, self.head)
        return FormBody(self, b"".join((self.head[:self.start], name, self.head[self.end:])))

    async def chunks(self, head: bytes) -> AsyncIterator[bytes]:
        yield head
        if self.rest is None:
            return
        self.started = True  # from here on the rest is the one sent
        size = len(self.head)
        try:
            async for chunk in self.rest:
                size += len(chunk)
                if size > self.limit:
                    self.error = RequestTooLarge(f"Maximum request body size {self.limit} exceeded.")
                    break
                yield chunk
        except Exception as exc:  # noqa: BLE001 (the client's connection broke: not the backend's fault)
            self.error = InvalidRequest(f"The request body broke off before its end: {type(exc).__name__}.")
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class FormBody:
    """A :class:`Form` as sent to one backend: ``replay()`` gives its chunks from the start,
    or None once part of the client's body has been sent (it cannot be read again)."""

    form: Form
    head: bytes

    @property
    def size(self) -> int | None:
        form = self.form
        return None if form.length is None else form.length - len(form.head) + len(self.head)

    def replay(self) -> AsyncIterator[bytes] | None:
        return None if self.form.started else self.form.chunks(self.head)


@dataclass(frozen=True, slots=True)
class Native:
    """The client's own request, for a runtime that serves the client's API itself
    (``Runtime.native_apis``): sent as it came, but for the model's served name."""

    kind: Kind  # the client API: "messages"
    path: str  # where the runtime serves it
    payload: dict[str, Any]
    raw: bytes

    def body(self, model: str) -> bytes:
        if self.payload.get("model") == model:
            return self.raw
        return orjson.dumps({**self.payload, "model": model})


@dataclass(slots=True)
class ApiRequest:
    endpoint: Endpoint
    payload: dict[str, Any]  # OpenAI-shaped; `model` is the served name once routed
    raw: bytes | None  # the client's body, while it still matches `payload` byte for byte
    model: str  # the name the client asked for
    stream: bool
    client_usage: bool  # the client asked for a usage chunk in the stream
    load_only: bool = False  # asks only that the model be ready (Ollama's request without input)
    # The client's request in its own API, beside its translation in ``payload`` (a client
    # format other than OpenAI's sets it where relaying it loses nothing); ``relayed``: this
    # attempt's runtime gets it and answers in that API (set by the proxy per attempt, from the
    # backend: Backend.relays)
    native: Native | None = None
    relayed: bool = False
    context: Any = None  # the client format's own state for the answer, carried along untouched
    form: Form | None = None  # a multipart form, streamed as it came (Endpoint.relay)

    def resendable(self) -> bool:
        """Whether this request can go to another backend: a form streamed to one cannot."""
        return self.form is None or not self.form.started

    def set_model(self, model: str) -> None:
        if self.payload["model"] != model:
            self.payload["model"] = model
            self.raw = None

    def body(self) -> bytes:
        if self.raw is None:
            self.raw = orjson.dumps(self.payload)
        return self.raw

    def body_with(self, key: str, value: Any) -> bytes:
        """The body with one more top-level field, ``payload`` left as it is. A field the
        client did not send is spliced into its bytes before the closing brace: a long chat
        history is not encoded again for the ``stream_options`` the proxy adds to every stream."""
        if self.raw is not None and key not in self.payload:
            end = self.raw.rindex(b"}")  # a JSON object with at least `model` in it
            return b"".join((self.raw[:end], b',"', key.encode(), b'":', orjson.dumps(value), self.raw[end:]))
        return orjson.dumps({**self.payload, key: value})


def too_deep(value: Any, text: bytes | None = None) -> bool:
    """Whether ``value`` (parsed from ``text``, when given) nests deeper than :data:`MAX_DEPTH`.

    Each level takes an opening and a closing bracket, so a text too short for that many, or with
    few opening brackets (two C-level counts), is not looked at further: a usual chat request is
    not. Otherwise the encoder itself answers: inside ``_ENCODER_DEPTH - MAX_DEPTH`` more arrays,
    ``value`` encodes if and only if it is at most ``MAX_DEPTH`` deep (one C pass; walking it in
    Python took 4x as long for a 42 kB agent request).
    """
    if text is not None and (len(text) <= 2 * MAX_DEPTH or text.count(b"{") + text.count(b"[") <= MAX_DEPTH):
        return False
    for _ in range(_ENCODER_DEPTH - MAX_DEPTH):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def deeply_nested(what: str, *, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(f"{what} nests objects and arrays more than {MAX_DEPTH} levels deep.", param=param)


def parse_request(body: bytes, endpoint: Endpoint) -> ApiRequest:
    """Validate the parts of an OpenAI request body the proxy relies on."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if too_deep(payload, body):
        raise deeply_nested("The request body")
    return from_payload(payload, endpoint, raw=body)


def from_payload(payload: Any, endpoint: Endpoint, *, raw: bytes | None = None) -> ApiRequest:
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean.", param="stream")
    if stream and not endpoint.streams:
        raise InvalidRequest("This endpoint does not stream.", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object.", param="stream_options")
    client_usage = bool(options and options.get("include_usage"))
    return ApiRequest(endpoint, payload, raw, model, stream, client_usage)


def load_request(model: str, endpoint: Endpoint) -> ApiRequest:
    """A request that asks only for ``model`` to be ready, with nothing to generate."""
    return ApiRequest(endpoint, {"model": model}, None, model, False, False, load_only=True)
