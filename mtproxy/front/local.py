"""The rest of the local API: rerank, score, tokenize, detokenize, infill, audio and images.

Routed by ``model`` (in the JSON body, or the multipart form's ``model`` field) and relayed as it
came to the same path on a backend whose runtime serves it; the runtime's answer (its status,
content type and body: JSON, or binary audio) is relayed as it came. A backend without the route
(Ollama, or a runtime answering 404/405) is skipped for the next candidate, else the client gets
a 404 naming the backend and the route. A multipart form is read whole (within
``server.max_body_bytes``) before it is sent on, not streamed. Errors are OpenAI's.
May import: the proxy's layers below (formats, wire, errors, state), and front/openai.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.message import Message

from aiohttp import web

from ..errors import InvalidRequest
from ..state import PROXY
from ..stream.events import Report
from ..wire import ApiRequest, Endpoint, Form, Kind, relayed
from .openai import OpenAIFormat

# path -> kind: the JSON routes, then the multipart ones
JSON_ROUTES: dict[str, Kind] = {
    "/v1/rerank": "rerank", "/rerank": "rerank", "/v1/reranking": "rerank", "/v1/score": "score",
    "/tokenize": "tokenize", "/detokenize": "detokenize", "/infill": "infill",
    "/v1/audio/speech": "speech", "/v1/images/generations": "images",
}
FORM_ROUTES: dict[str, Kind] = {"/v1/audio/transcriptions": "transcriptions",
                                "/v1/audio/translations": "translations"}
_MISSING_MODEL = ("You must provide a model parameter.", "model", "missing_model")


class LocalFormat(OpenAIFormat):
    """A JSON body relayed as it came; only ``model`` (and ``stream``, which these routes do not
    take) is read. The answer is the runtime's own, content type included."""

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        return body, ""


class FormFormat(LocalFormat):
    """A multipart form (audio transcriptions, translations), routed by its ``model`` field."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type

    def parse(self, body: bytes, endpoint: Endpoint) -> ApiRequest:
        form = parse_form(body, self.content_type)
        model = form.raw[form.start:form.end].decode()
        return ApiRequest(endpoint, {"model": model}, None, model, False, False, form=form)


def _param(value: str, header: str, name: str) -> str | None:
    msg = Message()
    msg[header] = value
    param = msg.get_param(name, header=header)
    return param if isinstance(param, str) else None


def parse_form(body: bytes, content_type: str) -> Form:
    """The form with where its ``model`` field's value lies; the parts before it are only
    skipped over (their headers read), the parts after it not looked at."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("This endpoint takes a multipart/form-data body.")
    boundary = _param(content_type, "content-type", "boundary")
    if not boundary or not boundary.isascii():
        raise InvalidRequest("The multipart/form-data body has no valid boundary.")
    delimiter = b"--" + boundary.encode()
    pos = body.find(delimiter)
    while pos != -1 and not body.startswith(b"--", pos + len(delimiter)):
        head = pos + len(delimiter)
        head_end = body.find(b"\r\n\r\n", head)
        if head_end == -1:
            break
        start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end == -1:
            break
        if _field_name(body[head:head_end]) == "model":
            try:
                model = body[start:end].decode()
            except UnicodeDecodeError:
                raise InvalidRequest("`model` must be UTF-8 text.", param="model") from None
            if not model:
                break
            return Form(body, content_type, start, end)
        pos = end + 2
    raise InvalidRequest(_MISSING_MODEL[0], param=_MISSING_MODEL[1], code=_MISSING_MODEL[2])


def _field_name(head: bytes) -> str | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-disposition":
            return _param(value.decode("latin-1").strip(), "content-disposition", "name")
    return None


LOCAL = LocalFormat()


def _json(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY].serve(request, endpoint, LOCAL)

    return handler


def _form(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        fmt = FormFormat(request.headers.get("Content-Type", ""))
        return await request.app[PROXY].serve(request, endpoint, fmt)

    return handler


def add_routes(app: web.Application) -> None:
    for path, kind in JSON_ROUTES.items():
        app.router.add_post(path, _json(relayed(kind, path)))
    for path, kind in FORM_ROUTES.items():
        app.router.add_post(path, _form(relayed(kind, path)))
