"""What the client receives: events and bodies in the client's own API format.

The OpenAI format relays the runtime's bytes untouched; it re-encodes an event only when the
client must get something different (the usage chunk it did not ask for is dropped).
Other client formats (the Ollama API, ``mtproxy.ollama.api``) implement the same protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from .runtimes.base import DONE, Batch, Report
from .sse import DONE as DONE_BYTES
from .sse import error_event
from .wire import ApiRequest


class StreamEncoder(Protocol):
    content_type: str
    finished: bool  # the stream's proper end was seen

    def encode(self, batch: Batch) -> bytes: ...

    def error(self, body: dict[str, Any]) -> bytes:
        """The client-format error that ends a stream after its first byte."""
        ...


class ClientFormat(Protocol):
    parse_all: bool  # the encoder needs every event parsed

    def stream_encoder(self, req: ApiRequest, report: Report) -> StreamEncoder: ...

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        """A non-streaming OpenAI body as the client's body and content type."""
        ...


def sse_bytes(obj: Any) -> bytes:
    return DONE_BYTES if obj is DONE else b"data: " + orjson.dumps(obj) + b"\n\n"


class OpenAIStream:
    __slots__ = ("strip_usage", "finished")
    content_type = "text/event-stream"

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.finished = False

    def encode(self, batch: Batch) -> bytes:
        if batch.events is None:  # plain content chunks: relayed as they came
            return batch.raw  # type: ignore[return-value]
        out = []
        changed = batch.raw is None
        for raw, obj in batch.events:
            if obj is DONE:
                self.finished = True
            elif self.strip_usage and obj.__class__ is dict and obj.get("usage") is not None:
                changed = True
                if not obj.get("choices"):
                    continue  # the usage chunk the proxy asked for, not the client
                obj = {k: v for k, v in obj.items() if k != "usage"}
                raw = None
            out.append(raw if raw is not None else sse_bytes(obj))
        return b"".join(out) if changed else batch.raw  # type: ignore[return-value]

    def error(self, body: dict[str, Any]) -> bytes:
        return error_event(body)


class OpenAIFormat:
    parse_all = False

    def stream_encoder(self, req: ApiRequest, report: Report) -> OpenAIStream:
        return OpenAIStream(strip_usage=not req.client_usage)

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        return body, "application/json"


OPENAI = OpenAIFormat()
