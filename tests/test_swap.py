"""Groups of managed backends: swapping without losing a request (swap.py).

The members are the fake runtime run as processes of their own (bench/fake_runtime.py), so a
start, a drain and a stop are real: what runs at any moment is read from the process list
(/proc), not from the proxy's word.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

import aiohttp
import pytest

from bench import fake_runtime
from mtproxy.config import ConfigError, load_config_text
from mtproxy.state import POOL

from .conftest import make_config, until
from .promtext import scrape, value
from .test_launcher import alive, free_port

FAKE = str(Path(fake_runtime.__file__).resolve())


def member(name: str, port: int, *, rate: float = 0.0, tokens: int = 16, **extra) -> dict:
    argv = [sys.executable, FAKE, "--port", str(port), "--models", name, "--version", "0.11.0",
            "--tokens", str(tokens)]
    if rate:
        argv += ["--rate", str(rate)]
    return {"name": name, "runtime": "vllm", "url": f"http://127.0.0.1:{port}", "models": [name],
            "launch": argv, "ready_timeout": 30, **extra}


def running_ports(ports: set[int], program: str = FAKE) -> set[int]:
    """Which of ``ports`` a live process of ``program`` was started with (``--port N``), read from
    /proc (zombies excluded)."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z" or program.encode() not in argv or b"--port" not in argv:
            continue
        port = int(argv[argv.index(b"--port") + 1])
        if port in ports:
            found.add(port)
    return found


class Watch:
    """Samples the process list while a test runs: the most members alive at once."""

    def __init__(self, ports: set[int], program: str = FAKE) -> None:
        self.ports = ports
        self.program = program
        self.most = 0
        self.samples = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            alive_now = await asyncio.to_thread(running_ports, self.ports, self.program)
            self.most = max(self.most, len(alive_now))
            self.samples += 1
            await asyncio.sleep(0.01)

    def __enter__(self) -> Watch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()


def chat(model: str, stream: bool = False, max_tokens: int | None = None) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def stream_text(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, str, bool]:
    """(status, the text streamed, whether the stream ended with [DONE])."""
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return resp.status, await resp.text(), False
        raw = await resp.read()
    text = ""
    for line in raw.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", ()):  # an error event has none
                text += choice["delta"].get("content") or ""
    return 200, text, raw.endswith(b"data: [DONE]\n\n")


async def test_three_models_in_a_group_of_one_under_random_concurrent_load(proxy_factory, http):
    names = ["m-a", "m-b", "m-c"]
    ports = {name: free_port() for name in names}
    group = {"max_running": 1, "min_run": 0.5, "drain_timeout": 60, "queue_timeout": 120}
    proxy = await proxy_factory(make_config(
        [member(n, ports[n], rate=200.0, group="gpu") for n in names], groups={"gpu": group},
        health={"interval": 0.5, "timeout": 1}))
    rng = random.Random(21)
    results: list[tuple[str, int, str, bool]] = []

    async def client(i: int) -> None:
        for _ in range(4):
            model = rng.choice(names)
            status, text, done = await stream_text(http, proxy.url, chat(model, stream=True))
            results.append((model, status, text, done))

    with Watch(set(ports.values())) as watch:
        await asyncio.gather(*(client(i) for i in range(6)))
    assert len(results) == 24
    for model, status, text, done in results:  # every request served whole, none cut off mid-stream
        assert status == 200, (model, text)
        assert done and text == fake_runtime.words(16), (model, text)
    assert watch.samples > 20 and watch.most == 1  # never two alive at once, by the process list
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        status = await resp.json()
    swaps = status["groups"]["gpu"]["swaps"]
    # batching: each swap serves every request queued for its model, so there are fewer swaps
    # than requests that found their model stopped; at least one per model but the first
    used = {m for m, *_ in results}
    assert len(used) - 1 <= swaps < len(results)
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    assert value(samples, "mtproxy_group_swaps_total", group="gpu") == swaps
    starts = value(samples, "mtproxy_backend_starts_total")
    assert starts == swaps + 1  # the first start made no room
    assert value(samples, "mtproxy_backend_stops_total", reason="swap") == swaps
    assert value(samples, "mtproxy_backend_queue_wait_seconds_count") >= len(used)


