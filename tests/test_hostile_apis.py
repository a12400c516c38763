"""Hostile clients on the endpoints added last: /v1/messages, /v1/responses and its stored-response
routes, the multipart audio routes, the page (/ui, its login, cookie and CSRF) and the
/mtproxy/* routes behind it (events, requests, verify, backend actions), with keys configured.

Tables of requests a hostile client sends (wrong types, path tricks in ids, broken bodies and
forms, forged cookies, missing CSRF tokens, odd methods), each answered below 500, in the
client's own error shape, with no key echoed; then the defects this sweep found, each a test of
its own: a body whose Content-Encoding does not decode (500, and a traceback from aiohttp), a
gzip form sent upstream with the client's encoded Content-Length (the form cut short at the
runtime, its rest read there as the next request), HEAD on the page's streams (a body written
to a HEAD response, a viewer joined for ever), a NUL in a static file's name (500), two verify
runs started at once, and a client that stops reading a stream blamed on its backend. The
generic suites (test_hostile_input.py, _messages.py, _responses.py) fuzz the request bodies."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import socket
import zlib
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web

from mtproxy.state import KEYS, POOL
from mtproxy.ui import UI

from .conftest import make_config, until

CLIENT, ADMIN = "sk-client-5ecret-0a1b2c", "sk-admin-5ecret-3d4e5f"
SECRETS = (CLIENT.encode(), ADMIN.encode(), b"5ecret")
JSON = {"Content-Type": "application/json"}
FORM_TYPE = "multipart/form-data; boundary=bnd"
MESSAGE = {"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
    fn = b'; filename="' + filename + b'"' if filename else b""
    return b'--bnd\r\nContent-Disposition: form-data; name="' + name + b'"' + fn + b"\r\n\r\n" + value + b"\r\n"


AUDIO = part(b"file", b"RIFF" + bytes(range(256)) * 8, b"a.wav")
FORM = part(b"model", b"w1") + AUDIO + part(b"language", b"en") + b"--bnd--\r\n"


class Audio:
    """A runtime serving the audio routes: it keeps each form it got (path, bytes)."""

    def __init__(self) -> None:
        self.forms: list[tuple[str, bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Audio:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "object": "list", "data": [{"id": "w1", "object": "model"}]})

        async def transcribe(request: web.Request) -> web.Response:
            body = await request.read()
            self.forms.append((request.path, body))
            return web.json_response({"text": "ok", "bytes": len(body)})

        app = web.Application(client_max_size=1 << 24)
        app.router.add_get("/health", ok)
        app.router.add_get("/v1/models", ok)
        app.router.add_post("/v1/audio/transcriptions", transcribe)
        app.router.add_post("/v1/audio/translations", transcribe)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def audio():
    rt = await Audio().start()
    yield rt
    await rt.stop()


@pytest.fixture
async def served(runtime_factory, proxy_factory, audio):
    """A proxy with client and admin keys: ``m1`` on a vLLM that serves /v1/messages and
    /v1/responses itself (relayed), ``t1`` on an older one (translated), ``w1`` on the audio
    runtime."""
    native = await runtime_factory("native", models=["m1"], version="0.11.1", native=("messages", "responses"))
    old = await runtime_factory("old", models=["t1"], version="0.9.0")
    return await proxy_factory(make_config(
        [{"name": "native", "runtime": "vllm", "url": native.url},
         {"name": "old", "runtime": "vllm", "url": old.url},
         {"name": "audio", "runtime": "vllm", "url": audio.url, "models": ["w1"]}],
        server={"api_keys": [CLIENT], "admin_keys": [ADMIN], "max_body_bytes": 256 * 1024}))


def problem(path: str, status: int, data: bytes) -> str | None:
    """What is wrong with an answer: a 5xx, a key in it, an error not in the client's shape."""
    if status >= 500:
        return f"HTTP {status}"
    if any(secret in data for secret in SECRETS):
        return "a key echoed"
    if status < 400 or not data:  # (a HEAD answer has no body)
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "error body not JSON"
    if path.startswith("/v1/messages"):
        ok = body.get("type") == "error" and isinstance(body["error"].get("type"), str) \
            and isinstance(body["error"].get("message"), str)
    elif path.startswith("/api/"):
        ok = isinstance(body.get("error"), str)
    else:
        ok = isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str) \
            and isinstance(body["error"].get("type"), str)
    return None if ok else f"not the client's error shape: {data[:200]!r}"


