"""What the proxy asks of a client format (front/): parse its request, encode the answer.

The proxy core works on one internal request (:class:`~mtproxy.wire.ApiRequest`, OpenAI-shaped)
and one internal event stream (OpenAI events in :class:`~mtproxy.stream.events.Batch` es, see
stream/events.py); a client format turns its client's request into the first and the second
back into its client's wire format, errors included. The proxy never knows which format it serves.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import ProxyError
from .stream.events import Batch, Report
from .wire import ApiRequest, Endpoint


class StreamEncoder(Protocol):
    content_type: str
    finished: bool  # the stream's proper end was seen

    def encode(self, batch: Batch) -> bytes: ...

    def error(self, body: dict[str, Any]) -> bytes:
        """The client-format error that ends a stream after its first byte."""
        ...

    async def settle(self) -> None:
        """Work that must be done before the client gets the stream's last bytes (a response
        stored, so that the client's next request finds it)."""
        ...


class ErrorShape(Protocol):
    def error_body(self, err: ProxyError) -> tuple[bytes, str]:
        """An error answered before the first byte: its body and content type."""
        ...


class ClientFormat(ErrorShape, Protocol):
    parse_all: bool  # the encoder needs every event parsed
    texts: bool  # the encoder rewrites runs of content chunks from their texts (Batch.run)

    def parse(self, body: bytes, endpoint: Endpoint) -> ApiRequest:
        """The client's request body as the proxy's request (raises InvalidRequest)."""
        ...

    def stream_encoder(self, req: ApiRequest, report: Report) -> StreamEncoder: ...

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        """A non-streaming OpenAI body as the client's body and content type (empty: the
        runtime's own content type, for an answer relayed as it came)."""
        ...

    async def settle(self, req: ApiRequest) -> None:
        """As :meth:`StreamEncoder.settle`, for a non-streaming answer made by :meth:`body`."""
        ...

    def loaded(self, req: ApiRequest) -> bytes:
        """The answer to a request that only asks for the model to be ready (``req.load_only``)."""
        ...
