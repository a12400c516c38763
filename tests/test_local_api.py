"""The rest of the local API (front/local.py): rerank, score, tokenize, detokenize, infill, audio,
images. Each route is routed by ``model`` (a multipart form's ``model`` field for audio
transcriptions), relayed as it came to the same path, and answered as the runtime answered; a
backend without the route is skipped, else the client gets a 404 naming it. Against real runtimes
on 127.0.0.1 (a small local-API runtime below, the fake runtime without these routes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.errors import InvalidRequest
from mtproxy.front.local import FORM_ROUTES, JSON_ROUTES, FormScan
from mtproxy.state import POOL, PROXY

from .conftest import make_config, until

AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00binary audio"


class LocalRuntime:
    """A runtime serving the local API (vLLM- or llama-server-like): every POST recorded, and
    answered with what it got; ``/v1/audio/speech`` with audio bytes. ``ollama``: answers
    Ollama's probes instead, and serves none of these routes."""

    def __init__(self, name: str, models: list[str], *, ollama: bool = False, serves: bool = True) -> None:
        self.name = name
        self.models = models
        self.ollama = ollama
        self.serves = serves  # False: answers 404 to every POST at once, its body unread
        self.got: list[tuple[str, str, bytes]] = []  # path, content type, body
        self.first_bytes = asyncio.Event()  # the first bytes of a body came in
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> LocalRuntime:
        app = web.Application()
        if self.ollama:
            app.router.add_get("/api/version", self.info({"version": "0.12.0"}))
            app.router.add_get("/api/tags", self.info({"models": [{"name": m, "model": m} for m in self.models]}))
        else:
            app.router.add_get("/health", self.info({"status": "ok"}))
            app.router.add_get("/v1/models", self.info(
                {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}))
        app.router.add_post("/{path:.*}", self.answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    @staticmethod
    def info(body: dict[str, Any]):
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(body)

        return handler

    async def answer(self, request: web.Request) -> web.Response:
        if not self.serves:
            self.got.append((request.path, request.headers.get("Content-Type", ""), b""))
            raise web.HTTPNotFound()
        chunks = []
        async for chunk in request.content.iter_any():  # a broken upload raises here: nothing recorded
            self.first_bytes.set()
            chunks.append(chunk)
        body = b"".join(chunks)
        self.got.append((request.path, request.headers.get("Content-Type", ""), body))
        if self.ollama or request.path not in JSON_ROUTES and request.path not in FORM_ROUTES:
            raise web.HTTPNotFound()
        if request.path == "/v1/audio/speech":
            return web.Response(body=AUDIO, content_type="audio/mpeg")
        answer: dict[str, Any] = {"backend": self.name, "path": request.path, "size": len(body)}
        if request.path in FORM_ROUTES:
            answer["text"] = f"{self.name} heard {len(body)} bytes"
        return web.json_response(answer)


@pytest.fixture
async def served(proxy_factory, runtime_factory):
    one = await LocalRuntime("one", ["m1"]).start()
    two = await LocalRuntime("two", ["m2", "shared"]).start()
    ollama = await LocalRuntime("oll", ["o1"], ollama=True).start()
    bare = await runtime_factory("bare", models=["plain", "shared"])  # no local-API routes
    proxy = await proxy_factory(make_config([
        {"name": "one", "url": one.url, "runtime": "vllm"},
        {"name": "two", "url": two.url, "runtime": "llamacpp"},
        {"name": "oll", "url": ollama.url, "runtime": "ollama"},
        {"name": "bare", "url": bare.url, "runtime": "vllm"},
    ], models={"m1": {"aliases": ["alias1"]}}))
    pool = proxy.app[POOL]
    await until(lambda: all(b.up for b in pool.backends) and {"m1", "m2", "o1", "plain"} <= set(pool.by_model))
    async with aiohttp.ClientSession() as http:
        yield proxy, one, two, ollama, http
    for rt in (one, two, ollama):
        assert rt.runner is not None
        await rt.runner.cleanup()


def _form(model: str, boundary: str = "b0undary") -> tuple[bytes, str]:
    parts = [
        b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b'Content-Type: audio/wav\r\n\r\nRIFF\x00\x01\r\n--not-the-boundary\xff\r\n',
        b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model.encode() + b'\r\n',
        b'--' + boundary.encode() + b'\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n',
        b'--' + boundary.encode() + b'--\r\n',
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("path", [p for p in JSON_ROUTES if p != "/v1/audio/speech"])
async def test_json_routes_relay_the_body_unchanged_routed_by_model(served, path):
    proxy, one, two, _, http = served
    for model, runtime in (("m1", one), ("m2", two)):
        body = b'{"model": "%s", "query": "q", "documents": ["a", "b"], "top_n": 1, "x_extra": {"k": [1]}}' % (
            model.encode())
        async with http.post(proxy.url + path, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-mtproxy-backend"] == runtime.name
            assert await resp.json() == {"backend": runtime.name, "path": path, "size": len(body)}
        assert runtime.got[-1] == (path, "application/json", body)  # same path, same bytes


async def test_speech_answer_is_binary_with_its_content_type(served):
    proxy, _, two, _, http = served
    body = orjson.dumps({"model": "m2", "input": "hello", "voice": "alloy"})
    async with http.post(proxy.url + "/v1/audio/speech", data=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "audio/mpeg"
        assert await resp.read() == AUDIO
    assert two.got[-1][2] == body


@pytest.mark.parametrize("path", list(FORM_ROUTES))
async def test_multipart_routed_by_the_forms_model(served, path):
    proxy, one, two, _, http = served
    for model, runtime in (("m1", one), ("m2", two)):
        body, ctype = _form(model)
        async with http.post(proxy.url + path, data=body, headers={"Content-Type": ctype}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["backend"] == runtime.name
        assert runtime.got[-1] == (path, ctype, body)


async def test_an_alias_is_the_served_name_in_the_body_and_the_form(served):
    proxy, one, _, _, http = served
    async with http.post(proxy.url + "/v1/rerank", json={"model": "alias1", "query": "q"}) as resp:
        assert resp.status == 200
    assert orjson.loads(one.got[-1][2]) == {"model": "m1", "query": "q"}
    body, ctype = _form("alias1")
    async with http.post(proxy.url + "/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status == 200
    assert one.got[-1][2] == _form("m1")[0]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/audio/transcriptions"])
async def test_unknown_model_is_404_in_openai_shape(served, path):
    proxy, _, _, _, http = served
    if path in FORM_ROUTES:
        body, ctype = _form("nope")
    else:
        body, ctype = b'{"model": "nope"}', "application/json"
    async with http.post(proxy.url + path, data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["param"] == "model"


@pytest.mark.parametrize("body,ctype", [
    (b'{"query": "q"}', "application/json"),
    (b'{"model": 3}', "application/json"),
    (b"not json", "application/json"),
    (b'{"model": "m1", "stream": true}', "application/json"),
])
async def test_bad_json_bodies_are_400(served, body, ctype):
    proxy, one, _, _, http = served
    async with http.post(proxy.url + "/v1/rerank", data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status == 400
        assert "message" in (await resp.json())["error"]


@pytest.mark.parametrize("body,ctype", [
    (_form("m1")[0], "application/json"),
    (_form("m1")[0], "multipart/form-data"),  # no boundary
    (_form("m1")[0].replace(b'name="model"', b'name="modelx"'), _form("m1")[1]),
    (_form("")[0], _form("")[1]),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n\xff\xfe\r\n--b0undary--", _form("")[1]),
    (b"garbage", _form("m1")[1]),
])
async def test_bad_forms_are_400(served, body, ctype):
    proxy, _, _, _, http = served
    async with http.post(proxy.url + "/v1/audio/transcriptions", data=body, headers={"Content-Type": ctype}) as resp:
        assert resp.status == 400
        assert "message" in (await resp.json())["error"]


async def test_ollama_backend_has_no_such_routes_404_naming_it(served):
    proxy, _, _, ollama, http = served
    async with http.post(proxy.url + "/tokenize", json={"model": "o1", "content": "hi"}) as resp:
        assert resp.status == 404
        error: dict[str, Any] = (await resp.json())["error"]
        assert "oll" in error["message"] and "/tokenize" in error["message"]
        assert error["code"] == "route_not_served"
    assert not [p for p, _, _ in ollama.got if p == "/tokenize"]  # never sent


async def test_backend_answering_404_for_the_route_is_404_naming_it(served):
    proxy, _, _, _, http = served
    async with http.post(proxy.url + "/v1/rerank", json={"model": "plain", "query": "q"}) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert "bare" in error["message"] and "/v1/rerank" in error["message"]


async def test_a_backend_without_the_route_gives_way_to_one_with_it(served):
    proxy, _, two, _, http = served
    for _ in range(6):  # whichever backend is picked first, the answer is from the one serving it
        async with http.post(proxy.url + "/v1/rerank", json={"model": "shared", "query": "q"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "two"


# --- multipart forms, streamed -------------------------------------------------------------------
# A form is read only as far as its `model` field; the rest of the client's body goes on to the
# backend as it comes. Within server.max_body_bytes (413 past it, even mid-upload); once any of the
# rest has been sent to one backend, no other is tried.

TRANSCRIBE = "/v1/audio/transcriptions"
BIG = bytes(range(256)) * 4096  # 1 MiB of "audio", every byte value in it


def _model_first(model: str, audio: bytes, boundary: str = "sdk-like") -> tuple[bytes, str]:
    """A form as the openai SDK (httpx) writes it: the data fields, then the file."""
    b = boundary.encode()
    body = b"".join((
        b"--" + b + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model.encode() + b"\r\n",
        b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n",
        b"--" + b + b"--\r\n",
    ))
    return body, f"multipart/form-data; boundary={boundary}"


async def _held(body: bytes, held_back: int, release: asyncio.Event) -> AsyncIterator[bytes]:
    """The body sent chunked, its last ``held_back`` bytes only once ``release`` is set."""
    yield body[:-held_back]
    await asyncio.wait_for(release.wait(), 20)  # a hang guard: a proxy that waits for the whole body
    yield body[-held_back:]


async def test_a_form_goes_on_to_the_backend_while_the_client_still_uploads(served):
    proxy, one, _, _, http = served
    body, ctype = _model_first("alias1", BIG)
    # the backend must see the form's first bytes while the client still holds back its end: a
    # proxy reading the form whole never sends them, and the client's upload times out
    async with http.post(proxy.url + TRANSCRIBE, data=_held(body, 64 * 1024, one.first_bytes),
                         headers={"Content-Type": ctype}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-mtproxy-backend"] == "one"
    assert one.got[-1] == (TRANSCRIBE, ctype, _model_first("m1", BIG)[0])  # the alias became the served name


async def test_model_after_a_big_file_part_is_found_and_the_form_relayed_unchanged(served):
    proxy, _, two, _, http = served
    boundary = b"curl-like"  # curl -F file=@a.wav -F model=…: the file first
    body = b"".join((
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + BIG + b"\r\n",
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nm2\r\n',
        b"--" + boundary + b"--\r\n",
    ))
    ctype = "multipart/form-data; boundary=curl-like"
    for data in (body, _held(body, 10, asyncio.Event())):  # Content-Length, and chunked
        if not isinstance(data, bytes):  # the model is in the held-back end: nothing to wait for
            data = _chunks(body, 1000)
        async with http.post(proxy.url + TRANSCRIBE, data=data, headers={"Content-Type": ctype}) as resp:
            assert resp.status == 200, await resp.text()
        assert two.got[-1] == (TRANSCRIBE, ctype, body)


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


async def test_openai_sdk_transcription_through_the_proxy(served):
    proxy, one, _, _, _ = served
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-none", max_retries=0) as client:
        result = await client.audio.transcriptions.create(model="alias1", file=("a.wav", BIG, "audio/wav"))
    path, ctype, body = one.got[-1]
    assert path == TRANSCRIBE and ctype.startswith("multipart/form-data; boundary=")
    assert result.text == f"one heard {len(body)} bytes"
    # the SDK (httpx) writes the data fields before the file: the model is found in the first bytes
    assert body.index(b'name="model"\r\n\r\nm1\r\n') < body.index(b'name="file"') < body.index(BIG)


@pytest.fixture
async def small(proxy_factory):
    """A proxy taking bodies up to 64 kB, in front of one local-API runtime."""
    one = await LocalRuntime("one", ["m1"]).start()
    proxy = await proxy_factory(make_config([{"name": "one", "url": one.url, "runtime": "vllm"}],
                                            server={"max_body_bytes": 64 * 1024}))
    await until(lambda: "m1" in proxy.app[POOL].by_model)
    async with aiohttp.ClientSession() as http:
        yield proxy, one, http
    assert one.runner is not None
    await one.runner.cleanup()


async def _too_large(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 413
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert str(64 * 1024) in error["message"]


async def test_a_form_over_the_limit_is_413(small):
    proxy, one, http = small
    body, ctype = _model_first("m1", BIG)
    async with http.post(proxy.url + TRANSCRIBE, data=body, headers={"Content-Type": ctype}) as resp:
        await _too_large(resp)  # its Content-Length says so: not read
    assert not one.first_bytes.is_set()
    file_first = body[body.index(b"--sdk-like\r\nContent-Disposition: form-data; name=\"file\""):-len(b"--sdk-like--\r\n")]
    file_first += body[:body.index(b"--sdk-like\r\nContent-Disposition: form-data; name=\"file\"")] + b"--sdk-like--\r\n"
    async with http.post(proxy.url + TRANSCRIBE, data=_chunks(file_first, 8192), headers={"Content-Type": ctype}) as resp:
        await _too_large(resp)  # chunked, the model after the file: past the limit before it is found
    assert not one.first_bytes.is_set()


async def test_a_form_growing_past_the_limit_mid_upload_is_cut_and_413(small):
    proxy, one, http = small
    body, ctype = _model_first("m1", BIG)

    async def upload() -> AsyncIterator[bytes]:
        yield body[:8192]
        await asyncio.wait_for(one.first_bytes.wait(), 20)  # on its way to the backend
        async for chunk in _chunks(body[8192:], 8192):
            yield chunk

    async with http.post(proxy.url + TRANSCRIBE, data=upload(), headers={"Content-Type": ctype}) as resp:
        await _too_large(resp)
    assert not one.got  # and its upload was cut: the backend never got a whole form
    async with http.post(proxy.url + TRANSCRIBE, data=_chunks(_model_first("m1", b"x" * 1000)[0], 100),
                         headers={"Content-Type": ctype}) as resp:
        assert resp.status == 200  # the backend was not blamed for it


async def test_a_form_streamed_to_a_backend_is_not_sent_to_another(proxy_factory):
    first = await LocalRuntime("first", ["gone"], serves=False).start()
    second = await LocalRuntime("second", ["gone"], serves=False).start()
    proxy = await proxy_factory(make_config([{"name": rt.name, "url": rt.url, "runtime": "vllm"}
                                             for rt in (first, second)]))
    await until(lambda: all(b.up for b in proxy.app[POOL].backends))
    body, ctype = _model_first("gone", BIG)
    release = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(proxy.url + TRANSCRIBE, data=_held(body, 1024, release),
                                 headers={"Content-Type": ctype}) as resp:
                assert resp.status == 404
                error = (await resp.json())["error"]
            release.set()
        tried = [rt for rt in (first, second) if rt.got]
        assert len(tried) == 1  # its answer (404: no such route) is the client's; no retry
        assert error["code"] == "route_not_served"
        assert tried[0].name in error["message"] and TRANSCRIBE in error["message"]
    finally:
        for rt in (first, second):
            assert rt.runner is not None
            await rt.runner.cleanup()


async def test_a_backend_refusing_the_connection_gives_way_before_the_form_is_sent(proxy_factory):
    dead = await LocalRuntime("dead", ["dup"]).start()
    live = await LocalRuntime("live", ["dup"]).start()
    proxy = await proxy_factory(make_config([{"name": rt.name, "url": rt.url, "runtime": "vllm"}
                                             for rt in (dead, live)], health={"interval": 600, "timeout": 1}))
    pool = proxy.app[POOL]
    await until(lambda: all(b.up for b in pool.backends))
    assert dead.runner is not None and live.runner is not None
    await dead.runner.cleanup()  # its port now refuses; no health check notices before a request does
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # ties rotate: one of the two picks the dead backend first
                body, ctype = _model_first("dup", BIG)
                async with http.post(proxy.url + TRANSCRIBE, data=_held(body, 1024, live.first_bytes),
                                     headers={"Content-Type": ctype}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["x-mtproxy-backend"] == "live"
                live.first_bytes.clear()
        assert not next(b for b in pool.backends if b.name == "dead").up  # it was tried, and refused
    finally:
        await live.runner.cleanup()


PART = st.tuples(st.sampled_from(["model", "file", "language", "modelx", ""]),
                 st.binary(max_size=40) | st.sampled_from([b"m1", b"--b0", b"\r\n--b0", b"\r\n\r\n", b""]))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(parts=st.lists(PART, max_size=4), tail=st.sampled_from([b"--b0--\r\n", b"--b0", b""]),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_form_scan_fed_in_pieces_finds_what_it_finds_in_the_whole(parts, tail, cuts):
    """FormScan resumes where it stopped: fed a form in any pieces, it answers as for the whole."""
    form = b"".join(b'--b0\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), value)
                    for name, value in parts) + tail
    ctype = "multipart/form-data; boundary=b0"

    def whole() -> tuple[int, int] | str:
        try:
            found = FormScan(ctype).model(form, final=True)
        except InvalidRequest as err:
            return err.message
        assert found is not None
        return found

    scan, seen, found = FormScan(ctype), bytearray(), None
    try:
        for cut in [*sorted(c for c in cuts if c < len(form)), len(form)]:
            seen += form[len(seen):cut]
            found = scan.model(seen, final=len(seen) == len(form))
            if found is not None:
                break
        assert found is not None
        pieces: tuple[int, int] | str = found
    except InvalidRequest as err:
        pieces = err.message
    assert pieces == whole()


async def test_a_client_breaking_off_its_upload_is_not_the_backends_failure(small):
    proxy, one, _ = small
    body, ctype = _model_first("m1", b"x" * 30_000)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"POST {TRANSCRIBE} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:8192])
    await asyncio.wait_for(one.first_bytes.wait(), 20)
    writer.close()  # mid-upload
    backend = proxy.app[POOL].backends[0]
    await until(lambda: proxy.app[PROXY].in_flight == 0)
    assert backend.up and backend.failures == 0 and not one.got
