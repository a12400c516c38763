"""Forwarding one OpenAI request: route, send upstream with retries, relay the answer.

Streams are relayed as they arrive; the proxy only holds back a partial SSE event until its
end arrives. Status and headers are settled before ``prepare()``: failures before the first
upstream byte are retried on another candidate or become an OpenAI error with an HTTP status;
failures after it become an SSE ``error`` event followed by ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .backends import Backend, BackendPool
from .config import Config
from .errors import (
    InvalidRequest,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
)
from .router import Route, Router
from .runtimes.base import describe
from .sse import EventFramer, error_event

log = logging.getLogger("mtproxy.proxy")

# Statuses that say "this backend cannot take the request now", not "the request is bad".
RETRY_STATUSES = frozenset({502, 503, 504})
# Connection-level failures before the first byte: the backend is marked down and the request
# goes to the next candidate.
UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # upstream path, the same as the client's for OpenAI-compatible runtimes
    streams: bool  # whether `stream: true` is allowed


CHAT = Endpoint("/v1/chat/completions", streams=True)
COMPLETIONS = Endpoint("/v1/completions", streams=True)
EMBEDDINGS = Endpoint("/v1/embeddings", streams=False)


class _Retry(Exception):
    """Internal: this candidate failed before its first byte; try the next one."""

    def __init__(self, error: ProxyError) -> None:
        self.error = error


def parse_request(body: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], str, bool]:
    """Validate the parts of an OpenAI request body the proxy relies on."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
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
    return payload, model, stream


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
        body = await request.read()
        payload, model, stream = parse_request(body, endpoint)
        route = self.router.resolve(model)
        if route.model != model:
            payload["model"] = route.model
            body = orjson.dumps(payload)
        tried: list[Backend] = []
        while True:
            backend = self.router.pick(route, tried)
            tried.append(backend)
            backend.outstanding += 1
            try:
                if stream:
                    return await self._stream(request, endpoint, route, backend, body)
                return await self._unary(endpoint, route, backend, body)
            except _Retry as retry:
                if len(tried) == len(route.candidates) or not any(
                    b.up and b not in tried for b in route.candidates
                ):
                    raise retry.error from None
                log.warning("retrying %s on another backend after %s: %s",
                            route.model, backend.name, retry.error.message)
            finally:
                backend.outstanding -= 1

    def _headers(self, route: Route, backend: Backend) -> dict[str, str]:
        return {
            "x-mtproxy-backend": backend.name,
            "x-mtproxy-mtp": "on" if self.router.mtp_on(route, backend) else "off",
        }

    def _fail_before_first_byte(self, backend: Backend, exc: BaseException) -> _Retry:
        reason = describe(exc)
        backend.mark_down(reason)
        return _Retry(UpstreamUnreachable(f"Backend {backend.name} failed before answering: {reason}"))

    def _error_status(self, route: Route, backend: Backend, status: int, data: bytes) -> Exception:
        err = backend.runtime.upstream_error(status, data)
        err.headers = self._headers(route, backend)
        log.info("backend %s answered HTTP %d: %s", backend.name, status, err.message)
        return _Retry(err) if status in RETRY_STATUSES else err

    async def _unary(self, endpoint: Endpoint, route: Route, backend: Backend, body: bytes) -> web.Response:
        try:
            async with asyncio.timeout(self._request):
                async with self.session.post(backend.url(endpoint.path), data=body,
                                             headers=backend.headers) as resp:
                    data = await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"Backend {backend.name} did not answer within {self._request:g} s.") from None
        except UNREACHABLE as exc:
            raise self._fail_before_first_byte(backend, exc) from None
        if resp.status >= 400:
            raise self._error_status(route, backend, resp.status, data)
        return web.Response(body=data, status=resp.status, headers=self._headers(route, backend),
                            content_type=resp.content_type or "application/json")

    async def _stream(self, request: web.Request, endpoint: Endpoint, route: Route, backend: Backend,
                      body: bytes) -> web.StreamResponse:
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(self._first_token):
                    resp = await self.session.post(backend.url(endpoint.path), data=body,
                                                   headers=backend.headers)
                    if resp.status >= 400:
                        raise self._error_status(route, backend, resp.status, await resp.read())
                    if resp.content_type == "application/json":  # the runtime chose not to stream
                        data = await resp.read()
                        return web.Response(body=data, status=resp.status, content_type=resp.content_type,
                                            headers=self._headers(route, backend))
                    first = await resp.content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Backend {backend.name} sent no token within {self._first_token:g} s.") from None
            except UNREACHABLE as exc:
                raise self._fail_before_first_byte(backend, exc) from None
            if not first:
                raise self._fail_before_first_byte(backend, ConnectionResetError("empty response"))

            out = web.StreamResponse(status=resp.status, headers={**SSE_HEADERS, **self._headers(route, backend)})
            await out.prepare(request)
            try:
                await self._relay(resp, out, first, backend)
            except ConnectionResetError:
                log.info("client went away mid-stream; closing the request to %s", backend.name)
            return out
        finally:
            if resp is not None:
                resp.close()

    async def _relay(self, resp: aiohttp.ClientResponse, out: web.StreamResponse, data: bytes,
                     backend: Backend) -> None:
        """Copy upstream events to the client as they come. Client write errors propagate."""
        loop = asyncio.get_running_loop()
        framer = EventFramer()
        done = False
        failure: str | None = None
        code = "upstream_stream_error"
        try:
            async with asyncio.timeout(self._idle) as idle:
                while data:
                    chunk = framer.feed(data)
                    if chunk:
                        done = b"data: [DONE]" in chunk
                        await out.write(chunk)
                    idle.reschedule(loop.time() + self._idle)
                    try:
                        data = await resp.content.readany()
                    except UNREACHABLE as exc:
                        failure = f"Backend {backend.name} failed mid-stream: {describe(exc)}"
                        break
        except TimeoutError:
            failure = f"Backend {backend.name} was silent for more than {self._idle:g} s mid-stream."
            code = "upstream_timeout"
        if failure is None:
            tail = framer.flush()
            if tail:
                done = b"data: [DONE]" in tail
                await out.write(tail)
            if not done:
                failure = f"Backend {backend.name} closed the stream before it finished."
        if failure is not None:
            log.warning("%s", failure)
            await out.write(error_event(error_body(failure, "upstream_error", code=code)))
        await out.write_eof()
