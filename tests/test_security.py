"""Keys, admin endpoints, /metrics auth, CORS, and secrets that never leak."""

from __future__ import annotations

import asyncio
import logging

import orjson

from .conftest import make_config

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_SECRET = "sk-upstream-do-not-leak-123"


async def test_admin_endpoints_are_off_without_an_admin_key(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    async with http.post(proxy.url + "/mtproxy/reload") as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "admin_disabled"


async def test_client_keys_do_not_open_admin_endpoints(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"api_keys": ["client"], "admin_keys": ["admin"]}))
    async with http.post(proxy.url + "/mtproxy/reload", headers={"Authorization": "Bearer client"}) as resp:
        assert resp.status == 401
    async with http.post(proxy.url + "/mtproxy/reload", headers={"Authorization": "Bearer admin"}) as resp:
        assert resp.status == 400  # authorised; started without a config file, so nothing to reload
        assert "without a config file" in (await resp.json())["error"]["message"]
    async with http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200  # open by default


async def test_metrics_can_require_a_key(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"api_keys": ["client"], "metrics_auth": True}))
    async with http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 401
    async with http.get(proxy.url + "/metrics", headers={"Authorization": "Bearer client"}) as resp:
        assert resp.status == 200
    async with http.get(proxy.url + "/health") as resp:
        assert resp.status == 200


async def test_keys_from_a_file(runtime_factory, proxy_factory, http, tmp_path):
    from mtproxy.config import load_config_text

    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nkey-one\n\n  key-two  \n")
    rt = await runtime_factory("a")
    cfg = load_config_text(f"server: {{api_keys: [inline], api_keys_file: '{keys}'}}\n"
                           f"backends: [{{name: a, runtime: vllm, url: '{rt.url}'}}]\n")
    proxy = await proxy_factory(cfg)
    for key, status in (("key-one", 200), ("key-two", 200), ("inline", 200), ("# team keys", 401), ("nope", 401)):
        async with http.post(proxy.url + "/v1/chat/completions", json=CHAT,
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == status, key


async def _send_raw(port: int, path: str, key_header: bytes, body: bytes) -> tuple[int, bytes]:
    """A POST whose key header is sent as these very bytes (clients cannot be made to)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + key_header +
                 b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    head, _, data = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), data


async def test_key_headers_are_compared_as_the_bytes_sent(runtime_factory, proxy_factory):
    """A key's UTF-8 bytes match it; other bytes, UTF-8 or not, are a 401 in the client's shape
    (not a 500 from decoding them)."""
    rt = await runtime_factory("a")
    key = "clé-ключ"
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"api_keys": [key]}))
    bodies = {"/v1/chat/completions": orjson.dumps(CHAT), "/api/chat": orjson.dumps({**CHAT, "stream": False})}
    for path, body in bodies.items():
        for header, status in ((b"Authorization: Bearer " + key.encode(), 200), (b"x-api-key: " + key.encode(), 200),
                               (b"Authorization: Bearer " + key.encode("latin-1", "replace"), 401),
                               (b"Authorization: Bearer \xff\xfe\xfd", 401), (b"x-api-key: cl\xe9-\xed\xa0\x80", 401)):
            got, data = await _send_raw(proxy.port, path, header, body)
            assert got == status, (path, header, data)
            if status == 401:
                error = orjson.loads(data)["error"]
                assert isinstance(error, str) if path.startswith("/api/") else error["type"] == "authentication_error"


async def test_upstream_keys_never_leak(runtime_factory, proxy_factory, http, caplog):
    caplog.set_level(logging.DEBUG)
    rt = await runtime_factory("a", status=401,
                               error_body=b'{"error": {"message": "bad key", "type": "auth"}}')
    down = {"name": "down", "runtime": "vllm", "url": "http://127.0.0.1:9", "models": ["m2"],
            "api_key": UPSTREAM_SECRET}
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url,
                                              "api_key": UPSTREAM_SECRET}, down]))
    texts = []
    for body in (CHAT, {**CHAT, "stream": True}, {**CHAT, "model": "m2"}):
        async with http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            texts.append(await resp.text())
            texts.append(str(resp.headers))
    for path in ("/mtproxy/backends", "/metrics", "/v1/models", "/ready", "/openapi.json"):
        async with http.get(proxy.url + path) as resp:
            texts.append(await resp.text())
    texts += [r.getMessage() for r in caplog.records]
    assert rt.headers[0]["Authorization"] == f"Bearer {UPSTREAM_SECRET}"  # it is used upstream...
    assert not any(UPSTREAM_SECRET in t for t in texts)  # ...and shown nowhere


async def test_cookies_a_backend_sets_are_not_sent_for_other_requests(runtime_factory, proxy_factory, http):
    # one client session upstream serves every client: a cookie jar in it would hand one
    # client's backend session to the next client
    rt = await runtime_factory("a", response_headers={"Set-Cookie": "session=client-one; Path=/"})
    # by name: aiohttp's default jar takes no cookies from an IP address
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": f"http://localhost:{rt.port}"}]))
    for _ in range(2):
        async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
    assert "Cookie" not in rt.headers[1]


async def test_cors_is_off_unless_configured(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    off = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    on = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                         server={"cors_origins": ["https://app.example"]}))
    origin = {"Origin": "https://app.example"}
    async with http.post(off.url + "/v1/chat/completions", json=CHAT, headers=origin) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    async with http.options(on.url + "/v1/chat/completions", headers=preflight) as resp:
        assert resp.status == 204 and "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with http.post(on.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=origin) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"  # streams too
        assert "x-mtproxy-backend" in resp.headers["Access-Control-Expose-Headers"]
        await resp.read()
    async with http.post(on.url + "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_binds_loopback_by_default():
    from mtproxy.config import load_config_text

    assert load_config_text("backends: [{name: a, runtime: vllm, url: 'http://127.0.0.1:1'}]").server.host == "127.0.0.1"
