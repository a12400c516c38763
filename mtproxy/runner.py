"""The app runner ``server.start`` uses: aiohttp's, but a request it cannot parse is not echoed.

aiohttp answers a malformed request (a bad request line or header, broken framing) with a 400
whose text quotes the offending bytes, and logs them with a traceback: the client's
``Authorization`` header can be among them. Here the answer is a fixed body in OpenAI's error
shape (the head that would tell the client's API is what could not be read) and the log line
names the kind of error only. aiohttp has no setting for this answer, so the connection class
(``web.RequestHandler``) that the server makes per connection is a subclass of aiohttp's.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_request import BaseRequest

from .errors import InvalidRequest

log = logging.getLogger("mtproxy.http")

MALFORMED = InvalidRequest("The request is not valid HTTP/1.1.", code="malformed_request").json()


class _Connection(web.RequestHandler):
    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request that failed outside the app; 4xx: the request could
        not be parsed."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        log.info("malformed request from %s -> %d (%s)", request.remote, status, type(exc).__name__)
        if request.writer.output_size > 0:  # as aiohttp: too late for an answer
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = web.Response(status=status, body=MALFORMED, content_type="application/json")
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed requests without echoing them."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the server the app made, making our connections
        return server
