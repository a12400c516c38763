"""The page's server side (mtproxy/ui/): exports, the SQLite history across restarts and its
retention, the login cookie and CSRF, the event stream and a viewer that stops reading, verify."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket

import aiohttp
import pytest

from mtproxy.app import create_app
from mtproxy.server import start
from mtproxy.ui import UI
from tests.conftest import make_config, until

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(http: aiohttp.ClientSession, url: str, model: str = "m1", stream: bool = True, **headers: str) -> int:
    async with http.post(url + "/v1/chat/completions", json={"model": model, "stream": stream, **CHAT},
                         headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_exports_in_json_lines_and_csv_with_filters(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", models=["m1"])
    b = await runtime_factory("b", models=["=cmd()"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": a.url},
                                             {"name": "b", "runtime": "vllm", "url": b.url}]))
    for _ in range(3):
        assert await chat(http, proxy.url) == 200
    assert await chat(http, proxy.url, "=cmd()", stream=False) == 200
    assert await chat(http, proxy.url, "nope") == 404
    async with http.get(proxy.url + "/mtproxy/requests?format=jsonl&model=m1") as resp:
        assert resp.status == 200 and resp.content_type == "application/x-ndjson"
        rows = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert len(rows) == 3 and {r["backend"] for r in rows} == {"a"}
    assert all(r["client"] == "openai" and r["endpoint"] == "chat" and r["status"] == 200 for r in rows)
    assert all(r["ttft_s"] > 0 and r["tokens_out"] == 4 and r["retries"] == 0 for r in rows)
    async with http.get(proxy.url + "/mtproxy/requests?format=csv") as resp:
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        table = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["status"] for r in table] == ["200", "200", "200", "200", "404"]
    assert table[3]["model"] == "'=cmd()"  # no formula for a spreadsheet to run
    async with http.get(proxy.url + "/mtproxy/requests?format=json&status=404") as resp:
        (unrouted,) = await resp.json()
    assert unrouted["backend"] == "none"
    async with http.get(proxy.url + "/mtproxy/requests?format=xml") as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "format"


async def test_history_survives_a_restart_and_keeps_its_limit(runtime_factory, http, tmp_path):
    rt = await runtime_factory("a", models=["m1"])
    path = tmp_path / "history.sqlite"
    config = make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                         ui={"ring": 3, "history": str(path), "history_max_rows": 5})

    async def run(requests: int) -> list[dict]:
        app = create_app(config)
        runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=1)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(requests):
                assert await chat(http, url) == 200
            async with http.get(url + "/mtproxy/requests?format=json") as resp:
                return await resp.json()
        finally:
            await runner.cleanup()

    first = await run(4)
    assert len(first) == 4  # the history has more than the ring of 3
    second = await run(0)
    assert [r["time"] for r in second] == [r["time"] for r in first]  # read back after the restart
    third = await run(3)
    assert len(third) == 5  # retention: the newest 5 rows
    assert third[:2] == first[2:]


async def test_login_cookie_and_csrf_guard_the_page_data_and_actions(runtime_factory, proxy_factory):
    rt = await runtime_factory("a", models=["m1"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"admin_keys": ["adm-key"], "api_keys": ["client-key"]}))
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(proxy.url + "/ui") as resp:  # the shell is open; it holds no data
            assert resp.status == 200
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self';" in csp and "unsafe" not in csp
        async with s.get(proxy.url + "/ui/static/../views.py") as resp:
            assert resp.status == 404
        async with s.get(proxy.url + "/mtproxy/events") as resp:
            assert resp.status == 401
        async with s.post(proxy.url + "/ui/login", json={"key": "wrong"}) as resp:
            assert resp.status == 401
        async with s.post(proxy.url + "/ui/login", json={"key": "adm-key"},
                          headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403
        async with s.post(proxy.url + "/ui/login", json={"key": "client-key"}) as resp:
            assert resp.status == 200 and not (await resp.json())["admin"]
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "client-key" not in cookie
        async with s.get(proxy.url + "/mtproxy/requests?format=json") as resp:
            assert resp.status == 200
        async with s.get(proxy.url + "/ui/session") as resp:
            csrf = (await resp.json())["csrf"]
        async with s.post(proxy.url + "/mtproxy/reload", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_required"
        # the playground's request: a client session, with its CSRF token
        async with s.post(proxy.url + "/v1/chat/completions", json={"model": "m1", **CHAT}) as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "csrf_failed"
        async with s.post(proxy.url + "/v1/chat/completions", json={"model": "m1", **CHAT},
                          headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 200
        async with s.post(proxy.url + "/ui/login", json={"key": "adm-key"}) as resp:
            admin_csrf = (await resp.json())["csrf"]
        async with s.post(proxy.url + "/mtproxy/reload") as resp:  # no CSRF token: refused
            assert resp.status == 403
        async with s.post(proxy.url + "/mtproxy/reload", headers={"X-CSRF-Token": admin_csrf}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "config_rejected"  # (no file)
        async with s.post(proxy.url + "/ui/logout") as resp:
            assert resp.status == 200
        async with s.get(proxy.url + "/mtproxy/events") as resp:
            assert resp.status == 401


async def _sse_events(resp: aiohttp.ClientResponse, wanted: str) -> dict:
    event = None
    async for line in resp.content:
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            event = text[7:]
        elif text.startswith("data: ") and event == wanted:
            return json.loads(text[6:])
    raise AssertionError(f"stream ended before a {wanted} event")


async def test_event_stream_sends_requests_and_a_viewer_that_stops_reading_is_dropped(
        runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m1"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    hub = proxy.app[UI]
    async with http.get(proxy.url + "/mtproxy/events") as live:
        hello = await _sse_events(live, "hello")
        assert hello["overview"]["backends"][0]["name"] == "a" and hello["requests"] == []
        assert await chat(http, proxy.url) == 200
        (row,) = await _sse_events(live, "requests")
        assert row["model"] == "m1" and row["status"] == 200
    await until(lambda: not hub.viewers)
    hub.max_backlog = 32 * 1024
    # a viewer that reads nothing: its socket fills, then its backlog, and it is dropped
    with socket.create_connection(("127.0.0.1", proxy.port)) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /mtproxy/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: len(hub.viewers) == 1)
        statuses = []
        while hub.dropped == 0:
            statuses += await asyncio.gather(*(chat(http, proxy.url, stream=bool(i % 2)) for i in range(20)))
            assert len(statuses) < 20_000, "the stalled viewer was never dropped"
        assert set(statuses) == {200}  # the relay went on all along
        await until(lambda: not hub.viewers)


async def test_verify_runs_from_the_admin_endpoint_with_progress(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m1"], token_delay=0.002)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"admin_keys": ["adm-key"]}))
    admin = {"Authorization": "Bearer adm-key"}
    async with http.post(proxy.url + "/mtproxy/verify", json={"model": "m1"}) as resp:
        assert resp.status == 401
    async with http.post(proxy.url + "/mtproxy/verify", json={"model": "m1", "seconds": "x"}, headers=admin) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "seconds"
    async with http.get(proxy.url + "/mtproxy/events", headers=admin) as live:
        await _sse_events(live, "hello")
        async with http.post(proxy.url + "/mtproxy/verify", json={"model": "m1", "seconds": 0.3, "rounds": 2},
                             headers=admin) as resp:
            assert resp.status == 202 and (await resp.json())["state"] == "running"
        seen = []
        while not seen or seen[-1]["state"] == "running":
            seen.append(await _sse_events(live, "verify"))
    final = seen[-1]
    assert [p["round"] for p in final["progress"]] == [1, 2]
    assert final["state"] == "not_verified" and "no sign of MTP" in final["outcome"]["message"]
    async with http.get(proxy.url + "/mtproxy/verify", headers=admin) as resp:
        assert (await resp.json())["state"] == "not_verified"


@pytest.mark.parametrize("enabled", [False])
async def test_the_page_can_be_turned_off(runtime_factory, proxy_factory, http, enabled):
    rt = await runtime_factory("a", models=["m1"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}], ui={"enabled": enabled}))
    assert await chat(http, proxy.url) == 200
    async with http.get(proxy.url + "/ui") as resp:
        assert resp.status == 404