async def test_a_victim_finishes_its_streams_before_it_is_stopped(proxy_factory, http):
    pa, pb = free_port(), free_port()
    proxy = await proxy_factory(make_config(
        [member("m-a", pa, rate=20.0, tokens=40, group="gpu"), member("m-b", pb, group="gpu")],
        groups={"gpu": {"max_running": 1, "min_run": 0}}))
    pool = proxy.app[POOL]
    a = next(b for b in pool.backends if b.name == "m-a")
    long_stream = asyncio.create_task(stream_text(http, proxy.url, chat("m-a", stream=True)))
    await until(lambda: a.member.admitted == 1, 30)
    pid_a = a.process.pid
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-b")) as resp:  # waits for the swap
        assert resp.status == 200
    status, text, done = await long_stream
    assert status == 200 and done and text == fake_runtime.words(40)  # whole: drained, not cut
    assert not alive(pid_a)
    assert a.member.state == "stopped"


async def test_a_start_that_fails_frees_the_slot_and_quotes_the_runtime(proxy_factory, http):
    pa = free_port()
    broken = {"name": "m-x", "runtime": "vllm", "url": f"http://127.0.0.1:{free_port()}", "models": ["m-x"],
              "launch": [sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"],
              "group": "gpu"}
    hangs = {"name": "m-h", "runtime": "vllm", "url": f"http://127.0.0.1:{free_port()}", "models": ["m-h"],
             "launch": [sys.executable, "-c", "import time; print('loading'); time.sleep(60)"],
             "ready_timeout": 1, "group": "gpu"}
    proxy = await proxy_factory(make_config([member("m-a", pa, group="gpu"), broken, hangs],
                                            groups={"gpu": {"max_running": 1, "min_run": 0}}))
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-a")) as resp:
        assert resp.status == 200
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-x")) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert error["code"] == "backend_start_failed" and "CUDA out of memory" in error["message"]
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-h")) as resp:
        assert resp.status == 503
        assert "not ready within 1 s" in (await resp.json())["error"]["message"]
    pool = proxy.app[POOL]
    hang = next(b for b in pool.backends if b.name == "m-h")
    assert hang.process.pid is None  # the hung start was killed
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-a")) as resp:  # nothing stuck
        assert resp.status == 200
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        groups = (await resp.json())["groups"]
    assert groups["gpu"]["running"] == ["m-a"]


async def test_pinned_members_stay_and_memory_budgets_decide_who_goes(proxy_factory, http):
    ports = {n: free_port() for n in ("p", "a", "b", "c")}
    backends = [member("p", ports["p"], group="gpu", memory="20GB", pinned=True),
                member("a", ports["a"], group="gpu", memory="30GB"),
                member("b", ports["b"], group="gpu", memory="30GB"),
                member("c", ports["c"], group="gpu", memory="50GB")]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"memory": "80GB", "min_run": 0}}))
    pool = proxy.app[POOL]
    state = {b.name: b.member for b in pool.backends}
    for model in ("p", "a", "b"):  # 20 + 30 + 30 = 80: all fit
        async with http.post(proxy.url + "/v1/chat/completions", json=chat(model)) as resp:
            assert resp.status == 200
    assert [n for n, m in state.items() if m.state == "ready"] == ["p", "a", "b"]
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("c")) as resp:  # 50: a and b go
        assert resp.status == 200
    assert {n: m.state for n, m in state.items()} == {"p": "ready", "a": "stopped", "b": "stopped", "c": "ready"}
    assert running_ports(set(ports.values())) == {ports["p"], ports["c"]}


