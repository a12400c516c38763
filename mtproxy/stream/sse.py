"""Server-sent events: cut a byte stream at event boundaries, and the proxy's own events."""

from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"


class EventFramer:
    """Hands back the complete events in what has arrived so far, keeping a partial tail.

    The client is only ever sent whole events, so an error event written after an upstream
    failure never lands in the middle of a half-written chunk.
    """

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""  # the partial event held back

    def feed(self, data: bytes) -> bytes:
        if self.tail:
            data = self.tail + data
            self.tail = b""
        if data.endswith(b"\n\n"):  # the common case: a read ends on an event boundary
            return data
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if cut < len(data):
            self.tail = data[cut:]
            return data[:cut]
        return data

    def flush(self) -> bytes:
        """At end of stream: a trailing event that lacked its blank line, completed."""
        tail, self.tail = self.tail, b""
        if tail.strip():
            return tail.rstrip(b"\r\n") + b"\n\n"
        return b""


def error_event(body: dict) -> bytes:
    """An SSE ``error`` event carrying an OpenAI error body, then the stream's end."""
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n" + DONE
