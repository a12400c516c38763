"""Forwarding one request: route, send upstream with retries, relay the answer, measure it.

Streams are relayed as they arrive; the proxy only holds back a partial event until its end
arrives. Status and headers are settled before ``prepare()``: failures before the first upstream
byte are retried on another candidate (a streamed multipart form only while none of the client's
body beyond what was read of it has gone upstream: wire.Form) or become an error with an HTTP
status; failures after it become an error event in the client's format (SSE ``error`` +
``[DONE]`` for OpenAI clients).
Measurement reads a copy of what is relayed and is recorded after the client got its last byte.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from time import perf_counter

import aiohttp
from aiohttp import web

from . import upstream
from .backends import Backend, BackendPool
from .config import Config
from .errors import ProxyError, UpstreamError, UpstreamRefused, UpstreamTimeout, error_body
from .formats import ClientFormat, StreamEncoder
from .limits import Gate, Waiters
from .metrics.instruments import Metrics
from .metrics.meter import CLIENT_CLOSED, STREAM_ERROR, Measurement, RequestMeter, unrouted
from .router import Busy, Router
from .runtimes.base import BackendHTTP
from .speed import expected_tokens
from .stream.events import StreamDecoder, StreamFailure
from .swap import Member, StartFailed
from .watchdog import Watchdog
from .wire import ApiRequest, Endpoint

log = logging.getLogger("mtproxy.proxy")

# A client format's own reading of the request (front/local.py: a multipart form, streamed)
Reader = Callable[[web.Request, Endpoint], Awaitable[ApiRequest]]
# Told of every finished request after its metrics (the page's activity, mtproxy/ui/): must be
# cheap, it runs on the request path
Observer = Callable[[RequestMeter, Measurement, ClientFormat], None]

# Statuses that say "this backend cannot take the request now", not "the request is bad": a
# runtime that fails to load a model answers 500 (Ollama, llama-server), and another backend may
# serve it. Judged on the status after the adapter's normalisation (a llama-cpp-python validation
# 500 is a 400 by then, the client's mistake, and not retried).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}



class _Retry(Exception):
    """Internal: this candidate failed before its first byte; try the next one."""

    def __init__(self, error: ProxyError) -> None:
        self.error = error


class Proxy:
    def __init__(self, config: Config, pool: BackendPool, session: aiohttp.ClientSession,
                 metrics: Metrics) -> None:
        self.config = config
        self.pool = pool
        self.router = Router(pool)
        self.session = session
        self.metrics = metrics
        self.in_flight = 0
        self.retries_in_flight = 0
        self.watchdog = Watchdog()
        self.observer: Observer | None = None
        limits = config.limits
        self.gate = Gate(limits.max_concurrent, limits.max_queue, limits.queue_timeout)
        self.backend_waiters = Waiters(limits.max_queue, limits.queue_timeout)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Take the settings of a (re)loaded config; requests in flight keep theirs, and requests
        queued for a slot stay queued (a raised cap wakes as many as it has room for)."""
        self.config = config
        self._fastest = config.routing.balance == "fastest"
        t, limits = config.timeouts, config.limits
        self._first_token = t.first_token
        self._idle = t.idle
        self._request = t.request
        self.watchdog.set_shortest(min(t.first_token, t.idle, t.request))
        self.gate.configure(limits.max_concurrent, limits.max_queue, limits.queue_timeout)
        self.backend_waiters.configure(limits.max_queue, limits.queue_timeout)

    def _retry_allowed(self) -> bool:
        """Envoy-style retry budget: retries in flight stay under a share of requests in flight."""
        r = self.config.retries
        return self.retries_in_flight < max(r.min_concurrent, r.budget_ratio * self.in_flight)

    def _backoff(self, attempt: int) -> float:
        r = self.config.retries
        return random.uniform(0, min(r.backoff_max, r.backoff_base * 2 ** (attempt - 1)))

    async def serve(self, request: web.Request, endpoint: Endpoint, fmt: ClientFormat, *,
                    read: Reader | None = None) -> web.StreamResponse:
        """Parse (in the client's format ``fmt``, or by ``read``, which reads the body only as far
        as it needs: a streamed multipart form), forward and account for one request, whatever
        its outcome."""
        meter: RequestMeter[Backend] = RequestMeter(perf_counter(), endpoint.kind)
        gate = self.gate
        held = False
        try:
            built = await read(request, endpoint) if read is not None else fmt.parse(await request.read(), endpoint)
            if built.load_only:  # nothing to generate: the model must exist, and is ready
                self.router.resolve(built.model)
                return web.Response(body=fmt.loaded(built), content_type="application/json")
            meter.labels = unrouted(endpoint.kind, built.stream)
            if not gate.try_acquire():
                await gate.acquire()
            held = True
            self.in_flight += 1
            return await self.forward(request, built, fmt, meter)
        except ProxyError as err:
            meter.answered(err.status)
            raise
        except asyncio.CancelledError:
            meter.outcome = CLIENT_CLOSED
            raise
        except Exception:
            meter.answered(500)
            raise
        finally:
            if held:
                gate.release()
                self.in_flight -= 1
            if meter.t_end is None:
                meter.t_end = perf_counter()
            backend = meter.target
            report = meter.report
            if backend is not None and (report.accepted_tokens or report.tokens_per_step):
                self._mtp_shown(backend, meter)  # a stream's drafts: known at its end
            measured = self.metrics.finish(meter)
            if self.observer is not None:
                self.observer(meter, measured, fmt)
            if backend is not None:
                self.pool.finished(backend, meter, measured)

    async def forward(self, request: web.Request, req: ApiRequest, fmt: ClientFormat,
                      meter: RequestMeter[Backend]) -> web.StreamResponse:
        requested = req.model
        route = self.router.resolve(requested)
        req.set_model(route.model)
        tried: list[Backend] = []
        retrying = False
        tokens = expected_tokens(req.payload) if self._fastest else 0
        try:
            while True:
                try:
                    backend = self.router.pick(route, tried, tokens)
                except Busy:
                    await self.backend_waiters.wait(f"model {route.model}")
                    route = self.router.resolve(requested)  # a reload may have changed its backends
                    req.set_model(route.model)
                    continue
                tried.append(backend)
                req.relayed = backend.relays(req)  # in the client's own API, or translated
                meter.route(backend, backend.name, backend.runtime.name, route.model,
                            self.router.mtp_on(route, backend))
                backend.outstanding += 1
                member = None
                try:
                    if backend.member is not None:
                        member = await self._admitted(backend)
                    resp = await self._send(request, req, fmt, backend, meter)
                    # a stream cut by a reset or a silence after its first byte is a failure too
                    self.pool.answered(backend, 502 if meter.outcome is STREAM_ERROR else resp.status)
                    return resp
                except _Retry as retry:
                    self.pool.answered(backend, retry.error.status)
                    if not req.resendable():
                        log.info("not retrying %s: its form was streamed to %s already", route.model, backend.name)
                        raise retry.error from None
                    if not any(b.up and b not in tried for b in route.candidates):
                        raise retry.error from None
                    if not retrying and not self._retry_allowed():
                        log.warning("retry budget spent: %s fails without retry", route.model)
                        raise retry.error from None
                    if not retrying:
                        retrying = True
                        self.retries_in_flight += 1
                    self.metrics.retry(backend.name, backend.runtime.name)
                    log.warning("retrying %s on another backend after %s: %s",
                                route.model, backend.name, retry.error.message)
                except ProxyError as err:
                    self.pool.answered(backend, err.status)
                    raise
                finally:
                    backend.outstanding -= 1
                    if backend.cap:
                        self.backend_waiters.wake_all()
                    if member is not None:
                        member.release()
                await asyncio.sleep(self._backoff(len(tried)))
        finally:
            if retrying:
                self.retries_in_flight -= 1

    async def _send(self, request: web.Request, req: ApiRequest, fmt: ClientFormat, backend: Backend,
                    meter: RequestMeter) -> web.StreamResponse:
        send = self._stream if req.stream else self._unary
        try:
            return await send(request, req, fmt, backend, meter)
        except UpstreamError as err:
            if not self._lacks_route(req, backend, err):
                raise
        return await send(request, req, fmt, backend, meter)

    @staticmethod
    def _lacks_route(req: ApiRequest, backend: Backend, err: UpstreamError) -> bool:
        """A runtime that answers 404/405 on the route of the client's own API does not serve
        it (a build older than the adapter's record): the request, and every later one to this
        backend, is translated instead. What the runtime shows decides, not its version alone."""
        if not req.relayed or req.native is None or err.status not in (404, 405):
            return False
        log.warning("backend %s has no %s route (HTTP %d): translating %s requests for it",
                    backend.name, req.native.path, err.status, req.native.kind)
        backend.native = backend.native - {req.native.kind}
        req.relayed = False
        return True

    async def _admitted(self, backend: Backend) -> Member:
        """A backend mtproxy starts and stops: started (or swapped in) and waited for when it is
        not ready; the request then counts on it until ``Member.release``."""
        member = backend.member
        assert member is not None and member.group is not None
        try:
            await member.group.admit(member)
        except StartFailed as err:
            if member.process is not None:
                backend.mark_down(err.message)
            raise _Retry(err) from None
        return member

    async def show(self, model: str) -> dict | None:
        """The serving runtime's own description of ``model``, where it has one."""
        route = self.router.resolve(model)
        backend = self.router.pick(route)
        http = BackendHTTP(self.session, backend.base_url, backend.headers, self.config.health.timeout)
        return await backend.runtime.show(http, route.model)

    async def count_tokens(self, req: ApiRequest) -> int:
        """The prompt tokens of ``req`` by the tokenizer of a backend serving its model (501
        when its runtime has no tokenizer route the proxy can use)."""
        route = self.router.resolve(req.model)
        req.set_model(route.model)
        try:
            backend = self.router.pick(route)
        except Busy:  # every healthy backend is at its cap: counting takes no generation slot
            backend = next(b for b in route.candidates if b.up)
        req.relayed = backend.relays(req)
        http = BackendHTTP(self.session, backend.base_url, backend.headers, self.config.health.timeout)
        try:
            try:
                count = await backend.runtime.count_tokens(http, req)
            except UpstreamError as err:
                if not self._lacks_route(req, backend, err):
                    raise
                count = await backend.runtime.count_tokens(http, req)
        except upstream.ERRORS as exc:
            raise upstream.failure(exc, f"Backend {backend.name} failed to count tokens") from None
        if count is None:
            raise ProxyError(f"Backend {backend.name} ({backend.runtime.name}) cannot count tokens: its runtime "
                             "has no tokenizer route the proxy can use.", status=501, type_="api_error",
                             code="count_tokens_unsupported")
        return count

    def _mtp_shown(self, backend: Backend, meter: RequestMeter[Backend]) -> None:
        """A request routed as not running MTP whose answer carries MTP drafts is labelled on: the
        runtime's own evidence (vLLM's counters, llama.cpp's /slots) shows only once it has
        drafted, so the first such answer is the first evidence there is."""
        report = meter.report
        if (report.accepted_tokens or report.tokens_per_step) and meter.labels.mtp == "off" \
                and self.pool.drafting(backend, meter.labels.model, report):
            meter.mtp_shown()

    @staticmethod
    def _headers(meter: RequestMeter[Backend]) -> dict[str, str]:
        """The response headers naming the backend chosen (``meter.route``)."""
        labels = meter.labels
        return {"x-mtproxy-backend": labels.backend, "x-mtproxy-mtp": labels.mtp}

    def _failed(self, backend: Backend, exc: BaseException) -> _Retry:
        """A connection-level failure before the first byte. A backend that cannot be connected
        to is down until a health check says otherwise; a reset of one request is not: with 2 %
        of requests reset, marking the backend down each time left all three of a soak's
        backends down at once. ``forward`` counts it toward outlier ejection instead."""
        err = upstream.failure(exc, f"Backend {backend.name} failed before answering")
        if isinstance(err, UpstreamRefused):
            backend.mark_down(upstream.describe(exc))
        return _Retry(err)

    @staticmethod
    def _not_served(req: ApiRequest, backend: Backend, detail: str) -> _Retry:
        """A route of the rest of the local API that this backend does not serve: 404, or the
        next candidate that may."""
        log.info("backend %s does not serve %s (%s)", backend.name, req.endpoint.path, detail)
        return _Retry(ProxyError(f"Backend {backend.name} ({backend.runtime.name}) does not serve "
                                 f"{req.endpoint.path} ({detail}).", status=404,
                                 type_="invalid_request_error", code="route_not_served"))

    def _error_status(self, req: ApiRequest, meter: RequestMeter[Backend], backend: Backend, status: int,
                      data: bytes) -> Exception:
        if req.endpoint.relay and status in (404, 405):
            return self._not_served(req, backend, f"it answered HTTP {status}")
        err = backend.runtime.upstream_error(status, data)
        err.headers = self._headers(meter)
        log.info("backend %s answered HTTP %d: %s", backend.name, status, err.message)
        return _Retry(err) if err.status in RETRY_STATUSES else err

    async def _unary(self, request: web.Request, req: ApiRequest, fmt: ClientFormat, backend: Backend,
                     meter: RequestMeter[Backend]) -> web.Response:
        if req.endpoint.relay and not backend.runtime.relays_local:
            raise self._not_served(req, backend, "its runtime has no such route")
        prepared = backend.runtime.prepare(req)
        headers = backend.headers
        if prepared.content_type is not None:
            headers = {**headers, "Content-Type": prepared.content_type}
        meter.t_sent = perf_counter()
        try:
            with self.watchdog.watch(self._request, meter.t_sent):
                async with await upstream.send(self.session, backend.url(prepared.path), prepared.body,
                                               headers, backend.name) as resp:
                    data = await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"Backend {backend.name} did not answer within {self._request:g} s.") from None
        except upstream.ERRORS as exc:
            if req.form is not None and req.form.error is not None:  # the client's body, not the backend
                raise req.form.error from None
            raise self._failed(backend, exc) from None
        meter.t_in = perf_counter()
        if resp.status >= 400:
            raise self._error_status(req, meter, backend, resp.status, data)
        report = meter.report
        body, content_type = fmt.body(req, backend.runtime.decode_body(req, data, report), report)
        await fmt.settle(req)
        if report.accepted_tokens or report.tokens_per_step:
            self._mtp_shown(backend, meter)  # so the header says what the answer showed
        headers = self._headers(meter)
        if not content_type:  # the format relays the runtime's answer as it came
            headers["Content-Type"] = resp.headers.get("Content-Type", "application/octet-stream")
        out = web.Response(body=body, status=resp.status, headers=headers, content_type=content_type or None)
        meter.http_status = out.status
        meter.t_out = perf_counter()
        try:  # sent here, so the client does not wait for the metrics
            await out.prepare(request)
            await out.write_eof()
        except ConnectionResetError:
            meter.outcome = CLIENT_CLOSED
        return out

    async def _stream(self, request: web.Request, req: ApiRequest, fmt: ClientFormat, backend: Backend,
                      meter: RequestMeter[Backend]) -> web.StreamResponse:
        prepared = backend.runtime.prepare(req)
        resp: aiohttp.ClientResponse | None = None
        try:
            meter.t_sent = perf_counter()
            try:
                with self.watchdog.watch(self._first_token, meter.t_sent):
                    resp = await upstream.send(self.session, backend.url(prepared.path), prepared.body,
                                               backend.headers, backend.name)
                    if resp.status >= 400:
                        raise self._error_status(req, meter, backend, resp.status, await resp.read())
                    first = await resp.content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"Backend {backend.name} sent no token within {self._first_token:g} s.") from None
            except upstream.ERRORS as exc:
                raise self._failed(backend, exc) from None
            if not first:
                raise self._failed(backend, ConnectionResetError("empty response"))
            meter.t_in = perf_counter()
            meter.count_live(self.metrics.window)

            decoder = backend.runtime.stream_decoder(req, meter.report, parse_all=fmt.parse_all, texts=fmt.texts)
            encoder = fmt.stream_encoder(req, meter.report)
            out = web.StreamResponse(headers={"Content-Type": encoder.content_type, **STREAM_HEADERS,
                                              **self._headers(meter)})
            await out.prepare(request)
            try:
                await self._relay(resp, out, first, backend, decoder, encoder, meter)
            except ConnectionResetError as exc:
                meter.outcome = CLIENT_CLOSED
                log.info("client went away mid-stream (%s); closing the request to %s", exc, backend.name)
            return out
        finally:
            # read to its end, the response gave its connection back to the pool already
            if resp is not None and not resp.content.at_eof():
                resp.close()

    async def _relay(self, resp: aiohttp.ClientResponse, out: web.StreamResponse, data: bytes,
                     backend: Backend, decoder: StreamDecoder, encoder: StreamEncoder,
                     meter: RequestMeter[Backend]) -> None:
        """Copy upstream events to the client as they come. Client write errors propagate."""
        failure: str | None = None
        code = "upstream_stream_error"
        content = resp.content
        last = b""  # the stream's last events, sent with the end of the response in one write
        writing = False  # a write to the client is under way (the idle limit counts it too)
        try:
            with self.watchdog.watch(self._idle, perf_counter()) as idle:
                while data:
                    # when this read came in: a decode step's chunks come microseconds apart, the
                    # steps milliseconds apart (the loop's clock is 1 ms coarse under uvloop)
                    now = idle.last = perf_counter()
                    batch = decoder.feed(data)
                    if batch is not None:
                        chunk = encoder.encode(batch)
                        if encoder.finished and content.at_eof():
                            last = chunk
                        elif chunk:
                            writing = True
                            await out.write(chunk)
                            writing = False
                        if meter.t_out is None:
                            meter.t_out = perf_counter()
                        if batch.content:
                            meter.content(now, batch.content, batch.hidden)
                    try:
                        data = await content.readany()
                    except upstream.ERRORS as exc:
                        failure = upstream.failure(exc, f"Backend {backend.name} failed mid-stream").message
                        break
            if failure is None:
                batch = decoder.flush()
                if batch is not None:
                    last += encoder.encode(batch)
                    if batch.content:
                        meter.content(perf_counter(), batch.content, batch.hidden)
                if not encoder.finished:
                    failure = f"Backend {backend.name} closed the stream before it finished."
        except TimeoutError:
            if writing:  # the client took nothing for that long: it stalled, not the backend
                raise ConnectionResetError(f"the client read nothing for {self._idle:g} s") from None
            failure = f"Backend {backend.name} was silent for more than {self._idle:g} s mid-stream."
            code = "upstream_timeout"
        except StreamFailure as exc:
            failure = f"Backend {backend.name} reported an error mid-stream: {exc}"
        meter.t_end = perf_counter()
        if failure is not None:
            meter.outcome = STREAM_ERROR
            log.warning("%s", failure)
            last += encoder.error(error_body(failure, "upstream_error", code=code))
        await encoder.settle()
        await out.write_eof(last)

