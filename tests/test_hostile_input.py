"""Hostile input, generated: requests built from the proxy's own OpenAPI description (a small
JSON-schema → hypothesis translation below) and raw garbage (hypothesis); header values that are
not UTF-8, malformed request heads, JSON nested deeper than any encoder on the path takes, and
wrong types in every field through every translation (seeded generators). Every answer is a 4xx
in the client's error shape or a success; never a 5xx from the proxy, never a crash, never a key
echoed, never unbounded label growth; after each test the proxy still serves, with nothing left in
flight. At least 10,000 requests in all. Each test stands alone: it counts its own requests, and
runs alone or in any order."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import re
import socket

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fake_runtime import Behaviour, FakeRuntime
from mtproxy.app import create_app
from mtproxy.front.local import FORM_ROUTES
from mtproxy.openapi import REQUEST_BODIES
from mtproxy.state import PROXY
from mtproxy.wire import MAX_DEPTH

from .conftest import make_config
from .hostile import WRONG, ServedOnLoop, field_paths, mutated, wrong_typed
from .transcripts import replay

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
KEY = "sk-fuzz-key-0123456789"  # the keyed proxy's one client key


class Served(ServedOnLoop):
    """Fake runtimes + proxies on a loop of their own, so hypothesis can drive them synchronously.

    Model ``m1`` (alias ``alias1``) on a vLLM backend (the fake runtime), ``o1`` on an Ollama
    backend (Ollama's transcripts replayed): both answer whatever they are sent, so every 5xx seen
    would be the proxy's own. ``port``: an open proxy; ``keyed_port``: one with a client key and
    CORS for any origin."""

    async def _start(self) -> int:
        self.fakes = [await FakeRuntime("up", Behaviour(models=["m1"], record=False)).start(),
                      await replay("ollama").start()]
        backends = [{"name": "up", "runtime": "vllm", "url": self.fakes[0].url},
                    {"name": "oll", "runtime": "ollama", "url": self.fakes[1].url, "models": ["o1"]}]
        cfg = make_config(backends, models={"m1": {"aliases": ["alias1"]}}, server={"max_body_bytes": 64 * 1024})
        self.app = create_app(cfg)
        port = await self.proxy(self.app)
        keyed = make_config(backends, server={"api_keys": [KEY], "cors_origins": ["*"]})
        self.keyed_port = await self.proxy(create_app(keyed))
        return port

    async def _stop(self) -> None:
        await super()._stop()
        for fake in self.fakes:
            await fake.stop()


class Client:
    """One test's requests to the served proxies, counted: each test asserts its own count."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.port = served.port
        self.sent = 0

    def send(self, path: str, body: bytes, headers: dict[str, str] | None = None,
             method: str = "POST") -> tuple[int, bytes, dict[str, str]]:
        """To the open proxy."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            self.sent += 1
            return resp.status, data, dict(resp.getheaders())
        finally:
            conn.close()

    def send_headers(self, method: str, path: str, body: bytes,
                     headers: list[tuple[str, bytes]]) -> tuple[int, bytes, str]:
        """To the keyed proxy, header values as the bytes given."""
        conn = http.client.HTTPConnection("127.0.0.1", self.served.keyed_port, timeout=30)
        try:
            conn.putrequest(method, path)
            if all(name != "Content-Type" for name, _ in headers):
                headers = [("Content-Type", b"application/json"), *headers]
            for name, value in headers:
                conn.putheader(name, value)  # bytes go on the wire as they are
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            self.sent += 1
            return resp.status, data, str(resp.getheaders())
        finally:
            conn.close()

    def send_raw(self, data: bytes) -> tuple[int | None, bytes]:
        """``data`` as it is to the keyed proxy; the status and the whole answer (None: closed
        without one)."""
        with socket.create_connection(("127.0.0.1", self.served.keyed_port), timeout=10) as sock:
            sock.sendall(data)
            answer = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                if not chunk:
                    break
                answer += chunk
                head, sep, body = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if sep and ((length and len(body) >= int(length[1])) or body.endswith(b"0\r\n\r\n")):
                    break
        self.sent += 1
        status = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        return (int(status[1]) if status else None), answer


@pytest.fixture(scope="module")
def servers():
    s = Served()
    yield s
    s.stop()


async def settled(px) -> int:
    """``px.in_flight`` read on the proxy's loop once nothing is left in flight, or after a second.
    A handler finishes its bookkeeping after its client has the last byte: read from this thread
    at once, the count raced the loop (1 in 2 of 3 runs with two proxies on it)."""
    for _ in range(100):
        if px.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    return px.in_flight


@pytest.fixture
def served(servers):
    """A test's client; after the test, the proxy still serves and has nothing left in flight."""
    client = Client(servers)
    yield client
    after = Client(servers)
    status, data, _ = after.send("/health", b"", method="GET")
    assert status == 200, data[:300]
    status, data, _ = after.send("/v1/chat/completions", orjson.dumps({"model": "m1", "messages": []}))
    assert status == 200, data[:300]
    assert servers.call(settled(servers.app[PROXY])) == 0


def check(path: str, status: int, data: bytes) -> None:
    assert status < 500, (path, status, data[:300])
    if status >= 400:
        err = orjson.loads(data)["error"]
        if path.startswith("/api/"):
            assert isinstance(err, str) and err
        else:
            assert isinstance(err["message"], str) and err["message"] and "type" in err


class Tally:
    """Failed checks, gathered so one run tells how many answers were wrong, not only the first."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed: list[str] = []

    def __call__(self, ok: bool, *what) -> None:
        self.sent += 1
        if not ok:
            self.failed.append(repr(what)[:300])

    def check(self, path: str, status: int, data: bytes, *what) -> None:
        try:
            check(path, status, data)
        except (AssertionError, ValueError, KeyError, TypeError):
            self(False, path, status, data[:200], *what)
        else:
            self(True)

    def done(self) -> None:
        assert not self.failed, f"{len(self.failed)} of {self.sent} wrong: " + "\n".join(self.failed[:5])


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


MODELS = st.one_of(st.sampled_from(["m1", "alias1", "o1"]), st.text(max_size=40))


def with_model(schema: dict) -> st.SearchStrategy[dict]:
    return st.tuples(from_schema(schema), MODELS, st.booleans()).map(
        lambda t: {**t[0], "model": t[1]} if t[2] else t[0])


@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_requests_generated_from_the_openapi_description(served, path):
    @FUZZ
    @given(body=with_model(REQUEST_BODIES[path]))
    def run(body):
        status, data, _ = served.send(path, json.dumps(body).encode())  # json: any int size
        check(path, status, data)

    run()
    assert served.sent >= FUZZ.max_examples


SEEDS = [b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 5}',
         b'{"model": "alias1", "prompt": "x", "stream_options": {"include_usage": true}, "stream": true}',
         b'{"model": "m1", "input": ["a", "b"]}', b'{"model": "m1", "options": {"num_predict": 3}, "raw": true}']


MUTATIONS = 900  # per path
INSERTS = [b"{", b"}", b"[", b'"', b"\\", b"\xff", b"null", b"1e999", b",", b":"]  # what the mutations insert


@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_mutated_requests(served, path):
    """A cheap mutation fuzzer: valid bodies with random bytes flipped, cut, repeated or inserted."""
    rnd = random.Random(path)
    for _ in range(MUTATIONS):
        status, data, _ = served.send(path, mutated(rnd, rnd.choice(SEEDS), INSERTS))
        check(path, status, data)
    assert served.sent == MUTATIONS


FORM_SEEDS = [b"".join((
    b'--bnd\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model + b"\r\n",
    b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF' + b"\x00\xff" * 200 + b"\r\n",
    b'--bnd\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n--bnd--\r\n',
)) for model in (b"m1", b"alias1", b"o1")]
FORM_SEEDS.append(FORM_SEEDS[0].replace(b"--bnd--", b"--bnd\r\n" + b"x" * 70_000))  # over the limit
FORM_INSERTS = [b"--bnd", b"\r\n", b"\r\n\r\n", b"--bnd--", b'name="model"', b"\xff"]


@pytest.mark.parametrize("path", list(FORM_ROUTES))
def test_mutated_multipart_forms(served, path):
    """The streamed multipart reader (front/local.py): forms with bytes flipped, cut, repeated or
    inserted, sent whole or chunked at random points, never get a 5xx or an answer not OpenAI's."""
    rnd = random.Random(path)
    for n in range(MUTATIONS // 3):
        data = mutated(rnd, rnd.choice(FORM_SEEDS), FORM_INSERTS, times=(0, 4), cut=40, repeat=64)
        if n % 2:  # chunked, split at random points
            cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 6))))
            data = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]  # type: ignore[assignment]
        status, answer, _ = served.send(path, data, headers={"Content-Type": "multipart/form-data; boundary=bnd"})
        check(path, status, answer)
    assert served.sent == MUTATIONS // 3


