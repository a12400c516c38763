"""The proxy's error hierarchy and the one function that builds OpenAI error bodies.

Library exceptions (aiohttp client errors, timeouts) are translated into these at the upstream
boundary (``mtproxy.upstream``); handlers only ever see :class:`ProxyError`.
"""

from __future__ import annotations

from typing import Any

import orjson


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ProxyError(Exception):
    """An error the client gets as an OpenAI-shaped body with ``status``."""

    status = 500
    type = "server_error"
    code: str | None = None
    headers: dict[str, str] | None = None  # extra response headers (e.g. x-mtproxy-backend)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type_ is not None:
            self.type = type_

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class RequestTooLarge(ProxyError):
    """The client's body grew past ``server.max_body_bytes`` (a streamed one, while it was sent on)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NoBackendAvailable(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


class UpstreamError(ProxyError):
    """The backend answered with an error status; message and status are the backend's."""

    type = "upstream_error"


class UpstreamUnreachable(ProxyError):
    """Connection refused or reset, or the backend died before its first byte."""

    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamRefused(UpstreamUnreachable):
    """The backend could not be connected to: it is down until a health check says otherwise."""


class UpstreamTimeout(ProxyError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def normalise_upstream_error(status: int, body: bytes) -> UpstreamError:
    """Any runtime's error body (nested, flat ``{"object":"error"}``, ``{"error": "text"}``,
    or plain text) as one :class:`UpstreamError` carrying the upstream status."""
    default_type = _TYPE_FOR_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    message: str | None = None
    type_ = param = code = None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error", data)
        if isinstance(inner, dict):
            message = _str(inner.get("message")) or _str(inner.get("detail"))
            type_ = _str(inner.get("type"))
            param = _str(inner.get("param"))
            code = inner.get("code")
        elif isinstance(inner, str):
            message = inner
        if message is None and "detail" in data:  # FastAPI/pydantic style
            message = _str(data["detail"]) or orjson.dumps(data["detail"]).decode()
    elif body:
        message = body[:2000].decode("utf-8", "replace").strip()
    return UpstreamError(
        message or f"backend answered HTTP {status}",
        status=status,
        type_=type_ or default_type,
        param=param,
        code=str(code) if code is not None else None,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
