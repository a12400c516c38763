"""The rest of the local API (front/local.py): rerank, score, tokenize, detokenize, infill, audio,
images. Each route is routed by ``model`` (a multipart form's ``model`` field for audio
transcriptions), relayed as it came to the same path, and answered as the runtime answered; a
backend without the route is skipped, else the client gets a 404 naming it. Against real runtimes
on 127.0.0.1 (a small local-API runtime below, the fake runtime without these routes)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from mtproxy.front.local import FORM_ROUTES, JSON_ROUTES
from mtproxy.state import POOL

from .conftest import make_config, until

AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00binary audio"


class LocalRuntime:
    """A runtime serving the local API (vLLM- or llama-server-like): every POST recorded, and
    answered with what it got; ``/v1/audio/speech`` with audio bytes. ``ollama``: answers
    Ollama's probes instead, and serves none of these routes."""

    def __init__(self, name: str, models: list[str], *, ollama: bool = False) -> None:
        self.name = name
        self.models = models
        self.ollama = ollama
        self.got: list[tuple[str, str, bytes]] = []  # path, content type, body
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
        body = await request.read()
        self.got.append((request.path, request.headers.get("Content-Type", ""), body))
        if self.ollama or request.path not in JSON_ROUTES and request.path not in FORM_ROUTES:
            raise web.HTTPNotFound()
        if request.path == "/v1/audio/speech":
            return web.Response(body=AUDIO, content_type="audio/mpeg")
        return web.json_response({"backend": self.name, "path": request.path, "size": len(body)})


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
