"""Forwarding one request: route, send upstream with retries, relay the answer.

Streams are relayed as they arrive; the proxy only holds back a partial event until its end
arrives. Status and headers are settled before ``prepare()``: failures before the first upstream
byte are retried on another candidate or become an error with an HTTP status; failures after it
become an error event in the client's format (SSE ``error`` + ``[DONE]`` for OpenAI clients).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from .backends import Backend, BackendPool
from .config import Config
from .encoders import OPENAI, ClientFormat
from .errors import ProxyError, UpstreamTimeout, UpstreamUnreachable, error_body
from .router import Route, Router
from .runtimes.base import BackendHTTP, Report, StreamDecoder, StreamFailure, describe
from .wire import ApiRequest, Endpoint, parse_request

log = logging.getLogger("mtproxy.proxy")

# Statuses that say "this backend cannot take the request now", not "the request is bad".
RETRY_STATUSES = frozenset({502, 503, 504})
# Connection-level failures: before the first byte the backend is marked down and the request
# goes to the next candidate; after it the stream ends with an error event.
UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Retry(Exception):
    """Internal: this candidate failed before its first byte; try the next one."""

    def __init__(self, error: ProxyError) -> None:
        self.error = error


class Proxy:
    def __init__(self, config: Config, pool: BackendPool, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.router = Router(pool)
        self.session = session
        t = config.timeouts
        self._first_token = t.first_token
        self._idle = t.idle
        self._request = t.request

    async def handle(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        """An OpenAI client's request."""
        req = parse_request(await request.read(), endpoint)
        return await self.forward(request, req, OPENAI)

    async def forward(self, request: web.Request, req: ApiRequest, fmt: ClientFormat) -> web.StreamResponse:
        route = self.router.resolve(req.model)
        req.set_model(route.model)
        tried: list[Backend] = []
        while True:
            backend = self.router.pick(route, tried)
            tried.append(backend)
            backend.outstanding += 1
            try:
                if req.stream:
                    return await self._stream(request, req, fmt, route, backend)
                return await self._unary(req, fmt, route, backend)
            except _Retry as retry:
                if not any(b.up and b not in tried for b in route.candidates):
                    raise retry.error from None
                log.warning("retrying %s on another backend after %s: %s",
                            route.model, backend.name, retry.error.message)
            finally:
                backend.outstanding -= 1

    async def show(self, model: str) -> dict | None:
        """The serving runtime's own description of ``model``, where it has one."""
        route = self.router.resolve(model)
        backend = self.router.pick(route)
        http = BackendHTTP(self.session, backend.base_url, backend.headers, self.config.health.timeout)
        return await backend.runtime.show(http, route.model)

    def _headers(self, route: Route, backend: Backend) -> dict[str, str]:
        return {
            "x-mtproxy-backend": backend.name,
            "x-mtproxy-mtp": "on" if self.router.mtp_on(route, backend) else "off",
        }

    def _unreachable(self, backend: Backend, exc: BaseException) -> _Retry:
        reason = describe(exc)
        backend.mark_down(reason)
        return _Retry(UpstreamUnreachable(f"Backend {backend.name} failed before answering: {reason}"))

    def _error_status(self, route: Route, backend: Backend, status: int, data: bytes) -> Exception:
        err = backend.runtime.upstream_error(status, data)
        err.headers = self._headers(route, backend)
        log.info("backend %s answered HTTP %d: %s", backend.name, status, err.message)
        return _Retry(err) if status in RETRY_STATUSES else err

    async def _unary(self, req: ApiRequest, fmt: ClientFormat, route: Route, backend: Backend) -> web.Response:
        upstream = backend.runtime.prepare(req)
        try:
            async with asyncio.timeout(self._request):
                async with self.session.post(backend.url(upstream.path), data=upstream.body,
                                             headers=backend.headers) as resp:
                    data = await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"Backend {backend.name} did not answer within {self._request:g} s.") from None
        except UNREACHABLE as exc:
            raise self._unreachable(backend, exc) from None
        if resp.status >= 400:
            raise self._error_status(route, backend, resp.status, data)
        report = Report()
        body, content_type = fmt.body(req, backend.runtime.decode_body(req, data, report), report)
        self.router.pool.record(backend, route.model, report)
        return web.Response(body=body, status=resp.status, headers=self._headers(route, backend),
                            content_type=content_type)

    async def _stream(self, request: web.Request, req: ApiRequest, fmt: ClientFormat, route: Route,
                      backend: Backend) -> web.StreamResponse:
        upstream = backend.runtime.prepare(req)
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(self._first_token):
                    resp = await self.session.post(backend.url(upstream.path), data=upstream.body,
                                                   headers=backend.headers)
                    if resp.status >= 400:
                        raise self._error_status(route, backend, resp.status, await resp.read())
                    first = await resp.content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Backend {backend.name} sent no token within {self._first_token:g} s.") from None
            except UNREACHABLE as exc:
                raise self._unreachable(backend, exc) from None
            if not first:
                raise self._unreachable(backend, ConnectionResetError("empty response"))

            report = Report()
            decoder = backend.runtime.stream_decoder(req, report)
            encoder = fmt.stream_encoder(req, report)
            out = web.StreamResponse(headers={"Content-Type": encoder.content_type, **STREAM_HEADERS,
                                              **self._headers(route, backend)})
            await out.prepare(request)
            try:
                await self._relay(resp, out, first, backend, decoder, encoder)
            except ConnectionResetError:
                log.info("client went away mid-stream; closing the request to %s", backend.name)
            self.router.pool.record(backend, route.model, report)
            return out
        finally:
            if resp is not None:
                resp.close()

    async def _relay(self, resp: aiohttp.ClientResponse, out: web.StreamResponse, data: bytes,
                     backend: Backend, decoder: StreamDecoder, encoder) -> None:
        """Copy upstream events to the client as they come. Client write errors propagate."""
        loop = asyncio.get_running_loop()
        failure: str | None = None
        code = "upstream_stream_error"
        try:
            async with asyncio.timeout(self._idle) as idle:
                while data:
                    events = decoder.feed(data)
                    if events:
                        chunk = encoder.encode(events)
                        if chunk:
                            await out.write(chunk)
                    idle.reschedule(loop.time() + self._idle)
                    try:
                        data = await resp.content.readany()
                    except UNREACHABLE as exc:
                        failure = f"Backend {backend.name} failed mid-stream: {describe(exc)}"
                        break
            if failure is None:
                events = decoder.flush()
                if events:
                    await out.write(encoder.encode(events))
                if not encoder.finished:
                    failure = f"Backend {backend.name} closed the stream before it finished."
        except TimeoutError:
            failure = f"Backend {backend.name} was silent for more than {self._idle:g} s mid-stream."
            code = "upstream_timeout"
        except StreamFailure as exc:
            failure = f"Backend {backend.name} reported an error mid-stream: {exc}"
        if failure is not None:
            log.warning("%s", failure)
            await out.write(encoder.error(error_body(failure, "upstream_error", code=code)))
        await out.write_eof()