async def test_queue_bound_and_admin_start_stop(proxy_factory, http):
    pa, pb = free_port(), free_port()
    proxy = await proxy_factory(make_config(
        [member("m-a", pa, rate=10.0, tokens=30, group="gpu"), member("m-b", pb, group="gpu")],
        groups={"gpu": {"max_running": 1, "min_run": 0, "max_queue": 1}},
        server={"admin_keys": ["adm"]}))
    admin = {"Authorization": "Bearer adm"}
    async with http.post(proxy.url + "/mtproxy/backends/m-a/start") as resp:
        assert resp.status == 401  # the admin key is needed
    async with http.post(proxy.url + "/mtproxy/backends/m-a/start", headers=admin) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "ready"
    async with http.post(proxy.url + "/mtproxy/backends/nope/start", headers=admin) as resp:
        assert resp.status == 404 and "m-a" in (await resp.json())["error"]["message"]
    busy = asyncio.create_task(stream_text(http, proxy.url, chat("m-a", stream=True)))
    pool = proxy.app[POOL]
    a, b = (next(x for x in pool.backends if x.name == n).member for n in ("m-a", "m-b"))
    await until(lambda: a.admitted == 1, 30)
    first = asyncio.create_task(http.post(proxy.url + "/v1/chat/completions", json=chat("m-b")))
    await until(lambda: b.waiting == 1, 30)
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-b")) as resp:  # the queue is full
        assert resp.status == 429 and resp.headers["Retry-After"].isdigit()
    resp = await first
    assert resp.status == 200
    resp.release()
    assert (await busy)[0] == 200
    async with http.post(proxy.url + "/mtproxy/backends/m-b/stop", headers=admin) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        listed = {x["name"]: x["managed"] for x in (await resp.json())["backends"]}
    assert listed["m-b"]["state"] == "stopped" and listed["m-a"]["state"] == "stopped"
    assert listed["m-b"]["last_start_seconds"] > 0


@pytest.mark.parametrize("text, field", [
    ("groups: {g: {max_running: 0}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1', "
     "models: [a], launch: x, group: g}\n", "groups.g.max_running"),
    ("groups: {g: {max_running: 1}}\nbackends:\n- {name: a, runtime: sglang, url: 'http://127.0.0.1:1', "
     "models: [a], group: g}\n", "backends[0].group"),  # no launch, and SGLang cannot load/unload
    ("groups: {g: {max_running: 1}, h: {max_running: 1, members: [a]}}\nbackends:\n- {name: a, runtime: vllm, "
     "url: 'http://127.0.0.1:1', models: [a], launch: x, group: g}\n", "groups.h.members"),
    ("groups: {g: {memory: 10GB}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1', "
     "models: [a], launch: x, group: g, memory: 12GB}\n", "backends[0].memory"),
    ("groups: {g: {memory: 10GB}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1', "
     "models: [a], launch: x, group: g}\n", "backends[0].memory"),
    ("groups: {g: {max_running: 1}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1', "
     "models: [a], launch: x, group: nope}\n", "backends[0].group"),
    ("groups: {g: {}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1'}\n", "groups.g"),
    ("groups: {g: {max_running: 1}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1', "
     "models: [a], launch: x, group: g, pinned: true}\n- {name: b, runtime: vllm, url: 'http://127.0.0.1:2', "
     "models: [b], launch: x, group: g}\n", "groups.g.max_running"),
    ("groups: {g: {memory: lots}}\nbackends:\n- {name: a, runtime: vllm, url: 'http://127.0.0.1:1'}\n",
     "groups.g.memory"),
])
def test_bad_groups_name_the_field(text, field):
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    assert str(err.value).startswith(field + ":") or f"\n{field}:" in str(err.value), str(err.value)