GARBAGE = st.one_of(
    st.binary(max_size=300),  # garbage, invalid UTF-8, truncated JSON
    st.text(max_size=300).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=30).map(lambda v: json.dumps(v).encode()),
)


def test_garbage_bodies(served):
    @FUZZ
    @given(path=st.sampled_from(list(REQUEST_BODIES)), raw=GARBAGE)
    def run(path, raw):
        status, data, _ = served.send(path, raw)
        check(path, status, data)
        assert status != 200 or raw.strip().startswith(b"{")

    run()
    assert served.sent >= FUZZ.max_examples


HOSTILE_BODIES = [
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
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_hand_picked_hostile_bodies(served, path, body):
    status, data, _ = served.send(path, body)
    check(path, status, data)


def test_huge_body_is_413(served):
    for path in REQUEST_BODIES:
        status, data, _ = served.send(path, b'{"model": "m1", "x": "' + b"a" * 200_000 + b'"}')
        assert status == 413
        check(path, status, data)


def test_header_injection_is_not_reflected(served):
    status, data, headers = served.send("/v1/chat/completions", b'{"model": "m1", "messages": []}',
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


# --- Translation paths: every client format, every backend API ----------------------------------

# (client path, model) for every translation: OpenAI clients to the Ollama backend (o1; to an
# OpenAI backend what the proxy does not read passes through untouched), Ollama clients to both.
OLLAMA_POSTS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]
CLIENT_POSTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", *OLLAMA_POSTS]
CLIENT_GETS = ["/v1/models", "/api/tags", "/mtproxy/backends"]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
FULL_BODIES: dict[str, list[dict]] = {  # every field each translation reads, and some it passes on
    "/v1/chat/completions": [{
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "content": "r", "name": "f", "tool_call_id": "c1"}],
        "tools": [TOOL], "stop": ["x"], "max_tokens": 5, "max_completion_tokens": 5, "temperature": 0.5,
        "top_p": 0.9, "seed": 1, "frequency_penalty": 0, "presence_penalty": 0, "options": {"num_ctx": 8},
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}},
        "keep_alive": "5m", "think": False, "stream": False}],
    "/v1/completions": [{"prompt": ["p", "q"], "suffix": "s", "max_tokens": 5, "stop": "x", "options": {"top_k": 2},
                         "response_format": {"type": "json_object"}, "keep_alive": "1m", "stream": False}],
    "/v1/embeddings": [{"input": ["a", "b"], "dimensions": 4, "encoding_format": "float"}],
    "/api/chat": [{
        "messages": [{"role": "user", "content": "hi", "images": ["AAAA"]},
                     {"role": "assistant", "content": "",
                      "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                     {"role": "tool", "content": "r", "tool_name": "f"}],
        "tools": [TOOL], "format": {"type": "object"}, "keep_alive": "5m", "think": False, "stream": False,
        "options": {"num_predict": 5, "temperature": 0.1, "stop": ["x"], "seed": 1, "top_p": 0.5}}],
    "/api/generate": [{"prompt": "hi", "suffix": "s", "system": "sys", "images": ["AAAA"], "format": "json",
                       "options": {"num_predict": 3}, "raw": False, "stream": False, "keep_alive": "1m",
                       "think": False, "template": "t", "context": [1, 2]},
                      {"prompt": "hi", "raw": True, "stream": False, "format": {"type": "object"}}],
    "/api/embed": [{"input": ["a", "b"], "truncate": True, "dimensions": 4, "options": {}, "keep_alive": "1m"}],
    "/api/embeddings": [{"prompt": "a", "options": {}}],
    "/api/show": [{"verbose": True}],
}
ROUTES = [(path, model) for path in CLIENT_POSTS for model in (["o1"] if path.startswith("/v1/") else ["m1", "o1"])]


def wrong_type_requests(path: str, model: str) -> int:
    """What the test below sends for one route: each body as it is, then every field wrong."""
    return sum(1 + len(WRONG) * len(list(field_paths({"model": model, **full}))) for full in FULL_BODIES[path])


@pytest.mark.parametrize("path,model", ROUTES)
def test_wrong_types_in_every_field_through_every_translation(served, path, model):
    rnd = random.Random(f"{path} {model}")
    tally = Tally()
    for full in FULL_BODIES[path]:
        body = {"model": model, **full}
        status, data, _ = served.send(path, orjson.dumps(body))
        assert status == 200, (path, data[:300])  # the untouched body is fine
        for at, value, wrong in wrong_typed(rnd, body, stream=path not in ("/v1/embeddings", "/api/show")):
            status, data, _ = served.send(path, orjson.dumps(wrong))
            tally.check(path, status, data, at, value)
    tally.done()
    assert served.sent == wrong_type_requests(path, model)


@pytest.mark.parametrize("path,field,shown", [
    ("/v1/chat/completions", {"messages": 5}, "`messages`"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "`messages[0].content`"),
    ("/v1/chat/completions", {"messages": [], "response_format": "json"}, "`response_format`"),
    ("/v1/completions", {"prompt": {"p": 1}}, "`prompt`"),
    ("/api/chat", {"messages": 5}, "`messages`"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi", "images": "AAAA"}]}, "`messages[0].images`"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "format": 5}, "`format`"),
    ("/api/generate", {"prompt": "hi", "system": ["s"]}, "`system`"),
])
def test_wrong_types_are_400_naming_the_field(served, path, field, shown):
    for model in ("o1",) if path.startswith("/v1/") else ("m1", "o1"):
        status, data, _ = served.send(path, orjson.dumps({"model": model, **field}))
        check(path, status, data)
        err = orjson.loads(data)["error"]
        assert status == 400 and shown in (err if isinstance(err, str) else err["message"]), (model, data)


# --- Nesting deeper than any encoder on the path takes --------------------------------------------

# @nest: where the nested value goes; @string: the same, as a JSON string
SITES: dict[str, list[bytes]] = {
    "/v1/chat/completions": [
        b'{"model": "@model", "messages": [{"role": "user", "content": "hi"}], "x": @nest}',
        b'{"model": "@model", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
        b'"function": {"name": "f", "parameters": @nest}}]}',
        b'{"model": "@model", "messages": [], "response_format": {"type": "json_schema", "json_schema": '
        b'{"name": "o", "schema": @nest}}}',
        b'{"model": "@model", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", '
        b'"function": {"name": "f", "arguments": @string}}]}]}'],
    "/v1/completions": [b'{"model": "@model", "prompt": "p", "options": {"x": @nest}}',
                        b'{"model": "@model", "prompt": "p", "stream": true, "x": @nest}'],
    "/v1/embeddings": [b'{"model": "@model", "input": @nest}'],
    "/api/chat": [
        b'{"model": "@model", "messages": [{"role": "user", "content": "hi"}], "format": @nest}',
        b'{"model": "@model", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
        b'"function": {"name": "f", "parameters": @nest}}], "stream": false}',
        b'{"model": "@model", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": '
        b'{"name": "f", "arguments": @nest}}]}]}'],
    "/api/generate": [b'{"model": "@model", "prompt": "p", "format": @nest, "stream": false}',
                      b'{"model": "@model", "prompt": "p", "raw": true, "options": {"x": @nest}}'],
    "/api/embed": [b'{"model": "@model", "input": @nest}'],
    "/api/embeddings": [b'{"model": "@model", "prompt": "a", "x": @nest}'],
    "/api/show": [b'{"model": "@model", "x": @nest}'],
}
NEST_MODELS = ("m1", "alias1", "o1")
DEPTHS = [1, 60, MAX_DEPTH - 8, MAX_DEPTH, MAX_DEPTH + 1, 200, 253, 254, 255, 256, 600, 900, 1023, 1024, 1025, 5000]


def nested(rnd: random.Random, depth: int) -> bytes:
    """An object nested ``depth`` levels deep, each level below the first an object or an array."""
    levels = [b"{" if i == 0 or rnd.random() < 0.5 else b"[" for i in range(depth)]
    return b"".join(b'{"k": ' if c == b"{" else c for c in levels) + b"1" + b"".join(
        b"}" if c == b"{" else b"]" for c in reversed(levels))


def depth_of_site(template: bytes) -> int:
    """How many objects and arrays enclose the template's placeholder (its strings have none)."""
    before = template.split(b"@nest")[0].split(b"@string")[0]
    return before.count(b"{") + before.count(b"[") - before.count(b"}") - before.count(b"]")


@pytest.mark.parametrize("path", CLIENT_POSTS)
def test_nesting_deeper_than_any_encoder_takes(served, path):
    """Up to MAX_DEPTH levels are served; deeper is a 400 in the client's shape, to any backend,
    whether the body is encoded again (alias1, o1, Ollama clients) or not (m1): orjson writes at most
    254 levels and reads 1024. JSON in a string (tool-call arguments) counts where the proxy parses
    it: on its way to an Ollama backend."""
    rnd = random.Random(path)
    tally = Tally()
    for template in SITES[path]:
        outer = depth_of_site(template)
        for model in NEST_MODELS:
            for depth in DEPTHS:
                value = nested(rnd, depth)
                body = template.replace(b"@model", model.encode()).replace(b"@nest", value)
                body = body.replace(b"@string", orjson.dumps(value.decode()))
                status, data, _ = served.send(path, body)
                tally.check(path, status, data, model, depth)
                if b"@string" in template:  # past orjson's 1024 it is not JSON: `{}`, as such arguments are
                    too_deep = model == "o1" and MAX_DEPTH < depth <= 1024
                else:
                    too_deep = outer + depth > MAX_DEPTH
                tally(status == (400 if too_deep else 200), "status", status, model, outer + depth, data[:200])
    tally.done()
    assert served.sent == len(SITES[path]) * len(NEST_MODELS) * len(DEPTHS)


# --- Header values that are not UTF-8 --------------------------------------------------------------

HEADER_BYTES = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])  # field-vchar and obs-text (RFC 9110)
ODD = [b"\xff\xfe", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
       b"\xe9", b" ", b"\t", b"%ff", b"\\xff", KEY.encode()]


