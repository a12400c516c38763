"""Every error leaves the proxy in OpenAI's shape, with a log line; nothing crashes it."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import ProxyError, error_body

log = logging.getLogger("mtproxy.errors")

_HTTP_TYPES = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def error_response(err: ProxyError) -> web.Response:
    return web.Response(body=err.json(), status=err.status, content_type="application/json",
                        headers=err.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as err:
        if err.status < 500:
            log.info("%s %s -> %d %s", request.method, request.path, err.status, err.message)
        else:
            log.warning("%s %s -> %d %s", request.method, request.path, err.status, err.message)
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        type_, code = _HTTP_TYPES.get(exc.status, ("invalid_request_error", None))
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        log.info("%s %s -> %d %s", request.method, request.path, exc.status, message)
        return web.json_response(error_body(message, type_, code=code), status=exc.status)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response(
            error_body("The proxy hit an internal error; it has been logged.", "server_error",
                       code="internal_error"),
            status=500,
        )