async def test_priority_goes_first_and_a_victim_dying_in_its_drain_frees_the_slot(proxy_factory, http):
    ports = {n: free_port() for n in ("m-a", "m-b", "m-c")}
    proxy = await proxy_factory(make_config(
        [member("m-a", ports["m-a"], rate=10.0, tokens=200, group="gpu"),
         member("m-b", ports["m-b"], group="gpu"),
         member("m-c", ports["m-c"], group="gpu", priority=5)],
        groups={"gpu": {"max_running": 1, "min_run": 0}}))
    pool = proxy.app[POOL]
    a, b, c = (next(x for x in pool.backends if x.name == n) for n in ("m-a", "m-b", "m-c"))
    long_stream = asyncio.create_task(stream_text(http, proxy.url, chat("m-a", stream=True)))
    await until(lambda: a.member.admitted == 1, 30)
    order: list[str] = []

    async def ask(model: str) -> int:
        async with http.post(proxy.url + "/v1/chat/completions", json=chat(model)) as resp:
            order.append(model)
            return resp.status

    low = asyncio.create_task(ask("m-b"))  # arrives first
    await until(lambda: b.member.waiting == 1 and a.member.state == "draining", 30)
    high = asyncio.create_task(ask("m-c"))  # arrives second, with a higher priority
    await until(lambda: c.member.waiting == 1, 30)
    os.kill(a.process.pid, 9)  # the victim dies in its drain: its stream fails, the slot frees
    status, text, _ = await long_stream
    assert status == 200 and text != fake_runtime.words(200)  # cut by the crash (an error event), not by the swap
    assert await high == 200 and await low == 200
    assert order == ["m-c", "m-b"]
    assert a.member.state == "stopped"


async def test_min_run_keeps_a_busy_member_before_swapping_it_out(proxy_factory, http):
    pa, pb = free_port(), free_port()
    proxy = await proxy_factory(make_config(
        [member("m-a", pa, rate=20.0, tokens=200, group="gpu"), member("m-b", pb, group="gpu")],
        groups={"gpu": {"max_running": 1, "min_run": 3}}))
    pool = proxy.app[POOL]
    a, b = (next(x for x in pool.backends if x.name == n).member for n in ("m-a", "m-b"))
    long_stream = asyncio.create_task(stream_text(http, proxy.url, chat("m-a", stream=True)))  # 10 s
    await until(lambda: a.admitted == 1, 30)
    wants_b = asyncio.create_task(stream_text(http, proxy.url, chat("m-b")))
    await until(lambda: b.waiting == 1, 30)
    loop = asyncio.get_running_loop()
    if loop.time() - a.ready_at < 3:
        assert a.state == "ready"  # young and busy: not drained, so more work for it gets in at once
        async with http.post(proxy.url + "/v1/chat/completions", json={**chat("m-a"), "max_tokens": 2}) as resp:
            assert resp.status == 200
    await until(lambda: a.state == "draining", 30)
    assert loop.time() - a.ready_at >= 3 - 0.1  # drained only once min_run had passed, while still busy
    assert a.admitted == 1
    status, text, done = await long_stream  # and its stream still ran to the end
    assert status == 200 and done and text == fake_runtime.words(200)
    assert (await wants_b)[0] == 200
    assert (a.state, b.state) == ("stopped", "ready")


# --- runtimes mtproxy did not launch: swapped through their load/unload APIs --------------------

def _loaded_at_once(calls: list[tuple[str, str]]) -> int:
    """The most models loaded at once by a sequence of (route, model) load/unload calls."""
    loaded: set[str] = set()
    most = 0
    for route, model in calls:
        if route in ("unload", "expired"):
            loaded.discard(model)
        elif route == "load":
            loaded.add(model)
        most = max(most, len(loaded))
    return most


@pytest.mark.parametrize("kind", ["llamacpp", "ollama"])
async def test_one_server_many_models_swapped_through_its_api(kind, runtime_factory, proxy_factory, http):
    names = ["a:latest", "b:latest", "c:latest"]
    behaviour = {"swap": kind, "load_seconds": 0.1, "models": names}
    if kind == "llamacpp":
        behaviour["autoload"] = False  # the proxy must load what it sends requests for
    else:
        behaviour.update(flavour="ollama", version="0.14.0")
    rt = await runtime_factory(**behaviour)
    backends = [{"name": f"be-{n[0]}", "runtime": kind, "url": rt.url, "models": [n], "group": "gpu"} for n in names]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1, "min_run": 0}}))
    sequence = ["a:latest", "b:latest", "a:latest", "c:latest", "c:latest"]
    for model in sequence:
        async with http.post(proxy.url + "/v1/chat/completions", json=chat(model)) as resp:
            assert resp.status == 200, await resp.text()
    loads = [m for route, m in rt.swapper.calls if route == "load"]
    assert _loaded_at_once(rt.swapper.calls) == 1, rt.swapper.calls
    assert [m for m in loads if m in names] == ["a:latest", "b:latest", "a:latest", "c:latest"], rt.swapper.calls