def header_junk(rnd: random.Random) -> bytes:
    return b"".join(rnd.choice(ODD) if rnd.random() < 0.4 else bytes([rnd.choice(HEADER_BYTES)])
                    for _ in range(rnd.randint(1, 16))).strip() or b"\xff"


VALID = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
         "/v1/completions": {"prompt": "p"}, "/v1/embeddings": {"input": "a"},
         "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "stream": False},
         "/api/generate": {"prompt": "p", "stream": False}, "/api/embed": {"input": "a"},
         "/api/embeddings": {"prompt": "a"}, "/api/show": {}}


HEADER_ROUNDS = 30  # per path


@pytest.mark.parametrize("path", CLIENT_POSTS + CLIENT_GETS)
def test_header_values_that_are_not_utf8(served, path):
    """Keys (and other headers) whose bytes are not UTF-8: 401 in the client's shape for a wrong
    key, served as usual with the right one; never a 5xx, never the key's bytes in the answer."""
    rnd = random.Random(path)
    method = "GET" if path in CLIENT_GETS else "POST"
    tally = Tally()
    for _ in range(HEADER_ROUNDS):
        junk = header_junk(rnd)
        model = rnd.choice(["m1", "o1"])
        body = orjson.dumps({"model": model, **VALID[path]}) if method == "POST" else b""
        right = ("Authorization", b"Bearer " + KEY.encode())
        headers = rnd.choice([
            [("Authorization", b"Bearer " + junk)], [("Authorization", junk)], [("x-api-key", junk)],
            [("Authorization", b"Bearer " + KEY.encode() + junk)], [("Authorization", b"Bearer " + junk),
                                                                     ("x-api-key", junk)],
            [right, ("Origin", b"https://" + junk)], [right, ("X-Note", junk)], [right, ("Accept", junk)],
            [right, ("User-Agent", junk)], [right, ("Content-Type", b"application/json; charset=" + junk)],
        ])
        sent = [value for _, value in headers]
        status, data, _ = served.send_headers(method, path, body, headers)
        tally.check(path, status, data, headers)
        if sent[0] == right[1]:
            tally(status == 200, "status", status, headers, data[:200])
        elif all(v.strip() != KEY.encode() and v.partition(b" ")[2].strip() != KEY.encode() for v in sent):
            tally(status == 401, "status", status, headers, data[:200])
        if len(junk) >= 4:
            tally(junk not in data and junk.decode("utf-8", "replace") not in data.decode("utf-8", "replace"),
                  "echo", headers, data[:200])
    tally.done()
    assert served.sent == HEADER_ROUNDS


