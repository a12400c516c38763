"""Hostile input, generated: requests built from the proxy's own OpenAPI description (a small
JSON-schema → hypothesis translation below) and raw garbage (hypothesis). Every answer is a 4xx in the client's error
shape or a success; never a 5xx from the proxy, never a crash, never unbounded label growth.
At least 10,000 requests in all."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import threading

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.app import create_app
from mtproxy.openapi import REQUEST_BODIES
from mtproxy.server import start

from .conftest import make_config

SENT = {"n": 0}
FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


async def tolerant_runtime(request: web.Request) -> web.StreamResponse:
    """An upstream that answers anything, so every 5xx seen would be the proxy's own."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = {}
    if isinstance(body, dict) and body.get("stream") is True:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
                         b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
        return resp
    return web.json_response({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


class Served:
    """Fake upstream + proxy on a loop of their own, so hypothesis can drive them synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port, self.app = self._call(self._start())

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        up = web.Application()
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def models(request: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "m1"}]})

        up.router.add_get("/health", health)
        up.router.add_get("/v1/models", models)
        up.router.add_post("/{tail:.*}", tolerant_runtime)
        self.up_runner = web.AppRunner(up)
        await self.up_runner.setup()
        await web.TCPSite(self.up_runner, "127.0.0.1", 0).start()
        up_port = self.up_runner.addresses[0][1]
        cfg = make_config([{"name": "up", "runtime": "vllm", "url": f"http://127.0.0.1:{up_port}"}],
                          models={"m1": {"aliases": ["alias1"]}}, server={"max_body_bytes": 64 * 1024})
        app = create_app(cfg)
        self.runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=1)
        return port, app

    def stop(self) -> None:
        async def cleanup():
            await self.runner.cleanup()
            await self.up_runner.cleanup()
        self._call(cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.stop()


def send(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        SENT["n"] += 1
        return resp.status, data, dict(resp.getheaders())
    finally:
        conn.close()


def check(path: str, status: int, data: bytes) -> None:
    assert status < 500, (path, status, data[:300])
    if status >= 400:
        err = orjson.loads(data)["error"]
        if path.startswith("/api/"):
            assert isinstance(err, str) and err
        else:
            assert isinstance(err["message"], str) and err["message"] and "type" in err


JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
ANY_JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                      max_size=3), max_leaves=5)
_TYPES = {"string": st.text(max_size=30), "boolean": st.booleans(), "null": st.none(),
          "integer": st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
          "number": st.floats(allow_nan=False, allow_infinity=False)}


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values that match a (small) JSON schema — and, now and then, values that do not."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    types = schema.get("type")
    if isinstance(types, list):
        return st.one_of(*(from_schema({**schema, "type": t}) for t in types))
    if types == "object":
        props = schema.get("properties", {})
        required = schema.get("required", [])
        fixed = st.fixed_dictionaries({k: from_schema(props.get(k, {})) for k in required},
                                      optional={k: from_schema(v) for k, v in props.items() if k not in required})
        if schema.get("additionalProperties", True):
            extra = st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=2)
            fixed = st.tuples(extra, fixed).map(lambda t: {**t[0], **t[1]})
        return fixed
    if types == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=4)
    if types == "string" and schema.get("minLength"):
        return st.text(min_size=schema["minLength"], max_size=30)
    return _TYPES.get(types, ANY_JSON) if types else ANY_JSON


MODELS = st.one_of(st.sampled_from(["m1", "alias1"]), st.text(max_size=40))


def with_model(schema: dict) -> st.SearchStrategy[dict]:
    return st.tuples(from_schema(schema), MODELS, st.booleans()).map(
        lambda t: {**t[0], "model": t[1]} if t[2] else t[0])


@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_requests_generated_from_the_openapi_description(served, path):
    @FUZZ
    @given(body=with_model(REQUEST_BODIES[path]))
    def run(body):
        status, data, _ = send(served.port, path, json.dumps(body).encode())  # json: any int size
        check(path, status, data)

    run()


SEEDS = [b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 5}',
         b'{"model": "alias1", "prompt": "x", "stream_options": {"include_usage": true}, "stream": true}',
         b'{"model": "m1", "input": ["a", "b"]}', b'{"model": "m1", "options": {"num_predict": 3}, "raw": true}']


@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_mutated_requests(served, path):
    """A cheap mutation fuzzer: valid bodies with random bytes flipped, cut, repeated or inserted."""
    rnd = random.Random(path)
    for _ in range(900):
        body = bytearray(rnd.choice(SEEDS))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(body))
            op = rnd.randrange(4)
            if op == 0:
                body[i] = rnd.randrange(256)
            elif op == 1:
                del body[i:i + rnd.randint(1, 8)]
            elif op == 2:
                body[i:i] = rnd.choice([b"{", b"}", b"[", b'"', b"\\", b"\xff", b"null", b"1e999", b",", b":"])
            else:
                body[i:i] = body[i:i + rnd.randint(1, 16)] * rnd.randint(2, 4)
        status, data, _ = send(served.port, path, bytes(body))
        check(path, status, data)


@FUZZ
@given(path=st.sampled_from(list(REQUEST_BODIES)), raw=st.one_of(
    st.binary(max_size=300),  # garbage, invalid UTF-8, truncated JSON
    st.text(max_size=300).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=30).map(lambda v: json.dumps(v).encode()),
))
def test_garbage_bodies(served, path, raw):
    status, data, _ = send(served.port, path, raw)
    check(path, status, data)
    assert status != 200 or raw.strip().startswith(b"{")


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deep nesting
    b'{"model": "m1", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"model": "m1", "messages": [], "max_tokens": 1e308}',
    b'{"model": "m1", "messages": [], "max_tokens": 99999999999999999999999999999}',
    b'{"model": "m1", "messages": [], "max_tokens": -1, "n": -5, "temperature": "hot"}',
    b'{"model": "\xff\xfe", "messages": []}',
    b'{"model": "m1\\u0000", "messages": []}',
    b'{"model": ["m1"], "messages": []}',
    b'{"model": "m1", "stream": "true", "messages": []}',
    b'{"model": "m1", "stream_options": [1], "stream": true, "messages": []}',
    b'{"model": "m1", "messages": [], "unknown_field": {"nested": [1, 2, 3]}}',
    b"",
])
@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_hand_picked_hostile_bodies(served, path, body):
    status, data, _ = send(served.port, path, body)
    check(path, status, data)


def test_huge_body_is_413(served):
    for path in REQUEST_BODIES:
        status, data, _ = send(served.port, path, b'{"model": "m1", "x": "' + b"a" * 200_000 + b'"}')
        assert status == 413
        check(path, status, data)


def test_header_injection_is_not_reflected(served):
    status, data, headers = send(served.port, "/v1/chat/completions",
                                 b'{"model": "m1", "messages": []}',
                                 headers={"X-Evil": "a%0d%0aSet-Cookie: x=1", "Authorization": "Bearer \u00ff"})
    assert status == 200 and "Set-Cookie" not in headers
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", "2")
    conn.endheaders()
    conn.send(b"{}")
    status = conn.getresponse().status
    conn.close()
    assert status == 400


def test_thousands_of_model_names_leave_labels_bounded(served):
    for i in range(2000):
        status, data, _ = send(served.port, "/v1/chat/completions",
                               orjson.dumps({"model": f"random-{i}", "messages": []}))
        assert status == 404
    status, data, _ = send(served.port, "/metrics", b"", method="GET")
    assert b"random-" not in data
    series = [line for line in data.decode().splitlines() if line.startswith("mtproxy_requests_total{")]
    assert len(series) < 60


def test_still_serving_and_enough_requests_were_sent(served):
    status, data, _ = send(served.port, "/health", b"", method="GET")
    assert status == 200
    status, data, _ = send(served.port, "/v1/chat/completions", orjson.dumps({"model": "m1", "messages": []}))
    assert status == 200
    px = served.app[__import__("mtproxy.state").state.PROXY]
    assert px.in_flight == 0
    assert SENT["n"] >= 10_000, SENT["n"]
    print(json.dumps({"hostile_requests_sent": SENT["n"]}))