async def test_vllm_sleep_mode_members_and_adoption(runtime_factory, proxy_factory, http):
    """Two vLLMs, both awake at start (a vLLM starts awake): the group of one adopts the first and
    puts the second to sleep before any request; then requests swap them by sleep and wake-up."""
    one = await runtime_factory(models=["m1"], swap="vllm", load_seconds=0.1)
    two = await runtime_factory(models=["m2"], swap="vllm", load_seconds=0.1)
    backends = [{"name": "v1", "runtime": "vllm", "url": one.url, "models": ["m1"], "group": "gpu"},
                {"name": "v2", "runtime": "vllm", "url": two.url, "models": ["m2"], "group": "gpu"}]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1, "min_run": 0}}))
    pool = proxy.app[POOL]
    v1, v2 = (b.member for b in pool.backends)
    await until(lambda: (v1.state, v2.state) == ("ready", "stopped"), 10)
    assert not two.swapper.awake.is_set() and one.swapper.awake.is_set()
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m2")) as resp:
        assert resp.status == 200
    assert not one.swapper.awake.is_set() and two.swapper.awake.is_set()
    assert (v1.state, v2.state) == ("stopped", "ready")
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    assert value(samples, "mtproxy_backend_stops_total", backend="v2", reason="limit") == 1
    assert value(samples, "mtproxy_backend_starts_total", backend="v2", reason="request") == 1
    assert value(samples, "mtproxy_backend_state", backend="v2", state="ready") == 1


async def test_reload_keeps_members_and_applies_new_limits(proxy_factory, http):
    from mtproxy.reload import apply

    pa, pb = free_port(), free_port()
    backends = [member("m-a", pa, group="gpu"), member("m-b", pb, group="gpu")]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1, "min_run": 0}}))
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-a")) as resp:
        assert resp.status == 200
    pool = proxy.app[POOL]
    a = pool.backends[0].member
    pid = pool.backends[0].process.pid
    await apply(proxy.app, make_config(backends, groups={"gpu": {"max_running": 2, "min_run": 0}}))
    assert pool.backends[0].member is a and a.state == "ready"  # kept, process and all
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-b")) as resp:
        assert resp.status == 200
    assert {b.member.state for b in pool.backends} == {"ready"}  # room for both now
    assert pool.backends[0].process.pid == pid
    assert running_ports({pa, pb}) == {pa, pb}


async def test_a_member_that_goes_idle_is_swapped_out_at_once(proxy_factory, http):
    """min_run protects a member only while it is busy: once its last request ends, a request
    waiting for another member gets the slot, long before min_run."""
    pa, pb = free_port(), free_port()
    proxy = await proxy_factory(make_config(
        [member("m-a", pa, rate=20.0, tokens=10, group="gpu"), member("m-b", pb, group="gpu")],
        groups={"gpu": {"max_running": 1, "min_run": 600}}))
    pool = proxy.app[POOL]
    a, b = (next(x for x in pool.backends if x.name == n).member for n in ("m-a", "m-b"))
    first = asyncio.create_task(stream_text(http, proxy.url, chat("m-a", stream=True)))
    await until(lambda: a.admitted == 1, 30)
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("m-b")) as resp:
        assert resp.status == 200  # served once m-a went idle, not after its 600 s of min_run
    assert (await first)[0] == 200
    assert (a.state, b.state) == ("stopped", "ready")


# --- a runtime that loads or unloads a model behind the proxy's back -----------------------------

def _router(kind: str, names: list[str], **extra) -> dict:
    behaviour = {"swap": kind, "load_seconds": 0.05, "models": names, **extra}
    if kind == "ollama":
        behaviour.update(flavour="ollama", version="0.14.0")
    return behaviour


