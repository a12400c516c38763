"""Managed backends: mtproxy starts, waits for, restarts, idles out and stops child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from bench import fake_runtime
from mtproxy.config import ConfigError, load_config_text
from mtproxy.state import POOL

from .conftest import make_config

# the fake runtime as a process of its own (stops on SIGTERM)
FAKE = str(Path(fake_runtime.__file__).resolve())
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def managed(port: int, **extra) -> dict:
    return {"name": "child", "runtime": "vllm", "url": f"http://127.0.0.1:{port}", "models": ["m1"],
            "launch": [sys.executable, FAKE, "--port", str(port), "--models", "m1", "--version", "0.11.0"],
            "ready_timeout": 30, **extra}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(predicate, seconds: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_started_on_first_request_restarted_when_it_dies_stopped_on_exit(proxy_factory, http):
    port = free_port()
    # probes far apart: what is known right after the start comes from the start itself
    proxy = await proxy_factory(make_config([managed(port)], health={"interval": 3600, "timeout": 1}))
    backend = proxy.app[POOL].backends[0]
    assert backend.process.pid is None and backend.up  # nothing runs until a request needs it
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        assert "starts on the first request" in (await resp.json())["backends"][0]["detail"]
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == fake_runtime.words(16)
    pid = backend.process.pid
    assert pid is not None and alive(pid)
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        assert (await resp.json())["backends"][0]["version"] == "0.11.0"  # read when it became ready

    os.kill(pid, signal.SIGKILL)  # the runtime crashes
    await until(lambda: backend.process.pid not in (None, pid) and backend.process.running)
    assert backend.member.restarts == 1
    async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
        assert resp.status == 200
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")

    second = backend.process.pid
    await proxy.runner.cleanup()  # mtproxy exits: its children go with it
    assert not alive(second)


async def test_idle_stop(proxy_factory, http):
    port = free_port()
    proxy = await proxy_factory(make_config([managed(port, idle_stop=0.4)]))
    backend = proxy.app[POOL].backends[0]
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
    pid = backend.process.pid
    await until(lambda: not alive(pid))
    assert not backend.process.running
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:  # and back on demand
        assert resp.status == 200
    assert backend.process.pid not in (None, pid)


async def test_startup_mode_discovers_models(proxy_factory, http):
    port = free_port()
    cfg = managed(port, start="startup")
    del cfg["models"]  # discovered once it runs
    proxy = await proxy_factory(make_config([cfg], health={"interval": 0.1, "timeout": 1}))
    pool = proxy.app[POOL]
    await until(lambda: pool.backends[0].process.running and "m1" in pool.by_model)
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200


async def test_a_launch_that_fails_is_a_clear_error(proxy_factory, http):
    cfg = {"name": "broken", "runtime": "vllm", "url": f"http://127.0.0.1:{free_port()}", "models": ["m1"],
           "launch": [sys.executable, "-c", "import sys; print('model file not found'); sys.exit(3)"]}
    proxy = await proxy_factory(make_config([cfg]))
    async with http.post(proxy.url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 503  # the start failed: the runtime's own words
        message = (await resp.json())["error"]["message"]
    assert "exited with status 3 while starting" in message and "model file not found" in message
    cfg2 = {**cfg, "name": "missing", "launch": ["/nonexistent/llama-server"]}
    proxy2 = await proxy_factory(make_config([cfg2]))
    async with http.post(proxy2.url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 503
        assert "cannot launch /nonexistent/llama-server" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("extra, message", [
    ("  launch: llama-server -m x.gguf\n", "needs `models`"),
    ("  idle_stop: 5\n", "apply to a backend with `launch`"),
    ("  launch: ''\n", "must name a program"),
])
def test_config_rules(extra, message):
    text = "backends:\n- name: a\n  runtime: llamacpp\n  url: http://127.0.0.1:1\n" + extra
    with pytest.raises(ConfigError, match=message):
        load_config_text(text)


def test_launch_string_is_split_like_a_shell():
    cfg = load_config_text("backends:\n- name: a\n  runtime: llamacpp\n  url: http://127.0.0.1:1\n"
                           "  models: [m]\n  launch: llama-server -m 'my model.gguf' --port 1\n")
    assert cfg.backends[0].launch == ["llama-server", "-m", "my model.gguf", "--port", "1"]
