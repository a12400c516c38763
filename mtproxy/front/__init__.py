"""Client formats: one module per API the proxy serves (openai, ollama, anthropic, responses,
local: the rest of the local API, relayed).

Each parses its client's request into the proxy's one internal request (wire.ApiRequest) and
encodes the proxy's one internal event stream back into its client's wire format, errors
included (the ClientFormat protocol, formats.py); its handlers parse, then call the proxy, which
never knows the client's format. The OpenAI relay of a runtime's own bytes stays the fast path.

May import: every layer below (proxy, backends, state, formats, wire, stream, errors); nothing
imports front/ but the app factory.
"""

from __future__ import annotations

from aiohttp import web

from ..formats import ErrorShape
from . import anthropic, local, ollama, openai, responses

# Which format answers a path's errors: the first prefix that matches, else OpenAI's.
_SHAPES: tuple[tuple[str, ErrorShape], ...] = ((ollama.PREFIX, ollama.CHAT_FORMAT),)


def error_shape(request: web.Request) -> ErrorShape:
    """The client format whose error body answers ``request`` (a route of its, or a path under
    its prefix that matched no route)."""
    if anthropic.wants_anthropic(request):
        return anthropic.MESSAGES_FORMAT
    path = request.path
    for prefix, shape in _SHAPES:
        if path.startswith(prefix):
            return shape
    return openai.OPENAI


def add_routes(app: web.Application) -> None:
    openai.add_routes(app)
    ollama.add_routes(app)
    anthropic.add_routes(app)
    responses.add_routes(app)
    local.add_routes(app)
