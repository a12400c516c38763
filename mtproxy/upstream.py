"""The one seam for I/O to runtimes: send a request, read its answer, and translate what aiohttp
and the OS raise into the proxy's own errors (errors.py), also while a stream is being read: the
way httpx maps httpcore's exceptions at its transport. The relay (proxy.py), the probes
(runtimes/base.py BackendHTTP) and ``mtproxy verify`` all go through here.

- :data:`ERRORS`: everything I/O to a runtime can raise; a caller that reads a stream chunk by
  chunk catches it around its own read (no extra call per chunk) and hands it to :func:`failure`.
- :func:`failure`: the proxy's error for it: :class:`~mtproxy.errors.UpstreamRefused` when the
  backend could not be connected to (it is down), :class:`~mtproxy.errors.UpstreamTimeout`,
  else :class:`~mtproxy.errors.UpstreamUnreachable` (one request's connection broke).
- :func:`send`: POST with the one retry a stale pooled connection earns.

May import: errors (the bottom layer, beside stream/ and wire).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
from yarl import URL

from .errors import ProxyError, UpstreamRefused, UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("mtproxy.upstream")

# What I/O to a runtime raises: connection and payload errors, OS errors, timeouts.
ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)

# A keep-alive connection the server closed while it sat in the pool.
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection-level failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def failure(exc: BaseException, message: str) -> ProxyError:
    """The proxy's error for an I/O failure ``exc``; ``message`` says what failed, the
    description of ``exc`` follows it."""
    text = f"{message}: {describe(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamRefused(text)
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(text)
    return UpstreamUnreachable(text)


class Streamed(Protocol):
    """A body read as it is sent (a multipart upload): its size if known, and its chunks from
    the start, or None once it cannot be read again."""

    @property
    def size(self) -> int | None: ...

    def replay(self) -> AsyncIterator[bytes] | None: ...


async def send(session: aiohttp.ClientSession, url: str | URL, body: bytes | Streamed, headers: dict[str, str],
               name: str) -> aiohttp.ClientResponse:
    """POST ``body``; the response with its headers read. A pooled keep-alive connection the
    runtime closed meanwhile fails on write (llama-server closes after a chunked stream although
    it offered keep-alive): that is sent again at once on a fresh connection, and the backend is
    not blamed for it; a streamed body only while none of it is gone. Raises what aiohttp
    raises (:data:`ERRORS`): the caller knows the phase and the timeout that applies, and
    translates with :func:`failure`."""
    data: bytes | AsyncIterator[bytes] | None
    if isinstance(body, bytes):  # the usual body, sent as it is
        data = body
    else:
        if body.size is not None:
            headers = {**headers, "Content-Length": str(body.size)}
        data = body.replay()
        assert data is not None, "a streamed body is sent once (ApiRequest.resendable)"
    try:
        return await session.post(url, data=data, headers=headers)
    except _STALE as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise
        data = _data(body)
        if data is None:
            raise
        log.debug("stale connection to %s (%s); sending again", name, describe(exc))
        return await session.post(url, data=data, headers=headers)


def _data(body: bytes | Streamed) -> bytes | AsyncIterator[bytes] | None:
    return body if isinstance(body, bytes) else body.replay()
