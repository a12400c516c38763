"""The page's server side (mtproxy/ui/): exports, the SQLite history across restarts and its
retention, the login cookie and CSRF, the event stream and a viewer that stops reading, verify."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import socket
import sqlite3

import aiohttp
import pytest
from aiohttp import web

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


# --- reload: the `ui:` section ----------------------------------------------------------------

ADMIN = {"Authorization": "Bearer admin-key"}


class Reloadable:
    """A proxy started from a config file for one runtime; ``reload(ui)`` writes a new `ui:`
    section to the file and posts /mtproxy/reload: (status, message)."""

    def __init__(self, path, backend: str, http: aiohttp.ClientSession) -> None:
        self.path, self.backend, self.http = path, backend, http
        self.runner = None
        self.url = ""

    def write(self, ui: dict) -> None:
        self.path.write_text(json.dumps({
            "server": {"admin_keys": ["admin-key"]}, "health": {"interval": 0.2, "timeout": 1},
            "backends": [{"name": "a", "runtime": "vllm", "url": self.backend, "models": ["m1"]}], "ui": ui}))

    async def start(self, ui: dict) -> Reloadable:
        from mtproxy.config import load_config

        self.write(ui)
        self.app = create_app(load_config(self.path), config_path=str(self.path))
        self.runner, port = await start(self.app, "127.0.0.1", 0, shutdown_grace=2)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def reload(self, ui: dict) -> tuple[int, str]:
        self.write(ui)
        async with self.http.post(self.url + "/mtproxy/reload", headers=ADMIN) as resp:
            body = await resp.json()
            return resp.status, body.get("message") or body["error"]["message"]

    async def chats(self, n: int) -> None:
        assert await asyncio.gather(*(chat(self.http, self.url) for _ in range(n))) == [200] * n

    async def exported(self) -> list[float]:
        """The times of the exported records (one request's time is its identity here)."""
        async with self.http.get(self.url + "/mtproxy/requests?format=json", headers=ADMIN) as resp:
            assert resp.status == 200
            return [r["time"] for r in await resp.json()]


@pytest.fixture
async def reloadable(runtime_factory, http, tmp_path):
    rt = await runtime_factory("a", models=["m1"])
    proxy = Reloadable(tmp_path / "config.json", rt.url, http)
    yield proxy
    if proxy.runner is not None:
        await proxy.runner.cleanup()


def rows_in(path) -> list[float]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        return [t for (t,) in db.execute("SELECT time FROM requests ORDER BY id")]


async def test_a_reload_resizes_the_ring_keeping_the_newest_and_viewers_miss_none(reloadable, http):
    proxy = await reloadable.start({"ring": 8})
    async with http.get(proxy.url + "/mtproxy/events", headers=ADMIN) as live:
        assert (await _sse_events(live, "hello"))["requests"] == []
        await proxy.chats(4)
        first = await proxy.exported()
        assert len(first) == 4
        await proxy.chats(3)  # (likely not all sent to the viewer yet when the ring shrinks)
        assert await proxy.reload({"ring": 2}) == (200, "config reloaded: 1 backends")
        shrunk = await proxy.exported()
        assert len(shrunk) == 2 and shrunk[0] > first[-1]  # the newest two, oldest first
        await proxy.chats(1)
        assert (await proxy.exported())[:1] == shrunk[1:]
        assert (await proxy.reload({"ring": 4}))[0] == 200
        kept = await proxy.exported()
        assert len(kept) == 2 and kept[0] == shrunk[1]
        await proxy.chats(3)
        grown = await proxy.exported()
        assert len(grown) == 4 and grown[:1] == kept[1:]

        async def watched(n: int) -> list[float]:
            seen: list[float] = []
            while len(seen) < n:
                seen += [r["time"] for r in await _sse_events(live, "requests")]
            return seen

        seen = await asyncio.wait_for(watched(11), 30)  # every record once, in order, across both resizes
        assert len(seen) == 11 and seen == sorted(set(seen))
        assert seen[:4] == first and seen[-4:] == grown


async def test_a_reload_switches_the_history_on_moves_it_and_switches_it_off(reloadable, tmp_path):
    one, two = tmp_path / "one.sqlite", tmp_path / "dir" / "two.sqlite"
    proxy = await reloadable.start({"ring": 100})
    await proxy.chats(2)
    assert await proxy.reload({"ring": 100, "history": str(one)}) == (
        200, f"config reloaded: 1 backends; ui.history now {one}")
    await proxy.chats(3)
    assert len(await proxy.exported()) == 3  # from the history: records from the switch on
    await proxy.chats(4)  # pending for `one` (written once a second) when it moves
    assert (await proxy.reload({"ring": 100, "history": str(two), "history_max_rows": 3}))[0] == 200
    await proxy.chats(2)
    assert len(await proxy.exported()) == 2  # from `two`
    await proxy.chats(2)  # pending for `two` when it is switched off
    assert await proxy.reload({"ring": 100}) == (200, "config reloaded: 1 backends; ui.history off")
    everything = await proxy.exported()  # the ring again
    assert len(everything) == 13
    assert rows_in(one) == everything[2:9]  # closed: every record of its time, once
    assert rows_in(two) == everything[10:]  # and its new limit of 3 rows applied
    await proxy.chats(1)
    assert rows_in(two) == everything[10:]  # nothing goes to a history after it is off


async def test_a_history_that_cannot_be_opened_rejects_the_reload(reloadable, tmp_path):
    history = tmp_path / "history.sqlite"
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "text.sqlite").write_text("this is not an SQLite database, it is a text file\n" * 10)
    proxy = await reloadable.start({"history": str(history)})
    await proxy.chats(2)
    for bad in (tmp_path / "a-file" / "history.sqlite", tmp_path / "text.sqlite"):
        status, message = await proxy.reload({"history": str(bad), "ring": 1})
        assert status == 400 and "ui.history" in message and str(bad) in message, message
        assert "the old one stays" in message
    await proxy.chats(1)
    exported = await proxy.exported()
    assert len(exported) == 3  # the old history records on
    await proxy.runner.cleanup()
    proxy.runner = None
    assert rows_in(history) == exported
    assert (tmp_path / "text.sqlite").read_text().startswith("this is not")  # left as it was


