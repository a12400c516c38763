"""Every error leaves the proxy in its client's shape (the route's client format), with a log
line; nothing crashes it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import InvalidRequest, ProxyError
from ..formats import ErrorShape

ShapeOf = Callable[[web.Request], ErrorShape]

log = logging.getLogger("mtproxy.errors")

_HTTP_TYPES = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def error_response(shape: ErrorShape, err: ProxyError) -> web.Response:
    body, content_type = shape.error_body(err)
    return web.Response(body=body, status=err.status, content_type=content_type, headers=err.headers)


_UNREADABLE = InvalidRequest("The request body could not be read: its chunked framing or its Content-Encoding "
                             "is broken.", code="malformed_body")


def answer_error(request: web.Request, exc: Exception, shape_of: ShapeOf) -> web.StreamResponse:
    """The answer to what a handler raised, in the client's shape (``shape_of(request)``), logged;
    HTTP redirects pass on."""
    if isinstance(request.content.exception(), RequestPayloadError):
        return _unreadable(request, exc, shape_of)
    if isinstance(exc, ProxyError):
        if exc.status < 500:
            log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        else:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return error_response(shape_of(request), exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        type_, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, message)
        return error_response(shape_of(request), ProxyError(message, status=exc.status, type_=type_, code=code))
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(shape_of(request), ProxyError("The proxy hit an internal error; it has been logged.",
                                              code="internal_error"))


def _unreadable(request: web.Request, exc: Exception, shape_of: ShapeOf) -> web.StreamResponse:
    """A body aiohttp could not decode (a gzip body that is not gzip, a broken chunk): the
    client's mistake, a 400 whatever the handler made of it. The rest of the body is never
    read: the connection closes after the answer (aiohttp would read on to its end and log the
    same failure as an unhandled exception, after answering as if the connection stayed open)."""
    err = exc if isinstance(exc, ProxyError) and exc.status < 500 else _UNREADABLE
    log.info("%s %s -> %d %s", request.method, request.path, err.status, err.message)
    request.content.feed_eof()  # nothing more of it is read
    resp = error_response(shape_of(request), err)
    resp.force_close()
    return resp