def _members(url: str, kind: str, names: list[str], group: str = "gpu") -> list[dict]:
    return [{"name": f"be-{n[0]}", "runtime": kind, "url": url, "models": [n], "group": group} for n in names]


async def _metrics(http, proxy) -> dict:
    async with http.get(proxy.url + "/metrics") as resp:
        return scrape(await resp.text())


async def test_a_model_ollama_unloads_by_itself_frees_its_slot(runtime_factory, proxy_factory, http):
    """Ollama unloads a model once its keep_alive runs out (a request naming none gets the
    server's default, here 0.3 s): within a probe round the member is stopped and its slot free,
    counted and shown so; another member takes the slot without a swap, and the next request for
    the first one starts it again properly (a load asked for and counted)."""
    names = ["a:latest", "b:latest"]
    rt = await runtime_factory(**_router("ollama", names, keep_alive=0.3))
    proxy = await proxy_factory(make_config(_members(rt.url, "ollama", names),
                                            groups={"gpu": {"max_running": 1, "min_run": 0}}))
    a, b = (x.member for x in proxy.app[POOL].backends)
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("a:latest")) as resp:
        assert resp.status == 200
    await until(lambda: ("expired", "a:latest") in rt.swapper.calls)
    await until(lambda: a.state == "stopped")
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_stops_total", backend="be-a", reason="runtime_unloaded") == 1
    assert value(samples, "mtproxy_backend_state", backend="be-a", state="stopped") == 1
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        listed = await resp.json()
    assert listed["groups"]["gpu"]["running"] == []
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("b:latest")) as resp:
        assert resp.status == 200  # the slot was free: nothing swapped out for it
    assert ("unload", "a:latest") not in rt.swapper.calls and proxy.app[POOL].swapper.groups["gpu"].swaps == 0
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("a:latest")) as resp:
        assert resp.status == 200
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_starts_total", backend="be-a", reason="request") == 2
    assert [m for route, m in rt.swapper.calls if route == "load"].count("a:latest") == 2
    assert _loaded_at_once(rt.swapper.calls) == 1, rt.swapper.calls
    assert b.state in ("stopped", "ready") and a.state == "ready"


@pytest.mark.parametrize("kind", ["llamacpp", "ollama"])
async def test_a_model_loaded_behind_the_proxys_back_is_counted_or_unloaded(kind, runtime_factory,
                                                                             proxy_factory, http):
    """A model loaded by someone else (a request sent to the runtime directly) counts as running
    while its group has room; one more loaded when the group is full is unloaded (`limit`)."""
    names = ["a:latest", "b:latest"]
    rt = await runtime_factory(**_router(kind, names))
    proxy = await proxy_factory(make_config(_members(rt.url, kind, names),
                                            groups={"gpu": {"max_running": 1, "min_run": 0}}))
    a, b = (x.member for x in proxy.app[POOL].backends)

    async def load_by_hand(model: str) -> None:
        path, body = ("/models/load", {"model": model}) if kind == "llamacpp" else ("/api/generate", {"model": model})
        async with http.post(rt.url + path, json=body) as resp:
            assert resp.status == 200
        await until(lambda: rt.swapper.status[model] == "loaded" or ("unload", model) in rt.swapper.calls)

    await load_by_hand("a:latest")
    await until(lambda: a.state == "ready")  # room: counted as running
    assert b.state == "stopped"
    await load_by_hand("b:latest")
    await until(lambda: ("unload", "b:latest") in rt.swapper.calls and b.state == "stopped")
    assert a.state == "ready" and rt.swapper.status == {"a:latest": "loaded", "b:latest": "unloaded"}
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_stops_total", backend="be-b", reason="limit") == 1
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("a:latest")) as resp:
        assert resp.status == 200  # served at once: a is running, nothing loaded for it
    assert [m for route, m in rt.swapper.calls if route == "load"] == ["a:latest", "b:latest"]  # by hand


