"""Every error leaves the proxy in OpenAI's shape, with a log line; nothing crashes it."""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import ProxyError

log = logging.getLogger("mtproxy.errors")

_HTTP_TYPES = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def error_response(request: web.Request, err: ProxyError) -> web.Response:
    if request.path.startswith("/api/"):  # Ollama clients: {"error": "<text>"}
        return web.json_response({"error": err.message}, status=err.status, headers=err.headers)
    return web.Response(body=err.json(), status=err.status, content_type="application/json",
                        headers=err.headers)


def answer_error(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The OpenAI-shaped answer to what a handler raised, logged; HTTP redirects pass on."""
    if isinstance(exc, ProxyError):
        if exc.status < 500:
            log.info("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        else:
            log.warning("%s %s -> %d %s", request.method, request.path, exc.status, exc.message)
        return error_response(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        type_, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, message)
        return error_response(request, ProxyError(message, status=exc.status, type_=type_, code=code))
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(request, ProxyError("The proxy hit an internal error; it has been logged.",
                                              code="internal_error"))
