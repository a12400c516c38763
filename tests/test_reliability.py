"""Faults and overload: reload, outlier ejection, retry budget, disconnects (caps and queueing: test_limits.py)."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from pathlib import Path

import pytest

import mtproxy
from mtproxy.state import POOL, PROXY

from .conftest import make_config, until

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"Authorization": "Bearer admin-key"}


def yaml_for(backends: list[tuple[str, str, str]], extra: str = "") -> str:
    lines = ["server: {admin_keys: [admin-key]}", "health: {interval: 0.2, timeout: 1}", "backends:"]
    lines += [f"  - {{name: {n}, runtime: vllm, url: '{u}', models: [{m}]}}" for n, u, m in backends]
    return "\n".join(lines) + "\n" + extra


async def test_reload_applies_a_valid_config_without_dropping_in_flight(runtime_factory, tmp_path, http):
    gate = asyncio.Event()
    a = await runtime_factory("a", models=["m1"], gate=gate)
    b = await runtime_factory("b", models=["m2"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml_for([("a", a.url, "m1")]))
    from mtproxy.app import create_app
    from mtproxy.config import load_config
    from mtproxy.server import start

    app = create_app(load_config(path), config_path=str(path))
    runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
    url = f"http://127.0.0.1:{port}"
    try:
        stream = await http.post(url + "/v1/chat/completions", json={**CHAT, "stream": True})
        await stream.content.readuntil(b"\n\n")  # in flight on backend a

        path.write_text(yaml_for([("b", b.url, "m2")]))  # a leaves, b arrives
        async with http.post(url + "/mtproxy/reload") as resp:
            assert resp.status == 401  # admin key needed
        async with http.post(url + "/mtproxy/reload", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(url + "/v1/chat/completions", json={**CHAT, "model": "m2"}) as resp:
            assert resp.status == 200 and resp.headers["x-mtproxy-backend"] == "b"
        async with http.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 404  # m1 left with a

        gate.set()  # the stream that started before the reload finishes normally
        assert (await stream.read()).endswith(b"data: [DONE]\n\n")

        path.write_text("backends: [{name: x, runtime: nope, url: 'http://127.0.0.1:1'}]\n")
        async with http.post(url + "/mtproxy/reload", headers=ADMIN) as resp:
            assert resp.status == 400
            message = (await resp.json())["error"]["message"]
        assert "backends[0].runtime" in message and "the old one stays" in message
        async with http.post(url + "/v1/chat/completions", json={**CHAT, "model": "m2"}) as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_requests_queued_before_a_reload_are_served_after_it(runtime_factory, tmp_path, http):
    from mtproxy.app import create_app
    from mtproxy.config import load_config
    from mtproxy.server import start

    gate = asyncio.Event()
    a = await runtime_factory("a", models=["m1"], gate=gate)
    b = await runtime_factory("b", models=["m1"])
    head = "server: {admin_keys: [admin-key]}\nhealth: {interval: 0.2, timeout: 1}\n"
    a_line = f"  - {{name: a, runtime: vllm, url: '{a.url}', max_concurrent: 1}}\n"
    path = tmp_path / "config.yaml"
    path.write_text(head + "limits: {max_concurrent: 2, queue_timeout: 5}\nbackends:\n" + a_line)
    app = create_app(load_config(path), config_path=str(path))
    runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
    url, px = f"http://127.0.0.1:{port}", app[PROXY]
    try:
        held = await http.post(url + "/v1/chat/completions", json={**CHAT, "stream": True})
        await held.content.readuntil(b"\n\n")  # a is full (max_concurrent 1)
        for_backend = asyncio.ensure_future(http.post(url + "/v1/chat/completions", json=CHAT))
        await until(lambda: len(px.backend_waiters) == 1)  # holds the second of two slots in total
        for_slot = asyncio.ensure_future(http.post(url + "/v1/chat/completions", json=CHAT))
        await until(lambda: len(px.gate.waiters) == 1)

        # b joins for m1 and the total cap goes up: both queued requests are served at once
        path.write_text(head + "limits: {max_concurrent: 3, queue_timeout: 5}\nbackends:\n" + a_line
                        + f"  - {{name: b, runtime: vllm, url: '{b.url}'}}\n")
        async with http.post(url + "/mtproxy/reload", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
        for queued in (for_backend, for_slot):
            async with await queued as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["x-mtproxy-backend"] == "b"
        assert not gate.is_set()  # a still holds its stream: they did not get its slot
        gate.set()
        assert (await held.read()).endswith(b"data: [DONE]\n\n")
    finally:
        await runner.cleanup()


async def test_backends_a_reload_starts_are_stopped_with_the_proxy(runtime_factory, tmp_path, http):
    import socket

    from mtproxy.app import create_app
    from mtproxy.config import load_config
    from mtproxy.server import start

    a = await runtime_factory("a", models=["m1"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml_for([("a", a.url, "m1")]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    app = create_app(load_config(path), config_path=str(path))
    runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
    try:
        # a backend started at once, which never gets ready: its start is under way at shutdown
        path.write_text(yaml_for([("a", a.url, "m1")]) + (
            f"  - {{name: child, runtime: vllm, url: 'http://127.0.0.1:{free}', models: [m2], start: startup,\n"
            f"     ready_timeout: 60, launch: ['{sys.executable}', '-c', 'import time; time.sleep(60)']}}\n"))
        async with http.post(f"http://127.0.0.1:{port}/mtproxy/reload", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
        await until(lambda: app[POOL].backends[1].process.pid is not None)
    finally:
        await runner.cleanup()
    package = str(Path(mtproxy.__file__).parent)
    left = [t for t in asyncio.all_tasks() if not t.done() and t.get_coro().cr_code.co_filename.startswith(package)]
    assert left == []  # the start under way was cancelled, not left running


async def test_sighup_reloads_the_config_file(runtime_factory, tmp_path, http):
    a = await runtime_factory("a", models=["m1"])
    b = await runtime_factory("b", models=["m2"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml_for([("a", a.url, "m1")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "serve", "--config", str(path), "--port", "0", cwd=ROOT,
        stderr=asyncio.subprocess.PIPE)
    try:
        import re
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line
            if m := re.search(r"listening on (http://\S+)", line):
                url = m.group(1)
                break
        path.write_text(yaml_for([("a", a.url, "m1"), ("b", b.url, "m2")]))
        proc.send_signal(signal.SIGHUP)
        ids: list[str] = []
        for _ in range(100):
            async with http.get(url + "/v1/models") as resp:
                ids = [m["id"] for m in (await resp.json())["data"]]
            if "m2" in ids:
                break
            await asyncio.sleep(0.05)
        assert ids == ["m1", "m2"]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_outlier_ejection_and_return(runtime_factory, proxy_factory, http):
    bad = await runtime_factory("bad", models=["m1"], status=500)
    good = await runtime_factory("good", models=["m1"])
    proxy = await proxy_factory(make_config(
        [{"name": "bad", "runtime": "vllm", "url": bad.url}, {"name": "good", "runtime": "vllm", "url": good.url}],
        outlier={"consecutive_failures": 3, "ejection_seconds": 0.5}, health={"interval": 0.1, "timeout": 1}))
    pool = proxy.app[POOL]
    statuses = []
    for _ in range(10):
        async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
            statuses.append((resp.headers.get("x-mtproxy-backend"), resp.status))
    assert statuses == [("good", 200)] * 10  # each 500 was retried on the good backend...
    assert len(bad.requests) == 3  # ...until three in a row ejected the bad one
    assert not pool.backends[0].up and "ejected for 0.5 s" in pool.backends[0].detail
    bad.b.status = 200  # it recovers; after the ejection the health check brings it back
    await until(lambda: pool.backends[0].up)


async def test_a_reset_is_one_failure_toward_ejection_not_a_backend_down(runtime_factory, proxy_factory, http):
    flaky = await runtime_factory("flaky", models=["m1"], reset=True)
    good = await runtime_factory("good", models=["m1"])
    proxy = await proxy_factory(make_config(
        [{"name": "flaky", "runtime": "vllm", "url": flaky.url}, {"name": "good", "runtime": "vllm", "url": good.url}],
        outlier={"consecutive_failures": 3, "ejection_seconds": 60}, health={"interval": 3600}))
    backend = proxy.app[POOL].backends[0]
    for stream in (False, True):  # ties rotate: the second lands on flaky first
        async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": stream}) as resp:
            assert resp.status == 200 and resp.headers["x-mtproxy-backend"] == "good"
            await resp.read()
    assert flaky.requests  # it was reset, and the request retried on good
    assert backend.up and backend.failures == 1  # one reset does not take the backend down
    for _ in range(6):
        async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200 and resp.headers["x-mtproxy-backend"] == "good"
    assert not backend.up and "ejected for 60 s after 3 failures" in backend.detail


async def test_streams_cut_mid_way_count_toward_ejection(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m1"], die_after=1)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            outlier={"consecutive_failures": 2, "ejection_seconds": 60}))
    for _ in range(2):
        async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200
            assert b"event: error" in await resp.read()
    backend = proxy.app[POOL].backends[0]
    assert not backend.up and "ejected" in backend.detail


async def test_retry_budget_can_forbid_retries(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", models=["m1"])
    b = await runtime_factory("b", models=["m1"])
    proxy = await proxy_factory(make_config(
        [{"name": "a", "runtime": "vllm", "url": a.url}, {"name": "b", "runtime": "vllm", "url": b.url}],
        retries={"min_concurrent": 0, "budget_ratio": 0}, health={"interval": 3600}))
    await a.stop()
    statuses = set()
    for _ in range(4):
        async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
            statuses.add(resp.status)
    assert 502 in statuses  # the refused attempt was not retried


@pytest.mark.parametrize("phase", ["before routing", "waiting for the first token", "mid-stream"])
async def test_1000_disconnects_leak_nothing(runtime_factory, proxy_factory, phase):
    behaviour = {"mid-stream": {"gate": asyncio.Event()},
                 "waiting for the first token": {"first_token_delay": 30}}.get(phase, {})
    rt = await runtime_factory("a", models=["m1"], **behaviour)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    pool, px = proxy.app[POOL], proxy.app[PROXY]
    body = b'{"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    gc.collect()
    tasks_before = len(asyncio.all_tasks())

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        if phase == "before routing":
            writer.write(head + body[:20])  # the body never completes
        else:
            writer.write(head + body)
            if phase == "mid-stream":
                await reader.readuntil(b"data: ")
            else:
                await until(lambda: pool.backends[0].outstanding > 0, 5)
        writer.close()

    n = 1000 if phase != "waiting for the first token" else 300
    for _i in range(0, n, 50):
        await asyncio.gather(*(one() for _ in range(50)))
    await until(lambda: pool.backends[0].outstanding == 0 and px.in_flight == 0, 20)
    connector = px.session.connector
    await until(lambda: sum(len(v) for v in connector._conns.values()) + len(connector._acquired) <= 1, 20)
    await until(lambda: len(asyncio.all_tasks()) <= tasks_before + 1, 20)
    if phase == "mid-stream":
        assert len(rt.requests) == n


async def test_runtime_restart_with_another_model_list_is_picked_up(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["old-model"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            health={"interval": 0.1, "timeout": 1}))
    async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "old-model"}) as resp:
        assert resp.status == 200
    rt.b.models = ["new-model"]  # the runtime restarts serving another model
    pool = proxy.app[POOL]
    await until(lambda: "new-model" in pool.by_model)
    async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "new-model"}) as resp:
        assert resp.status == 200
    async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": "old-model"}) as resp:
        assert resp.status == 404