# --- Malformed request heads ------------------------------------------------------------------------

SECRET = b"sk-head-secret-5e6f7a8b"
HEADS = {
    "no colon": b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer @key\r\nBad Header\r\n\r\n",
    "control in path": b"GET /v1/\x01models HTTP/1.1\r\nAuthorization: Bearer @key\r\n\r\n",
    "NUL in value": b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer @key\x00\r\n\r\n",
    "control in name": b"GET /v1/models HTTP/1.1\r\nAuth\x01orization: Bearer @key\r\n\r\n",
    "long line": b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer @key\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    "key in query": b"GET /v1/models?key=@key HTTP/1.1\r\nX: \x7f\x01\r\n\r\n",
    "version": b"GET /v1/models HTTP/9.9\r\nAuthorization: Bearer @key\r\n\r\n",
    "method": b"G@T /v1/models HTTP/1.1\r\nAuthorization: Bearer @key\r\n\r\n",
    "TLS": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03@key\r\n\r\n",
    "length": b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer @key\r\nContent-Length: abc\r\n\r\n",
    "length and chunked": b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer @key\r\n"
                          b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    "two lengths": b"POST /api/chat HTTP/1.1\r\nx-api-key: @key\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunk size": b"POST /api/chat HTTP/1.1\r\nx-api-key: @key\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\n{}\r\n0\r\n\r\n",
    "chunk end": b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer @key\r\nTransfer-Encoding: chunked\r\n"
                 b"\r\n2\r\n{}XX0\r\n\r\n",
    "folded": b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer\r\n @key\r\n\r\n",
    "empty name": b"GET /v1/models HTTP/1.1\r\n: @key\r\n\r\n",
}