@pytest.mark.parametrize("start_enabled", [True, False])
async def test_a_reload_that_changes_ui_enabled_warns_and_applies_the_rest(reloadable, http, caplog,
                                                                           start_enabled):
    import logging

    caplog.set_level(logging.INFO, logger="mtproxy.reload")
    proxy = await reloadable.start({"enabled": start_enabled, "ring": 5})
    await proxy.chats(3)
    status, message = await proxy.reload({"enabled": not start_enabled, "ring": 1})
    assert status == 200 and message == "config reloaded: 1 backends; ui.enabled changes only on restart"
    (warning,) = [r for r in caplog.records if r.name == "mtproxy.reload" and r.levelno == logging.WARNING]
    assert "ui.enabled changes only on restart" in warning.getMessage()
    async with http.get(proxy.url + "/ui") as resp:
        assert resp.status == (200 if start_enabled else 404)  # the routes stay as they started
    if start_enabled:
        assert len(await proxy.exported()) == 1  # the ring's new size applied


def open_fds(path) -> int:
    """How many of this process's file descriptors are open on ``path`` (/proc/self/fd)."""
    import os

    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += os.path.realpath(f"/proc/self/fd/{fd}") == str(path)
    return found


async def test_reloads_one_after_another_the_last_read_wins(reloadable, http, tmp_path):
    """A reload waiting on its new history (here: a file another program holds locked) and a
    second reload posted meanwhile: the second reads the config after the first is applied and is
    applied after it, so what the file says last is what runs (the history off again, closed)."""
    import sqlite3

    locked = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")  # opening it waits for the lock (sqlite's 5 s busy timeout)
    proxy = await reloadable.start({"ring": 100})
    try:
        first = asyncio.create_task(proxy.reload({"ring": 100, "history": str(locked)}))
        await until(lambda: open_fds(locked) > 1)  # the proxy is opening it: waiting for the lock
        second = asyncio.create_task(proxy.reload({"ring": 3}))  # the history off again
        await asyncio.wait({second}, timeout=1.0)  # (before the fix it was applied at once)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert await first == (200, f"config reloaded: 1 backends; ui.history now {locked}")
    assert await second == (200, "config reloaded: 1 backends; ui.history off")
    await until(lambda: open_fds(locked) == 0)  # the history the first opened is closed again
    await proxy.chats(5)
    assert len(await proxy.exported()) == 3  # from the ring of 3: the second reload's config runs


async def test_a_write_that_fails_while_a_reload_switches_the_history_off(reloadable, tmp_path):
    """The history's write waits on a lock another program holds and fails (sqlite's 5 s busy
    timeout) while a reload switches the history off: the failure is logged, the page's
    background work goes on (a history switched on later gets its records)."""
    import sqlite3

    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    proxy = await reloadable.start({"ring": 100, "history": str(one)})
    holder = sqlite3.connect(one, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # no writer but this one
        await proxy.chats(2)
        await asyncio.sleep(1.5)  # the once-a-second write of those two has begun: it waits
        assert await proxy.reload({"ring": 100}) == (200, "config reloaded: 1 backends; ui.history off")
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert rows_in(one) == []  # that write failed
    assert (await proxy.reload({"ring": 100, "history": str(two)}))[0] == 200
    await proxy.chats(3)
    await until(lambda: len(rows_in(two)) == 3)  # written by the page's once-a-second work


async def test_a_runtimes_absurd_usage_costs_no_other_requests_history(runtime_factory, http, proxy_factory,
                                                                         tmp_path):
    """A runtime that reports 2**70 prompt tokens (past SQLite's 64-bit integers; JSON parsing makes
    it a float, not a count): its row is kept without the figure, and so are the rows written in
    the same batch."""
    a = await runtime_factory("a", models=["m1"])
    answer = (b'{"id":"x","object":"chat.completion","created":1,"model":"huge","choices":[{"index":0,'
              b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":%d,"completion_tokens":4,"total_tokens":%d}}' % (2**70, 2**70 + 4))

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "huge", "object": "model"}]})

    async def complete(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)
    app.router.add_post("/v1/chat/completions", complete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    huge_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        path = tmp_path / "history.sqlite"
        proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": a.url},
                                                 {"name": "b", "runtime": "vllm", "url": huge_url}],
                                                ui={"history": str(path)}))
        assert await chat(http, proxy.url, stream=False) == 200
        assert await chat(http, proxy.url, "huge", stream=False) == 200
        assert await chat(http, proxy.url, stream=False) == 200
        async with http.get(proxy.url + "/mtproxy/requests?format=json") as resp:  # flushes the history first
            assert resp.status == 200
            exported = await resp.json()
        assert [r["model"] for r in exported] == ["m1", "huge", "m1"], exported
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT model, tokens_in FROM requests ORDER BY id").fetchall()
        assert [m for m, _ in rows] == ["m1", "huge", "m1"], rows
        assert rows == [("m1", 5), ("huge", None), ("m1", 5)], rows
    finally:
        await runner.cleanup()
