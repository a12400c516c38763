"""The rest of the local API: rerank, score, tokenize, detokenize, infill, audio and images.

Routed by ``model`` (in the JSON body, or the multipart form's ``model`` field) and relayed as it
came to the same path on a backend whose runtime serves it; the runtime's answer (its status,
content type and body: JSON, or binary audio) is relayed as it came. A backend without the route
(Ollama, or a runtime answering 404/405) is skipped for the next candidate, else the client gets
a 404 naming the backend and the route. Errors are OpenAI's.

A multipart form (audio transcriptions, translations) is streamed: read only as far as its
``model`` field (:class:`FormScan`), then sent on, those bytes first and the rest of the client's
body as it comes (wire.Form), never held whole. A form with ``model`` before its file (the openai
SDK's, httpx's order) is sent on after its first bytes; one with the file first (``curl -F
file=@… -F model=…``) is held up to its ``model`` field. ``server.max_body_bytes`` bounds the
form: a Content-Length over it, or a form that grows past it before its ``model`` is found, is a
413 before anything is sent; one that grows past it while it is sent on cuts the upload and is a
413 (unless the backend answered first). Retries: a form is sent to one backend only once any of
the client's body beyond what was read for ``model`` has gone to it; a backend skipped before that
(its runtime has no such route, its connection refused) gives way to the next candidate as for
JSON, after it the backend's answer is the client's (a 404/405 the 404 naming it). A form read
whole while looking for ``model`` is sent again like a JSON body. The upload stays bounded by
``server.receive_timeout`` (clients.py); one that breaks off is not counted against the backend.
May import: the proxy's layers below (formats, wire, errors, state), and front/openai.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.message import Message

from aiohttp import web

from ..errors import InvalidRequest, RequestTooLarge
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
_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})  # the Content-Encodings aiohttp undoes
_MISSING_MODEL = ("You must provide a model parameter.", "model", "missing_model")


class LocalFormat(OpenAIFormat):
    """A JSON body relayed as it came; only ``model`` (and ``stream``, which these routes do not
    take) is read. The answer is the runtime's own, content type included."""

    def body(self, req: ApiRequest, body: bytes, report: Report) -> tuple[bytes, str]:
        return body, ""


class FormFormat(LocalFormat):
    """A multipart form (audio transcriptions), routed by its ``model`` field: read (:meth:`read`)
    only as far as that field, the rest streamed to the backend as it comes (wire.Form)."""

    def __init__(self, content_type: str, limit: int) -> None:
        self.content_type = content_type
        self.limit = limit

    def parse(self, body: bytes, endpoint: Endpoint) -> ApiRequest:  # a form read whole
        scan = FormScan(self.content_type)
        found = scan.model(body, final=True)
        assert found is not None  # (final: found, or raised)
        return self._request(endpoint, Form(body, self.content_type, *found, self.limit))

    async def read(self, request: web.Request, endpoint: Endpoint) -> ApiRequest:
        scan = FormScan(self.content_type)
        if request.content_length is not None and request.content_length > self.limit:
            raise _too_large(self.limit, request.content_length)
        content = request.content
        head = bytearray()
        while (found := scan.model(head, final=content.at_eof())) is None:
            head += await content.readany()
            if len(head) > self.limit:
                raise _too_large(self.limit, len(head))
        rest = None if content.at_eof() else content.iter_any()
        # what is read is the body decoded (aiohttp undoes a gzip or deflate Content-Encoding): the
        # client's Content-Length counts the encoded bytes, and sent upstream with the decoded ones
        # it would leave the rest on the runtime's connection, read there as the next request
        decoded = request.headers.get("Content-Encoding", "").lower() in _DECODED
        form = Form(bytes(head), self.content_type, *found, self.limit, rest,
                    None if decoded else request.content_length)
        return self._request(endpoint, form)

    @staticmethod
    def _request(endpoint: Endpoint, form: Form) -> ApiRequest:
        try:
            model = form.head[form.start:form.end].decode()
        except UnicodeDecodeError:
            raise InvalidRequest("`model` must be UTF-8 text.", param="model") from None
        if not model:
            raise InvalidRequest(_MISSING_MODEL[0], param=_MISSING_MODEL[1], code=_MISSING_MODEL[2])
        return ApiRequest(endpoint, {"model": model}, None, model, False, False, form=form)


def _too_large(limit: int, size: int) -> RequestTooLarge:
    return RequestTooLarge(f"Maximum request body size {limit} exceeded, actual body size {size}.")


def _param(value: str, header: str, name: str) -> str | None:
    msg = Message()
    msg[header] = value
    param = msg.get_param(name, header=header)
    return param if isinstance(param, str) else None


class FormScan:
    """Where the ``model`` field's value lies in a multipart form read so far: the parts before it
    are only skipped over (their headers read), the parts after it not looked at. Fed the form as
    it grows, it resumes where it stopped, so each byte is searched once."""

    def __init__(self, content_type: str) -> None:
        if not content_type.lower().startswith("multipart/form-data"):
            raise InvalidRequest("This endpoint takes a multipart/form-data body.")
        boundary = _param(content_type, "content-type", "boundary")
        if not boundary or not boundary.isascii():
            raise InvalidRequest("The multipart/form-data body has no valid boundary.")
        self.delimiter = b"--" + boundary.encode()
        self.part = -1  # where the current part's delimiter is (-1: the first not found yet)
        self.start = -1  # where its content starts (-1: its headers not read yet)
        self.seek = 0  # where the search under way goes on

    def model(self, form: bytes | bytearray, *, final: bool) -> tuple[int, int] | None:
        """The start and end of the ``model`` field's value in ``form``, or None while more of the
        form is needed; raises InvalidRequest when the form (``final``: all of it) has none."""
        delimiter = self.delimiter
        while True:
            if self.part < 0:
                self.part = self._find(form, delimiter, 0)
                if self.part < 0:
                    break
            head = self.part + len(delimiter)
            if self.start < 0:
                if len(form) < head + 2 or form.startswith(b"--", head):  # not yet, or the form's end
                    break
                head_end = self._find(form, b"\r\n\r\n", head)
                if head_end < 0:
                    break
                self.start = head_end + 4
            end = self._find(form, b"\r\n" + delimiter, self.start)
            if end < 0:
                break
            if _field_name(form[head:self.start - 4]) == "model":
                return self.start, end
            self.part, self.start = end + 2, -1
        if final or self.part >= 0 and form.startswith(b"--", self.part + len(delimiter)):
            raise InvalidRequest(_MISSING_MODEL[0], param=_MISSING_MODEL[1], code=_MISSING_MODEL[2])
        return None

    def _find(self, form: bytes | bytearray, needle: bytes, start: int) -> int:
        at = form.find(needle, max(start, self.seek))
        self.seek = 0 if at >= 0 else max(start, len(form) - len(needle) + 1)
        return at


def _field_name(head: bytes | bytearray) -> str | None:
    for line in bytes(head).split(b"\r\n"):
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
        proxy = request.app[PROXY]
        fmt = FormFormat(request.headers.get("Content-Type", ""), proxy.config.server.max_body_bytes)
        return await proxy.serve(request, endpoint, fmt, read=fmt.read)

    return handler


def add_routes(app: web.Application) -> None:
    for path, kind in JSON_ROUTES.items():
        app.router.add_post(path, _json(relayed(kind, path)))
    for path, kind in FORM_ROUTES.items():
        app.router.add_post(path, _form(relayed(kind, path)))