def check_head_answer(status: int | None, answer: bytes, secret: bytes) -> None:
    assert status is None or status < 500, answer[:300]
    for i in range(len(secret) - 7):  # not even a part of the key
        assert secret[i:i + 8] not in answer, answer[:300]
    if status is not None and status >= 400:
        err = orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]
        assert isinstance(err, str) or isinstance(err["message"], str), answer[:300]


@pytest.mark.parametrize("name", HEADS)
def test_malformed_request_heads_are_not_echoed(served, name, caplog):
    """aiohttp's own answer quoted the bad line, key and all, and logged it with a traceback."""
    caplog.set_level(logging.DEBUG)
    status, answer = served.send_raw(HEADS[name].replace(b"@key", SECRET))
    check_head_answer(status, answer, SECRET)
    assert status is None or 400 <= status < 500, answer[:300]
    assert SECRET.decode() not in caplog.text


HEAD_MUTATIONS = 400


def test_mutated_request_heads(served, caplog):
    """Valid heads with bytes flipped, cut, repeated or inserted: no 5xx, no key in the answer
    or the log."""
    caplog.set_level(logging.DEBUG)
    rnd = random.Random("heads")
    bases = [b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer @key\r\nConnection: close\r\n\r\n",
             b"GET /api/tags HTTP/1.1\r\nx-api-key: @key\r\nConnection: close\r\nAccept: */*\r\n\r\n"]
    odd = [b"\x00", b"\x01", b"\x7f", b"\xff", b" ", b":", b"\r", b"\n", b"\r\n", b"\t", b"/", b"%"]
    for _ in range(HEAD_MUTATIONS):
        head = bytearray(rnd.choice(bases).replace(b"@key", SECRET))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(head) - 4)
            op = rnd.randrange(3)
            if op == 0:
                head[i:i + 1] = rnd.choice(odd)
            elif op == 1:
                del head[i:i + rnd.randint(1, 4)]
            else:
                head[i:i] = rnd.choice(odd) * rnd.randint(1, 3)
        status, answer = served.send_raw(bytes(head) + b"\r\n\r\n")
        check_head_answer(status, answer, SECRET)
    assert SECRET.decode() not in caplog.text
    assert served.sent == HEAD_MUTATIONS


