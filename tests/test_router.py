"""Routing (mtproxy/router.py): model name or alias → the backends serving it → the healthy one
with the fewest outstanding requests; none healthy is a 503 that says why. MTP-aware routing is
in test_mtp.py, per-backend caps in test_limits.py."""

from __future__ import annotations

import asyncio

import pytest

from bench.fake_runtime import FakeRuntime
from mtproxy.config import Config

from .conftest import make_config
from .promtext import scrape, value
from .test_mtp import props

CHAT = "/v1/chat/completions"


def chat_body(model: str = "m1", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_alias_is_rewritten_to_the_served_model(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["deepseek-v3"])
    cfg = make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                      models={"deepseek-v3": {"aliases": ["dsv3"]}})
    proxy = await proxy_factory(cfg)
    async with http.post(proxy.url + CHAT, json=chat_body("dsv3", temperature=0)) as resp:
        assert resp.status == 200
    assert rt.requests[0]["model"] == "deepseek-v3"
    assert rt.requests[0]["temperature"] == 0


async def test_least_outstanding_backend_is_chosen(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    a = await runtime_factory("a", gate=gate)
    b = await runtime_factory("b", gate=gate)
    proxy = await proxy_factory(make_config([
        {"name": "a", "runtime": "vllm", "url": a.url}, {"name": "b", "runtime": "vllm", "url": b.url}]))

    async def one():
        resp = await http.post(proxy.url + CHAT, json=chat_body(stream=True))
        await resp.content.readuntil(b"\n\n")
        return resp.headers["x-mtproxy-backend"], asyncio.ensure_future(resp.read())

    first, rest1 = await one()
    second, rest2 = await one()  # the first backend has one stream open: the other one is chosen
    assert {first, second} == {"a", "b"}
    gate.set()
    for rest in await asyncio.gather(rest1, rest2):
        assert rest.endswith(b"data: [DONE]\n\n")


async def test_no_healthy_backend_is_503(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", healthy=False)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url, "models": ["m1"]}]))
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 503
        err = (await resp.json())["error"]
    assert err["code"] == "no_backend_available"
    assert "a: down (/health answered HTTP 503)" in err["message"]
    async with http.get(proxy.url + "/ready") as resp:
        assert resp.status == 503
    async with http.get(proxy.url + "/health") as resp:
        assert resp.status == 200
    rt.b.healthy = True  # the background health check brings it back
    for _ in range(100):
        async with http.get(proxy.url + "/ready") as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.05)
    async with http.post(proxy.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200


# --- routing.balance: fastest (router.py, speed.py) ----------------------------------------------
# The fakes pace their streams (Behaviour.rate, tokens/s); each test compares shares of requests
# and throughputs within one run, as ratios: nothing here is timed against a clock.

TOKENS = [" x"] * 16


async def paced(runtime_factory, name: str, rate: float, **kw) -> FakeRuntime:
    return await runtime_factory(name, tokens=TOKENS, rate=rate, **kw)


async def load(http, proxy, n: int, concurrency: int, model: str = "m1") -> list[str]:
    """``n`` streamed requests, ``concurrency`` at a time: the backend of each, in issue order."""
    chosen = [""] * n
    next_index = iter(range(n))

    async def worker() -> None:
        for i in next_index:
            async with http.post(proxy.url + CHAT, json=chat_body(model, stream=True)) as resp:
                assert resp.status == 200
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
                chosen[i] = resp.headers["x-mtproxy-backend"]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return chosen


def share(chosen: list[str], name: str) -> float:
    return chosen.count(name) / len(chosen)


def two(a: FakeRuntime, b: FakeRuntime, **routing) -> Config:
    return make_config([{"name": "fast", "runtime": "vllm", "url": a.url},
                        {"name": "slow", "runtime": "vllm", "url": b.url}], routing=routing)


async def test_fastest_sends_most_to_the_faster_backend_and_beats_least_outstanding(
        runtime_factory, proxy_factory, http):
    fast = await paced(runtime_factory, "fast", 800)  # 16 tokens in 20 ms
    slow = await paced(runtime_factory, "slow", 100)  # in 160 ms
    shares, throughput = {}, {}
    loop = asyncio.get_running_loop()
    for balance in ("least_outstanding", "fastest"):
        proxy = await proxy_factory(two(fast, slow, balance=balance))
        t0 = loop.time()
        chosen = await load(http, proxy, 60, 4)
        throughput[balance] = len(chosen) / (loop.time() - t0)
        shares[balance] = share(chosen, "fast")
    assert shares["fastest"] >= 0.9, shares
    assert shares["fastest"] > shares["least_outstanding"], shares
    assert throughput["fastest"] > 1.2 * throughput["least_outstanding"], throughput


async def test_fastest_moves_traffic_off_a_backend_that_slows_down_and_back_when_it_recovers(
        runtime_factory, proxy_factory, http):
    fast = await paced(runtime_factory, "fast", 800)
    slow = await paced(runtime_factory, "slow", 100)
    proxy = await proxy_factory(two(fast, slow, balance="fastest", decay_seconds=0.3, max_age_seconds=1.0))
    before = await load(http, proxy, 40, 2)
    assert share(before, "fast") >= 0.8, before

    fast.b.rate = 20  # 16 tokens in 0.8 s now: the other one is faster
    slowed = await load(http, proxy, 40, 2)
    assert share(slowed, "slow") >= 0.7, slowed
    assert "fast" in slowed[2:]  # probed again now and then, not starved

    fast.b.rate = 800  # recovered: probed within max_age_seconds, then it wins its traffic back
    after = await load(http, proxy, 60, 2)
    assert share(after[30:], "fast") >= 0.8, after


async def test_estimates_are_served_and_exported(runtime_factory, proxy_factory, http):
    fast = await paced(runtime_factory, "fast", 800)
    slow = await paced(runtime_factory, "slow", 100)
    proxy = await proxy_factory(two(fast, slow, balance="fastest"))
    await load(http, proxy, 6, 2)
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        status = await resp.json()
    assert status["routing"]["balance"] == "fastest"
    speeds = {b["name"]: b["models"][0]["speed"] for b in status["backends"]}
    assert speeds["fast"]["fresh"] and speeds["slow"]["fresh"]
    assert speeds["fast"]["decode_tokens_per_second"] > speeds["slow"]["decode_tokens_per_second"] > 0
    assert speeds["fast"]["ttft_seconds"] > 0
    assert status["backends"][0]["models"][0]["mean_output_tokens"] == 16
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    rate = {b: value(samples, "mtproxy_backend_estimated_decode_tokens_per_second", backend=b, model="m1")
            for b in ("fast", "slow")}
    assert rate["fast"] == pytest.approx(speeds["fast"]["decode_tokens_per_second"])
    assert rate["fast"] > rate["slow"] > 0
    assert value(samples, "mtproxy_backend_estimated_ttft_seconds", backend="slow", runtime="vllm", model="m1") > 0
    assert value(samples, "mtproxy_backend_estimate_age_seconds", backend="fast", model="m1") >= 0


def _timings(accepted: int) -> dict:
    return {"timings": {"predicted_n": 16, "draft_n": 12, "draft_n_accepted": accepted}}


@pytest.mark.parametrize("mtp_rate, plain_rate, winner", [(100, 800, "plain"), (800, 100, "mtp")])
async def test_prefer_takes_mtp_only_where_it_pays(runtime_factory, proxy_factory, http, mtp_rate, plain_rate,
                                                   winner):
    """An active MTP backend that drafts and accepts (2 tokens per step) but decodes slower
    than a backend without MTP does not pay: `prefer` ranks it with the capable ones."""
    mtp = await paced(runtime_factory, "mtp", mtp_rate, models=["glm-4.5-air"], extra=_timings(8),
                      routes={"/props": props("none,draft-mtp")})
    plain = await paced(runtime_factory, "plain", plain_rate, models=["glm-4.5-air"], routes={"/props": props("none")})
    proxy = await proxy_factory(make_config([
        {"name": "mtp", "runtime": "llamacpp", "url": mtp.url},
        {"name": "plain", "runtime": "llamacpp", "url": plain.url}], routing={"mtp": "prefer", "balance": "fastest"}))
    chosen = await load(http, proxy, 30, 2, "glm-4.5-air")
    assert share(chosen[10:], winner) >= 0.8, chosen
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        status = await resp.json()
    models = {b["name"]: b["models"][0] for b in status["backends"]}
    assert models["mtp"]["mtp"] == "active"
    assert models["mtp"]["speed"]["tokens_per_step"] == pytest.approx(2.0)
    assert models["mtp"]["speed"]["mtp_pays"] is (winner == "mtp")
    assert models["plain"]["speed"]["mtp_pays"] is None  # not active there
