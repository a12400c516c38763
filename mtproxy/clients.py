"""Client connections: at most ``server.max_connections`` open, and every request received whole
(headers and body) within ``server.receive_timeout`` seconds.

aiohttp's server bounds neither: a client that sends a request line and one header, then stalls,
holds its connection until the keep-alive timeout (an hour by default); one that stalls mid-body
holds its handler in ``request.read()`` for ever. Here each connection notes when its current
request began arriving (its first byte; the connection's opening for the first request), the
request factory hands it the request's body stream, and the end of each response clears both.
One shared sweep, armed while connections are open, closes every connection whose request has
not arrived whole in time; a response under way, however long (a stream), is never cut, for its
request arrived. Per request that costs a clock read and a few attribute stores, no timer or task.

A request aiohttp cannot parse (a bad request line or header, broken framing) is answered with a
fixed 400 in OpenAI's error shape and a log line naming the kind of error only: aiohttp's own
answer quotes the offending bytes, the client's ``Authorization`` header among them.

A connection beyond the cap is answered 503 and closed at once. What is cut is counted in
``mtproxy_client_connections_cut_total{reason}`` (``header_timeout``, ``body_timeout``,
``too_many``); ``mtproxy_client_connections`` is the number open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .errors import InvalidRequest, error_body
from .metrics.instruments import Metrics

log = logging.getLogger("mtproxy.clients")

MIN_TICK = 0.005
MAX_TICK = 1.0

_BODY = orjson.dumps(error_body("Too many open connections to mtproxy; try again shortly.", "service_unavailable",
                                code="too_many_connections"))
TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


MALFORMED = InvalidRequest("The request is not valid HTTP/1.1.", code="malformed_request").json()

# called unbound: cheaper than super() on a path taken for every request
_feed = RequestHandler.data_received
_log_access = RequestHandler.log_access


class ClientConnection(RequestHandler):
    """aiohttp's protocol for one client connection, knowing since when its request arrives."""

    __slots__ = ("since", "receiving", "body")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.since = 0.0  # when the current request began arriving
        self.receiving = True  # a request is arriving (or awaited, on a new connection)
        self.body: StreamReader | None = None  # its body stream, once its headers are in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.since = self._loop.time()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.receiving:  # the first bytes of the next request on a kept-alive connection
            self.receiving = True
            self.since = self._loop.time()
        _feed(self, data)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # aiohttp calls this once a response is written: until the next request's first byte the
        # connection is idle, under aiohttp's keep-alive timeout
        self.receiving = False
        self.body = None
        _log_access(self, request, response, time)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request that failed outside the app; 4xx: the request could
        not be parsed, answered without echoing it."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.info("malformed request from %s -> %d (%s)", request.remote, status, type(exc).__name__)
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = web.Response(status=status, body=MALFORMED, content_type="application/json")
        resp.force_close()
        return resp


class ClientServer(web.Server):
    """aiohttp's server with its client connections counted, capped and swept."""

    def __init__(self, handler: Any, *, settings: Callable[[], ServerConfig], metrics: Metrics,
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._settings = settings  # read when used, so a reload applies
        self._metrics = metrics
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._refusing = False
        make = self.request_factory

        def request_factory(message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                            writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
            protocol.body = payload  # type: ignore[attr-defined]  # headers in: the body is what remains
            return make(message, payload, protocol, writer, task)

        self.request_factory = request_factory

    def __call__(self) -> ClientConnection:
        return ClientConnection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        metrics = self._metrics
        cap = self._settings().max_connections
        if metrics.clients_open >= cap:
            if not self._refusing:
                self._refusing = True
                log.warning("%d client connections open: refusing more (server.max_connections)", cap)
            metrics.client_cut("too_many")
            transport.write(TOO_MANY)
            handler.force_close()  # closes once the answer is written; never counted as open
            return
        super().connection_made(handler, transport)
        metrics.clients_open += 1
        if self._sweep_handle is None:
            self._arm()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._connections:  # counted when made (aiohttp forgets it later)
            self._metrics.clients_open -= 1
            self._refusing = False
        super().connection_lost(handler, exc)

    async def shutdown(self, timeout: float | None = None) -> None:
        await super().shutdown(timeout)
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def _arm(self) -> None:
        tick = min(MAX_TICK, max(MIN_TICK, self._settings().receive_timeout / 20))
        self._sweep_handle = self._loop.call_at(self._loop.time() + tick, self._sweep)

    def _sweep(self) -> None:
        """Close the connections whose request has not arrived whole within the limit."""
        self._sweep_handle = None
        limit = self._settings().receive_timeout
        now = self._loop.time()
        cut: dict[str, int] = {}
        for conn in list(self._connections):
            if not isinstance(conn, ClientConnection) or not conn.receiving or now - conn.since < limit:
                continue
            if conn.transport is None:  # gone already; aiohttp forgets it when its task ends
                continue
            body = conn.body
            if body is None:
                reason = "header_timeout"
            elif body.is_eof():  # arrived whole: its answer is under way
                conn.receiving = False
                continue
            else:
                reason = "body_timeout"
            conn.force_close()
            self._metrics.client_cut(reason)
            cut[reason] = cut.get(reason, 0) + 1
        if cut:
            log.warning("closed client connections that sent no whole request within %g s: %s", limit,
                        ", ".join(f"{n} {reason}" for reason, n in cut.items()))
        if self._connections:
            self._arm()


class ClientRunner(web.AppRunner):
    """An ``AppRunner`` serving the app through a :class:`ClientServer`."""

    def __init__(self, app: web.Application, *, settings: Callable[[], ServerConfig], metrics: Metrics,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._client_settings = settings
        self._client_metrics = metrics

    async def _make_server(self) -> web.Server:
        # the app started and frozen, and aiohttp's server for it: the same handler, request
        # factory and protocol settings (its _kwargs), served by our connections instead
        made = await super()._make_server()
        return ClientServer(made.request_handler, request_factory=made.request_factory,
                            handler_cancellation=made.handler_cancellation, settings=self._client_settings,
                            metrics=self._client_metrics, **made._kwargs)