MODEL_NAMES = 2000


def _request_series(served) -> list[str]:
    status, data, _ = served.send("/metrics", b"", method="GET")
    assert b"random-" not in data
    return [line for line in data.decode().splitlines() if line.startswith("mtproxy_requests_total{")]


def test_thousands_of_model_names_leave_labels_bounded(served):
    """Unknown models add no series of their own (the other tests' routes and statuses made
    those there are: the count is taken before and after)."""
    before = _request_series(served)
    for i in range(MODEL_NAMES):
        status, data, _ = served.send("/v1/chat/completions", orjson.dumps({"model": f"random-{i}", "messages": []}))
        assert status == 404
    series = _request_series(served)
    assert len(series) <= len(before) + 1  # at most the one of unrouted chat requests answered 404
    assert served.sent == MODEL_NAMES + 2


def test_at_least_10000_requests_in_all():
    """The module's promise, counted from what each test sends (the tests whose count is not plain
    from their parameters assert their own), so it holds whichever tests run, in whatever order."""
    paths = len(REQUEST_BODIES)
    sent = {
        "generated from the OpenAPI description": paths * FUZZ.max_examples,
        "mutated bodies": paths * MUTATIONS,
        "garbage": FUZZ.max_examples,
        "hand-picked bodies": paths * len(HOSTILE_BODIES),
        "huge bodies": paths,
        "header injection": 2,
        "wrong types in every field": sum(wrong_type_requests(path, model) for path, model in ROUTES),
        "nesting": sum(len(SITES[path]) for path in CLIENT_POSTS) * len(NEST_MODELS) * len(DEPTHS),
        "header values": len(CLIENT_POSTS + CLIENT_GETS) * HEADER_ROUNDS,
        "malformed heads": len(HEADS) + HEAD_MUTATIONS,
        "model names": MODEL_NAMES + 2,
    }
    assert sum(sent.values()) >= 10_000, sent