async def test_a_request_in_flight_is_not_disturbed_by_an_unload_behind_the_proxys_back(
        runtime_factory, proxy_factory, http):
    """The operator unloads a model while a request to it streams: the member stays ready while
    the request runs, whatever the runtime says, and is stopped once it has finished."""
    gate = asyncio.Event()
    names = ["a:latest", "b:latest"]
    rt = await runtime_factory(**_router("llamacpp", names, gate=gate))
    proxy = await proxy_factory(make_config(_members(rt.url, "llamacpp", names),
                                            groups={"gpu": {"max_running": 1, "min_run": 0}}))
    a = proxy.app[POOL].backends[0].member
    stream = asyncio.create_task(stream_text(http, proxy.url, chat("a:latest", stream=True)))
    await until(lambda: a.admitted == 1 and rt.stream_started.is_set())
    async with http.post(rt.url + "/models/unload", json={"model": "a:latest"}) as resp:
        assert resp.status == 200
    await until(lambda: rt.swapper.status["a:latest"] == "unloaded")
    polls = rt.swapper.polls
    await until(lambda: rt.swapper.polls >= polls + 3)  # three rounds asked (about b)
    assert a.state == "ready" and a.admitted == 1
    gate.set()
    status, text, done = await stream
    assert status == 200 and done and text == "Hello world"
    await until(lambda: a.state == "stopped")
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_stops_total", backend="be-a", reason="runtime_unloaded") == 1


async def test_a_request_let_through_while_the_runtime_is_asked_is_not_broken(runtime_factory, proxy_factory, http):
    """The runtime's answer "not loaded" arrives after a request for the member was let through
    (and made the runtime load the model again): the answer is stale and changes nothing."""
    gate = asyncio.Event()
    rt = await runtime_factory(**_router("llamacpp", ["a:latest"], gate=gate))
    other = await runtime_factory(**_router("llamacpp", ["b:latest"]))  # asked every round: counts them
    backends = _members(rt.url, "llamacpp", ["a:latest"]) + _members(other.url, "llamacpp", ["b:latest"], "other")
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1}, "other": {"max_running": 1}},
                                            health={"interval": 0.2, "timeout": 30}))
    a = proxy.app[POOL].backends[0].member
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("a:latest")) as resp:
        assert resp.status == 200
    assert a.state == "ready"
    first = rt.swapper.hold = asyncio.Event()  # a round asks while a is loaded: held
    polls = rt.swapper.polls
    await until(lambda: rt.swapper.polls > polls)
    async with http.post(rt.url + "/models/unload", json={"model": "a:latest"}) as resp:  # by hand
        assert resp.status == 200
    await until(lambda: rt.swapper.status["a:latest"] == "unloaded")
    second = rt.swapper.hold = asyncio.Event()
    polls = rt.swapper.polls
    first.set()
    await until(lambda: rt.swapper.polls > polls)  # the next round's answer, "unloaded", is held
    stream = asyncio.create_task(stream_text(http, proxy.url, chat("a:latest", stream=True)))
    await until(lambda: a.admitted == 1 and rt.stream_started.is_set())  # let through; loaded again
    rounds = other.swapper.polls
    second.set()  # the stale answer arrives
    await until(lambda: other.swapper.polls >= rounds + 2)  # that round is over
    assert a.state == "ready" and a.admitted == 1
    gate.set()
    status, text, done = await stream
    assert status == 200 and done and text == "Hello world"
    polls = rt.swapper.polls
    await until(lambda: rt.swapper.polls > polls + 1)  # asked again since: loaded, rightly running
    assert a.state == "ready" and rt.swapper.status["a:latest"] == "loaded"
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_stops_total", backend="be-a", reason="runtime_unloaded") is None