@dataclass
class Case:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    want: tuple[int, ...] = ()  # the statuses expected (empty: any below 500)
    key: str | None = CLIENT  # sent as a bearer token (None: no key)


async def run_table(http: aiohttp.ClientSession, url: str, cases: list[Case]) -> list[str]:
    wrong = []
    for case in cases:
        headers = dict(case.headers)
        if case.key is not None:
            headers.setdefault("Authorization", f"Bearer {case.key}")
        async with http.request(case.method, url + case.path, data=case.body, headers=headers) as resp:
            data = await resp.read()
            found = problem(case.path, resp.status, data)
            if found is None and case.want and resp.status not in case.want:
                found = f"HTTP {resp.status}, not {case.want}: {data[:200]!r}"
            if found:
                wrong.append(f"{case.method} {case.path[:80]} {case.body and case.body[:60]!r}: {found}")
    return wrong


async def still_serves(http: aiohttp.ClientSession, url: str) -> None:
    auth = {"Authorization": f"Bearer {CLIENT}"}
    async with http.post(url + "/v1/messages", json=MESSAGE, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(url + "/v1/responses", json={"model": "t1", "input": "hi"}, headers=auth) as resp:
        assert resp.status == 200, await resp.text()


# --- Areas where nothing was wrong: representative cases --------------------------------------

BODIES = [b"", b"null", b"[]", b"\xef\xbb\xbf{}", b'{"model": "m1", "max_tokens": NaN}', b'{"model": Infinity}',
          b'{"model": "m1", "max_tokens": 1e999}', b'{"model": "m1", "max_tokens": 123456789012345678901234567890}',
          b'{"model": "\xff\xfe"}', b'{"model": "\\ud800"}', b'{"model": 5}', b'{"model": ["m1"]}',
          b'{"model": {"m1": 1}}', b'{"model": "m1", "model": "t1", "max_tokens": 5, "messages": [], "input": "x"}',
          b'{"model": "m1", "input": "' + b"x" * 300_000 + b'"}', b"[" * 10_000 + b"]" * 10_000]
TYPED = [Case("POST", path, body, JSON) for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses")
         for body in BODIES] + [
    Case("POST", "/v1/messages", orjson.dumps(MESSAGE), {"Content-Type": "text/plain"}, (200,)),
    Case("POST", "/v1/messages", gzip.compress(orjson.dumps(MESSAGE)), {**JSON, "Content-Encoding": "gzip"}, (200,)),
    Case("POST", "/v1/messages", orjson.dumps({**MESSAGE, "max_tokens": None}), JSON, (400,)),
    Case("POST", "/v1/messages", orjson.dumps({**MESSAGE, "messages": {"role": "user"}}), JSON, (400,)),
    Case("POST", "/v1/responses", orjson.dumps({"model": "t1", "input": [[["x"]]]}), JSON, (400,)),
    Case("POST", "/v1/responses", orjson.dumps({"model": "t1", "input": "x", "previous_response_id": "../x"}), JSON,
         (404,)),
]
IDS = ["..", "%2E%2E", "a%2Fb", "a%00b", "%ff", "%c3%28", "resp_1%2F..%2F..%2Fetc", "x" * 3000, "%20"]
QUERIES = ["limit=-1", "limit=0", "limit=101", "limit=abc", "limit=" + "9" * 5000, "limit=1e3", "order=up",
           "order=%00", "after=%ff", "before=x", "include=x&include=y", "limit=1&limit=2"]
STORED = [Case(method, f"/v1/responses/{rid}{tail}") for rid in IDS for method, tail in
          (("GET", ""), ("DELETE", ""), ("GET", "/input_items"))] + [
    Case("GET", f"/v1/responses/nope/input_items?{q}") for q in QUERIES] + [
    Case(method, "/v1/responses/x", want=(405,)) for method in ("PUT", "PATCH", "POST")]
FORMS = [Case("POST", path, body, {"Content-Type": ctype}, want) for path in ("/v1/audio/transcriptions",
                                                                             "/v1/audio/translations")
         for body, ctype, want in [
             (FORM, "multipart/form-data", (400,)),  # no boundary
             (FORM, "multipart/form-data; boundary=", (400,)),
             (FORM, "multipart/form-data; boundary=\"\"", (400,)),
             (FORM, "application/json", (400,)),
             (FORM.replace(b"--bnd--\r\n", b""), FORM_TYPE, (200,)),  # never closed: the runtime's to judge
             (AUDIO + b"--bnd--\r\n", FORM_TYPE, (400,)),  # no model
             (part(b"model", b"") + AUDIO + b"--bnd--\r\n", FORM_TYPE, (400,)),
             (AUDIO + part(b"model", b"w1") + b"--bnd--\r\n", FORM_TYPE, (200,)),  # the file before the model
             (part(b"model", b"w1") + part(b"model", b"t1") + AUDIO + b"--bnd--\r\n", FORM_TYPE, (200,)),
             (part(b"model", b"\xff\xfe") + AUDIO, FORM_TYPE, (400,)),
             (part(b"model", b"nope") + AUDIO, FORM_TYPE, (404,)),
             (b'--bnd\r\nContent-Disposition: form-data; name="model"\r\nX-Junk: ' + b"j" * 100_000
              + b"\r\n\r\nw1\r\n" + AUDIO, FORM_TYPE, (200,)),  # an enormous part header
             (b'--bnd\r\nContent-Disposition: form-data; name="model"\r\n\r\nw1', FORM_TYPE, (400,)),  # unterminated
             (FORM.replace(b"--bnd--", b"--bnd\r\n" + b"x" * 300_000), FORM_TYPE, (413,)),
             (b"\x00\xff" * 100, FORM_TYPE, (400,)), (b"", FORM_TYPE, (400,)),
         ]]


async def test_bodies_ids_queries_and_forms(served, http):
    """Wrong JSON types, duplicate keys, NaN and 1e999, a BOM, bodies too big or too deep; ids
    with path tricks (.., %2F, NUL, 3000 characters) and junk queries on the stored-response
    routes; forms without a boundary, a model, an end, or with a huge part header."""
    wrong = await run_table(http, served.url, TYPED + STORED + FORMS)
    assert not wrong, f"{len(wrong)} wrong:\n" + "\n".join(wrong[:10])
    await still_serves(http, served.url)


LOGIN = "/ui/login"
KEYED = [
    *[Case(method, path, body, JSON, (401,), key) for key in (None, "sk-wrong", ADMIN)  # an admin key is no client key
      for method, path, body in (("POST", "/v1/messages", orjson.dumps(MESSAGE)),
                                 ("POST", "/v1/messages/count_tokens", orjson.dumps(MESSAGE)),
                                 ("POST", "/v1/responses", b'{"model": "t1", "input": "x"}'),
                                 ("GET", "/v1/responses/x", None), ("DELETE", "/v1/responses/x", None),
                                 ("GET", "/v1/responses/x/input_items", None),
                                 ("POST", "/v1/audio/transcriptions", FORM))],
    *[Case(method, path, body, JSON, want, key) for key, want in ((None, (401,)), ("sk-wrong", (401,)),
                                                                   (CLIENT, (401,)))
      for method, path, body in (("POST", "/mtproxy/verify", b'{"model": "m1"}'),
                                 ("POST", "/mtproxy/backends/old/start", None),
                                 ("POST", "/mtproxy/backends/old/stop", None))],
    *[Case("GET", path, None, {}, (401,), key) for key in (None, "sk-wrong")
      for path in ("/mtproxy/events", "/mtproxy/requests", "/mtproxy/verify")],
    *[Case("POST", LOGIN, body, JSON, want, None) for body, want in (
        (b"", (400,)), (b"null", (400,)), (b'{"key": 5}', (400,)), (b'{"key": ""}', (400,)),
        (b'{"key": ["' + ADMIN.encode() + b'"]}', (400,)), (b'{"key": "\xff"}', (400,)),
        (b'{"key": "sk-wrong"}', (401,)), (b'{"key": "' + CLIENT.encode() + b'\\u0000"}', (401,)),
        (b'{"key": "' + b"k" * 100_000 + b'"}', (401,)), (b"key=" + ADMIN.encode(), (400,)))],
    Case("POST", LOGIN, b'{"key": "' + ADMIN.encode() + b'"}', {**JSON, "Origin": "null"}, (403,), None),
    Case("POST", LOGIN, b'{"key": "' + ADMIN.encode() + b'"}', {**JSON, "Origin": "http://evil.example"}, (403,), None),
    *[Case(method, path, None, {}, (405,), ADMIN) for method in ("PUT", "PATCH", "DELETE", "OPTIONS")
      for path in ("/ui", LOGIN, "/mtproxy/events", "/mtproxy/requests", "/mtproxy/verify",
                   "/mtproxy/backends/old/start")],
    *[Case("POST", f"/mtproxy/backends/{name}/{action}", None, {}, (404,), ADMIN)
      for name in ("nope", "old", "a%2Fb", "a%00b", "<b>x</b>", "n" * 2000) for action in ("start", "stop")],
    *[Case("GET", f"/mtproxy/requests?{q}", None, {}, (), CLIENT) for q in (
        "format=xml", "format=", "limit=-5", "limit=abc", "limit=" + "9" * 5000, "status=%ff", "model=%00",
        "backend=" + "b" * 5000, "endpoint=%27%20OR%201=1--", "format=csv&limit=0", "client=x&client=y")],
    *[Case("POST", "/mtproxy/verify", body, JSON, (400,), ADMIN) for body in (
        b"", b"[]", b'{"model": 5}', b'{"model": ""}', b'{"model": "m1", "seconds": NaN}',
        b'{"model": "m1", "seconds": 1e999}', b'{"model": "m1", "rounds": true}', b'{"model": "m1", "rounds": 0.5}',
        b'{"model": "m1", "backend": 5}', b'{"model": "m1", "max_tokens": 99999999999999999999999}')],
]


async def test_keys_login_and_admin_routes(served, http):
    """With keys set: no key, a wrong key, a client key on admin routes, an admin key on client
    routes are 401 in the route's shape; a login with junk is a 400 or 401, from another origin
    a 403; backend actions on names that are not managed backends a 404; junk queries and verify
    bodies a 400; methods a route does not take a 405; no key ever in an answer."""
    wrong = await run_table(http, served.url, KEYED)
    assert not wrong, f"{len(wrong)} wrong:\n" + "\n".join(wrong[:10])
    await still_serves(http, served.url)


async def login(http: aiohttp.ClientSession, url: str, key: str) -> tuple[str, str]:
    """A page session for ``key``: its cookie's token and its CSRF token."""
    async with http.post(url + LOGIN, json={"key": key}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.cookies["mtproxy_ui"].value, (await resp.json())["csrf"]


async def test_cookies_and_csrf(served, http):
    """Garbage, forged and expired cookies open nothing; a cookie for a client key opens no admin
    action; a POST or DELETE with the cookie but without its CSRF token (or another session's) is
    a 403; the session token is never shown again and no key is ever in an answer."""
    url = served.url
    client_token, client_csrf = await login(http, url, CLIENT)
    admin_token, admin_csrf = await login(http, url, ADMIN)
    expired_token, _ = await login(http, url, CLIENT)
    session = served.app[KEYS].sessions.get(expired_token)
    assert session is not None
    session.expires = 0.0  # as if LIFETIME had passed
    cases: list[tuple[str, str, dict[str, str], tuple[int, ...]]] = []
    for cookie in ("garbage", "", '"a;b"', "a" * 4000, "%ff%00", client_token + "x", expired_token):
        for method, path in (("GET", "/mtproxy/events"), ("GET", "/mtproxy/requests"), ("GET", "/v1/responses/x"),
                             ("POST", "/mtproxy/verify"), ("DELETE", "/v1/responses/x")):
            cases.append((method, path, {"Cookie": f"mtproxy_ui={cookie}", "X-CSRF-Token": client_csrf}, (401,)))
    for method, path in (("POST", "/v1/responses"), ("DELETE", "/v1/responses/x"), ("POST", "/v1/messages")):
        for csrf in (None, "", "wrong", admin_csrf, client_csrf + "\u00e9"):
            headers = {"Cookie": f"mtproxy_ui={client_token}", **({"X-CSRF-Token": csrf} if csrf is not None else {})}
            cases.append((method, path, headers, (403,)))
    for action in ("/mtproxy/verify", "/mtproxy/backends/old/start", "/mtproxy/reload"):
        cases.append(("POST", action, {"Cookie": f"mtproxy_ui={client_token}", "X-CSRF-Token": client_csrf}, (403,)))
        cases.append(("POST", action, {"Cookie": f"mtproxy_ui={admin_token}"}, (403,)))
    cases.append(("GET", "/mtproxy/requests?format=json", {"Cookie": f"mtproxy_ui={client_token}"}, (200,)))
    wrong = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:  # the Cookie header as given
        for method, path, headers, want in cases:
            async with bare.request(method, url + path, headers=headers, data=b"{}") as resp:
                data = await resp.read()
                found = problem(path, resp.status, data) or (None if resp.status in want else f"HTTP {resp.status}")
                for token in (client_token, admin_token, expired_token):
                    if token.encode() in data:
                        found = "a session token echoed"
                if found:
                    wrong.append(f"{method} {path} {headers}: {found} {data[:160]!r}")
    assert not wrong, f"{len(wrong)} wrong:\n" + "\n".join(wrong[:10])
    await still_serves(http, url)


# --- Defects found, each with its case ---------------------------------------------------------

UNDECODABLE = [  # (path, body, headers)
    (path, body, {"Content-Type": ctype, "Content-Encoding": encoding})
    for path, ctype in (("/v1/messages", "application/json"), ("/v1/messages/count_tokens", "application/json"),
                        ("/v1/responses", "application/json"), ("/v1/chat/completions", "application/json"),
                        ("/api/chat", "application/json"), ("/v1/audio/transcriptions", FORM_TYPE),
                        ("/ui/login", "application/json"), ("/mtproxy/verify", "application/json"))
    for encoding, body in (("gzip", b"this is not gzip at all"), ("deflate", orjson.dumps(MESSAGE)),
                           ("gzip", gzip.compress(FORM)[:40] + b"\x00" * 64 + gzip.compress(FORM)[40:]))]


@pytest.mark.parametrize("path,body,headers", UNDECODABLE)
async def test_a_body_that_does_not_decode_is_a_400(served, http, caplog, path, body, headers):
    """A body whose Content-Encoding does not decode was a 500 ("internal error"), aiohttp then
    logged the same failure again as an unhandled exception with its traceback, and closed a
    connection it had just answered as kept alive (the client's next request on it was lost).
    Now: a 400 in the route's shape, the connection closed with the answer, one info line."""
    caplog.set_level(logging.INFO)
    key = ADMIN if path == "/mtproxy/verify" else CLIENT
    async with http.post(served.url + path, data=body, headers={**headers, "Authorization": f"Bearer {key}"}) as resp:
        data = await resp.read()
        assert problem(path, resp.status, data) is None, data
        assert resp.status == 400, data
        assert resp.headers.get("Connection", "").lower() == "close"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
    await still_serves(http, served.url)


def _read_all(sock: socket.socket) -> bytes:
    """What comes until the proxy closes the connection, or until nothing came for 5 s."""
    sock.settimeout(5)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_form_reaches_the_runtime_whole(served, http, audio, path, encoding):
    """aiohttp decodes a gzip (or deflate) body as it reads it, and the form went on to the
    runtime decoded but with the client's Content-Length, which counts the encoded bytes: the
    runtime read a form cut short (113 of 246 bytes), and took the rest, left on its pooled
    connection, for the next request, whatever those bytes said. Now it is sent chunked."""
    encoded = gzip.compress(FORM) if encoding == "gzip" else zlib.compress(FORM)
    assert len(encoded) < len(FORM)
    async with http.post(served.url + path, data=encoded, headers={
            "Content-Type": FORM_TYPE, "Content-Encoding": encoding, "Authorization": f"Bearer {CLIENT}"}) as resp:
        assert resp.status == 200, await resp.text()
    assert [(p, hashlib.sha256(b).hexdigest()) for p, b in audio.forms] == [(path, hashlib.sha256(FORM).hexdigest())]


@pytest.mark.parametrize("path", ["/mtproxy/events", "/mtproxy/requests?format=jsonl", "/mtproxy/requests?format=csv"])
async def test_head_on_the_page_streams_sends_no_body(served, path):
    """HEAD /mtproxy/events wrote the ``hello`` event, and went on as a viewer for as long as
    the connection lasted; HEAD on an export wrote the export: a kept-alive client read those
    bytes as the status line of its next answer. Now: the headers, then the next answer."""
    async with aiohttp.ClientSession() as http:
        await still_serves(http, served.url)  # something to export
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        auth = b"Authorization: Bearer " + CLIENT.encode() + b"\r\n"
        sock.sendall(b"HEAD " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.to_thread(_read_all, sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b'{"status": "ok"}'), rest[:300]
    assert not served.app[UI].viewers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("name", ["%00", "a%00b", "app.js%00.png", "n" * 300])
async def test_a_static_name_with_a_nul_is_a_404(served, http, method, name):
    """The page's files: a NUL in the name made Path.resolve raise (500, logged as internal)."""
    async with http.request(method, f"{served.url}/ui/static/{name}") as resp:
        assert resp.status == 404, await resp.text()
        assert problem("/ui/static", resp.status, await resp.read()) is None


async def test_two_verify_runs_started_together_run_one(served):
    """``POST /mtproxy/verify`` checked that no run was under way before it read the body: two
    requests whose bodies came in together both passed, and two runs went on at once, each
    taking the other's measurements. Now the second is a 409."""
    body = orjson.dumps({"model": "m1", "seconds": 5, "rounds": 1})
    socks = [socket.create_connection(("127.0.0.1", served.port), timeout=20) for _ in range(2)]
    try:
        for sock in socks:  # both heads in, both handlers waiting for their bodies
            sock.sendall(b"POST /mtproxy/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                         + ADMIN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body[:5])
        await asyncio.sleep(0.3)
        for sock in socks:
            sock.sendall(body[5:])
        answers = await asyncio.gather(*(asyncio.to_thread(_read_all, sock) for sock in socks))
    finally:
        for sock in socks:
            sock.close()
    statuses = sorted(int(a.split(b" ", 2)[1]) for a in answers)
    assert statuses == [202, 409], answers


async def test_a_client_that_stops_reading_a_stream_is_not_blamed_on_the_backend(runtime_factory, proxy_factory,
                                                                                  http, caplog):
    """A stream whose client stops reading: the relay waits in its write, and the idle limit
    (meant for the backend's silence) cut it with a warning that the backend was silent mid-stream
    and a stream error logged against it. Now it is the client's: cut as a client gone away."""
    caplog.set_level(logging.INFO)
    rt = await runtime_factory("big", models=["m1"], tokens=["x" * 4000] * 4000)
    proxy = await proxy_factory(make_config([{"name": "big", "runtime": "vllm", "url": rt.url}],
                                            timeouts={"idle": 2}))
    body = orjson.dumps({"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", proxy.port))
        stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await until(lambda: "client went away mid-stream" in caplog.text or "silent" in caplog.text, 60)
        async with http.get(proxy.url + "/mtproxy/requests?format=json") as resp:
            (row,) = await resp.json()
    assert row["status"] == "client_closed"
    assert "silent" not in caplog.text, [r.getMessage() for r in caplog.records if "silent" in r.getMessage()]
    assert not [r for r in caplog.records if r.name == "mtproxy.proxy" and r.levelno >= logging.WARNING]
    assert proxy.app[POOL].backends[0].failures == 0