async def test_a_runtime_that_cannot_tell_changes_nothing(runtime_factory, proxy_factory, http, caplog):
    """A runtime that cannot be asked (here: gone) leaves its member as it is, logged once."""
    one = await runtime_factory(**_router("vllm", ["m1"]))  # a vLLM starts awake: adopted as running
    other = await runtime_factory(**_router("vllm", ["m2"]))  # asked every round: counts them
    backends = [{"name": "v1", "runtime": "vllm", "url": one.url, "models": ["m1"], "group": "gpu"},
                {"name": "v2", "runtime": "vllm", "url": other.url, "models": ["m2"], "group": "other"}]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1}, "other": {"max_running": 1}}))
    v1 = proxy.app[POOL].backends[0].member
    await until(lambda: v1.state == "ready")
    caplog.set_level("WARNING", logger="mtproxy.swap")
    await one.stop()
    rounds = other.swapper.polls
    await until(lambda: other.swapper.polls >= rounds + 4)
    assert v1.state == "ready"
    unsure = [r for r in caplog.records if "cannot tell what its runtime has loaded" in r.getMessage()]
    assert len(unsure) == 1 and "v1" in unsure[0].getMessage()


async def test_an_answer_a_stop_made_stale_changes_nothing(runtime_factory, proxy_factory, http):
    """The runtime is asked while its model is loaded; before the answer ("loaded") arrives,
    mtproxy stops the member itself (admin stop, its model unloaded). The answer is stale: the
    member stays stopped, not counted as running again with nothing loaded."""
    rt = await runtime_factory(**_router("llamacpp", ["a:latest"]))
    other = await runtime_factory(**_router("llamacpp", ["b:latest"]))  # asked every round: counts them
    backends = _members(rt.url, "llamacpp", ["a:latest"]) + _members(other.url, "llamacpp", ["b:latest"], "other")
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"max_running": 1}, "other": {"max_running": 1}},
                                            health={"interval": 0.2, "timeout": 30},
                                            server={"admin_keys": ["adm"]}))
    a = proxy.app[POOL].backends[0].member
    async with http.post(proxy.url + "/v1/chat/completions", json=chat("a:latest")) as resp:
        assert resp.status == 200
    assert a.state == "ready"
    held = rt.swapper.hold = asyncio.Event()  # a round asks while a is loaded: its answer held
    polls = rt.swapper.polls
    await until(lambda: rt.swapper.polls > polls)
    rt.swapper.hold = None  # the stop's own looks answer at once
    async with http.post(proxy.url + "/mtproxy/backends/be-a/stop", headers={"Authorization": "Bearer adm"}) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    assert rt.swapper.status["a:latest"] == "unloaded"
    rounds = other.swapper.polls
    held.set()  # the stale answer, "loaded", arrives
    await until(lambda: other.swapper.polls >= rounds + 3)  # that round and two more are over
    assert a.state == "stopped" and rt.swapper.status["a:latest"] == "unloaded"
    samples = await _metrics(http, proxy)
    assert value(samples, "mtproxy_backend_stops_total", backend="be-a", reason="admin") == 1
    assert value(samples, "mtproxy_backend_stops_total", backend="be-a", reason="runtime_unloaded") is None


async def test_adoption_weighs_each_member_once_the_one_before_is_unloaded(runtime_factory, proxy_factory):
    """Three vLLMs awake at start, a budget of 80GB: v1 (40GB) fits, v2 (50GB) does not and is
    put to sleep, v3 (40GB) fits beside v1 once v2 is gone, so it stays awake."""
    rts = [await runtime_factory(models=[f"m{i}"], swap="vllm", load_seconds=0.1) for i in (1, 2, 3)]
    sizes = ["40GB", "50GB", "40GB"]
    backends = [{"name": f"v{i}", "runtime": "vllm", "url": rt.url, "models": [f"m{i}"], "group": "gpu",
                 "memory": size} for i, (rt, size) in enumerate(zip(rts, sizes, strict=True), 1)]
    proxy = await proxy_factory(make_config(backends, groups={"gpu": {"memory": "80GB", "min_run": 0}}))
    members = [b.member for b in proxy.app[POOL].backends]
    await until(lambda: [m.state for m in members] == ["ready", "stopped", "ready"])
    assert [rt.swapper.awake.is_set() for rt in rts] == [True, False, True]
