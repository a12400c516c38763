"""Per-request measurement and the Prometheus export, against paced fake runtimes."""

from __future__ import annotations

import asyncio
import random
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.metrics.meter import RequestMeter, count_bursts
from mtproxy.metrics.window import TokenWindow

from .conftest import make_config
from .promtext import scrape, value

TOKENS = [f"t{i} " for i in range(81)]


async def get_metrics(http, proxy) -> dict:
    async with http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200
        return scrape(await resp.text())


# --- definitions on synthetic timestamps ----------------------------------------------------

def test_bursts_plain_versus_speculative():
    rnd = random.Random(1)
    plain = [0.0]
    for _ in range(71):
        plain.append(plain[-1] + 0.0116 + rnd.uniform(-0.003, 0.003))
    assert count_bursts(plain) == 72  # every chunk is its own decode step
    spec = [0.0]
    while len(spec) < 72:  # steps of 1-4 accepted tokens, sent back to back
        step = spec[-1] + 0.02 + rnd.uniform(-0.004, 0.004)
        spec.append(step)
        for _ in range(rnd.randint(0, 3)):
            spec.append(spec[-1] + 0.00001)
    bursts = count_bursts(spec)
    assert 72 / bursts > 1.8


def test_a_read_that_brings_many_chunks_after_a_long_gap_is_one_step():
    # a speculative runtime's long verification step: 12 one-token steps 12 ms apart, then 10
    # chunks in one read 300 ms later (real traces: tests/test_tokens_per_step.py)
    times = [0.012 * i for i in range(13)] + [0.444] * 10
    assert count_bursts(times) == 14
    # a burst of 3 chunks after every step gap: one step each
    burst = [0.0] + [0.025 * k for k in range(1, 20) for _ in range(3)]
    assert count_bursts(burst) == 20
    # the price: steps that queued up while the proxy itself stalled for longer than a decode
    # step count as one (one token every 25 ms, two chunks in one read now and then)
    times = []
    for i in range(41):
        if i % 5 != 3:  # chunk 3 of every five is read together with chunk 4
            times += [0.025 * i] * (2 if i % 5 == 4 else 1)
    assert len(times) == 41 and count_bursts(times) == 33


def test_meter_formulas():
    m = RequestMeter(t0=10.0, endpoint="chat", stream=True)
    m.t_sent, m.t_in, m.t_out = 10.001, 10.2, 10.2002
    for i in range(11):  # 11 one-token chunks, 50 ms apart, the first 0.3 s after the request
        m.content(10.3 + 0.05 * i, 1)
    m.t_end = 10.81
    m.report.completion_tokens = 11
    r = m.measure()
    assert r.ttft == pytest.approx(0.3)
    assert r.decode_rate == pytest.approx(10 / 0.5)
    assert r.time_per_output_token == pytest.approx((0.81 - 0.3) / 10)
    assert r.tokens_per_chunk == 1 and r.tokens_per_step == 1
    assert r.overhead == pytest.approx(0.001 + 0.0002)
    m.report.completion_tokens = None  # a runtime that does not report counts
    r = m.measure()
    assert r.decode_rate is None and r.tokens_per_chunk is None and r.ttft == pytest.approx(0.3)


def test_window_replaces_the_live_estimate_with_exact_counts():
    w = TokenWindow(5.0)
    key = ("b", "m")
    times = [100.0 + 0.1 * i for i in range(20)]
    for t in times:
        w.add(key, t, 1)
    assert dict(w.rates(102.0))[key] == pytest.approx(20 / 5)
    w.settle(key, times, [1] * len(times), 60)  # three tokens per chunk, reported at the end
    assert dict(w.rates(102.0))[key] == pytest.approx(60 / 5)
    assert dict(w.rates(108.0))[key] == 0  # out of the window
    w2 = TokenWindow(5.0)
    for t in times:
        w2.add(key, t, 1)
    w2.settle(key, times, [1] * len(times), None)  # never reported: withdrawn
    assert dict(w2.rates(102.0))[key] == 0


# --- accuracy against a paced runtime -----------------------------------------------------------

@pytest.mark.parametrize("per_chunk, burst", [(1, 1), (3, 1), (1, 3)])
async def test_exported_figures_match_the_truth_and_the_client(runtime_factory, proxy_factory, http,
                                                               per_chunk, burst):
    rt = await runtime_factory("a", models=["m", "warm-up"], tokens=TOKENS, first_token_delay=0.3, rate=40.0,
                               tokens_per_chunk=per_chunk, burst=burst)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    warm = await client.chat.completions.create(model="warm-up", messages=[{"role": "user", "content": "x"}],
                                                stream=True)  # connection open, SDK stream code loaded
    [_ async for _ in warm]
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  stream=True, stream_options={"include_usage": True})
    seen, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append(time.perf_counter())
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    n = usage.completion_tokens
    assert n == len(TOKENS)
    client_ttft = seen[0] - t0
    client_rate = (n - 1) / (seen[-1] - seen[0])

    s = await get_metrics(http, proxy)
    labels = {"backend": "a", "model": "m", "stream": "true"}
    ttft = value(s, "mtproxy_time_to_first_token_seconds_sum", **labels)
    rate = value(s, "mtproxy_decode_tokens_per_second_sum", **labels)
    per_chunk_seen = value(s, "mtproxy_tokens_per_chunk_sum", **labels)
    per_step = value(s, "mtproxy_tokens_per_step_sum", **labels)
    steps = -(-len(TOKENS) // (per_chunk * burst))
    # the truth: when the runtime really sent its chunks (a busy machine delays its schedule too)
    true_ttft = rt.write_times[0] - rt.received_at
    true_rate = (n - 1) / (rt.write_times[-1] - rt.write_times[0])  # the definition
    assert true_ttft == pytest.approx(0.3, abs=0.1) and true_rate == pytest.approx(40, rel=0.2)
    assert ttft == pytest.approx(true_ttft, rel=0.05, abs=0.01)  # + forwarding inside one busy loop
    assert rate == pytest.approx(true_rate, rel=0.05)
    assert per_chunk_seen == pytest.approx(n / -(-len(TOKENS) // per_chunk), rel=0.05)
    assert per_step == pytest.approx(n / steps, rel=0.05)
    # and with what the openai client saw: it adds its own send and scheduling delays, which on a
    # busy machine running client, proxy and runtime on one event loop reach tens of ms
    assert ttft == pytest.approx(client_ttft, rel=0.05, abs=0.1)
    assert rate == pytest.approx(client_rate, rel=0.05)
    assert value(s, "mtproxy_completion_tokens_total", **labels) == n
    assert value(s, "mtproxy_prompt_tokens_total", **labels) == 5
    otel = {"gen_ai_request_model": "m", "gen_ai_operation_name": "chat", "gen_ai_provider_name": "vllm"}
    assert value(s, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **otel) == n
    assert value(s, "gen_ai_server_time_to_first_token_seconds_sum", **otel) == pytest.approx(ttft)
    assert value(s, "mtproxy_inter_token_latency_seconds_count", **labels) == -(-len(TOKENS) // per_chunk) - 1
    assert value(s, "mtproxy_requests_total", status="200", **labels) == 1


async def test_window_gauge_during_a_stream(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m"], tokens=TOKENS * 2, rate=40.0, tokens_per_chunk=2)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            metrics={"window_seconds": 2}))
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
        await asyncio.sleep(2.5)  # mid-stream: the live estimate counts chunks (2 tokens each)
        live = value(await get_metrics(http, proxy), "mtproxy_window_tokens_per_second", backend="a")
        await resp.read()
    done = value(await get_metrics(http, proxy), "mtproxy_window_tokens_per_second", backend="a")
    assert 12 < live < 28  # ~20 chunks/s
    assert 30 < done < 50  # ~40 tokens/s once the runtime's count is in


async def test_every_contract_name_is_exported(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m"], extra={"timings": {"draft_n": 6, "draft_n_accepted": 4}})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
        await resp.read()
    async with http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for hist in ("mtproxy_request_duration_seconds", "mtproxy_time_to_first_token_seconds",
                 "mtproxy_inter_token_latency_seconds", "mtproxy_time_per_output_token_seconds",
                 "mtproxy_decode_tokens_per_second", "mtproxy_tokens_per_chunk", "mtproxy_tokens_per_step",
                 "mtproxy_overhead_seconds", "gen_ai_server_time_to_first_token_seconds",
                 "gen_ai_server_time_per_output_token_seconds", "gen_ai_server_request_duration_seconds",
                 "gen_ai_client_token_usage"):
        assert f"{hist}_bucket" in names, hist
    for name in ("mtproxy_requests_total", "mtproxy_prompt_tokens_total", "mtproxy_completion_tokens_total",
                 "mtproxy_spec_decode_draft_tokens_total", "mtproxy_spec_decode_accepted_tokens_total",
                 "mtproxy_window_tokens_per_second", "mtproxy_requests_in_flight", "mtproxy_backend_up",
                 "mtproxy_backend_mtp_active", "mtproxy_backend_info", "mtproxy_event_loop_tasks"):
        assert name in names, name
    s = scrape(text)
    assert value(s, "mtproxy_event_loop_tasks") >= 1  # at least the task rendering /metrics
    assert value(s, "mtproxy_spec_decode_accepted_tokens_total", backend="a") == 4
    assert value(s, "mtproxy_spec_decode_draft_tokens_total", backend="a") == 6
    assert ('le="60.0"' in text) and ('le="5000.0"' in text)  # CPU-wide buckets
    assert "mtproxy_upstream_retries" in text


async def test_metrics_render_off_the_event_loop(runtime_factory, proxy_factory, http):
    """A scrape renders in a worker thread (the page costs tens of ms of CPU), with what belongs
    to the event loop (token window, tasks) read on the loop; Prometheus' content negotiation
    (OpenMetrics) and gzip still work."""
    import threading

    from prometheus_client.registry import Collector

    from mtproxy.state import METRICS

    rt = await runtime_factory("a", models=["m"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    threads: list[int] = []

    class Witness(Collector):
        def collect(self):
            threads.append(threading.get_ident())
            return iter(())

    proxy.app[METRICS].registry.register(Witness())
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
        await resp.read()
    async with http.get(proxy.url + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        s = scrape(await resp.text())
    assert threads and threading.get_ident() not in threads
    assert value(s, "mtproxy_window_tokens_per_second", backend="a", model="m") > 0
    assert value(s, "mtproxy_event_loop_tasks") >= 1
    async with http.get(proxy.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).endswith("# EOF\n")
    async with http.get(proxy.url + "/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers.get("Content-Encoding") == "gzip"
        assert "mtproxy_requests_total" in await resp.text()


async def test_random_model_names_create_no_series(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", models=["m"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}]))
    before = len(scrape(await (await http.get(proxy.url + "/metrics")).text()))
    for i in range(300):
        async with http.post(proxy.url + "/v1/chat/completions", json={"model": f"junk-{i}-{random.random()}",
                                                                       "messages": []}) as resp:
            assert resp.status == 404
    s = scrape(await (await http.get(proxy.url + "/metrics")).text())
    assert not any("junk" in str(labels) for _, labels in s)
    assert value(s, "mtproxy_requests_total", status="404", model="none") == 300
    assert len(s) - before <= 2  # one new counter series (and its created sample)


async def test_in_flight_and_statuses(runtime_factory, proxy_factory, http):
    gate = asyncio.Event()
    rt = await runtime_factory("a", models=["m"], gate=gate)
    bad = await runtime_factory("b", models=["m2"], die_after=1)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url},
                                             {"name": "b", "runtime": "vllm", "url": bad.url}]))
    resp = await http.post(proxy.url + "/v1/chat/completions", json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    await resp.content.readuntil(b"\n\n")
    assert value(await get_metrics(http, proxy), "mtproxy_requests_in_flight", backend="a") == 1
    gate.set()
    await resp.read()
    assert value(await get_metrics(http, proxy), "mtproxy_requests_in_flight", backend="a") == 0
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "m2", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r2:
        await r2.read()
    s = await get_metrics(http, proxy)
    assert value(s, "mtproxy_requests_total", backend="b", status="stream_error") == 1
    assert value(s, "mtproxy_backend_up", backend="a") == 1
    assert value(s, "mtproxy_backend_info", backend="a") == 1


async def test_live_signal_flags_mtp_that_does_nothing(runtime_factory, proxy_factory, http, caplog):
    props = {"default_generation_settings": {"params": {"speculative.types": "none,draft-mtp"}},
             "build_info": "b9300-abc"}
    rt = await runtime_factory("a", models=["glm-4.5-air"], routes={"/props": props}, tokens=TOKENS[:40],
                               rate=100.0, extra={"timings": {"draft_n": 0, "draft_n_accepted": 0}})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url, "mtp": True}]))
    s = await get_metrics(http, proxy)
    assert value(s, "mtproxy_backend_mtp_active", backend="a") == 1  # the runtime says it is on
    for _ in range(5):  # ...but every request decodes one token per step and accepts nothing
        async with http.post(proxy.url + "/v1/chat/completions", json={
                "model": "glm-4.5-air", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
            await resp.read()
    for _ in range(100):  # the request is accounted for just after its last byte left
        s = await get_metrics(http, proxy)
        if value(s, "mtproxy_backend_mtp_active", backend="a") == 0:
            break
        await asyncio.sleep(0.02)
    assert value(s, "mtproxy_backend_mtp_active", backend="a") == 0
    assert value(s, "mtproxy_backend_mtp_mismatch", backend="a") == 1
    assert any("tokens per step and no accepted drafts" in r.getMessage() for r in caplog.records)


def test_lean_instruments_export_what_prometheus_client_would():
    """mtproxy.metrics.lean against prometheus_client's Histogram and Counter fed the same
    values one by one: the same samples, bucket edges, zeros and values above the top included."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from mtproxy.metrics import lean
    from mtproxy.metrics.instruments import INTER_TOKEN

    rnd = random.Random(7)
    requests = [[rnd.choice([0.0, *INTER_TOKEN, 9.0, rnd.uniform(0, 6)]) for _ in range(rnd.randint(1, 60))]
                for _ in range(40)]
    reference, ours = CollectorRegistry(), lean.LeanRegistry()
    h = Histogram("gaps_seconds", "d", ("backend",), buckets=INTER_TOKEN, registry=reference)
    c = Counter("tokens", "d", ("backend",), registry=reference)
    lh = ours.histogram("gaps_seconds", "d", ("backend",), INTER_TOKEN)
    lc = ours.counter("tokens", "d", ("backend",))
    for i, values in enumerate(requests):
        name = f"b{i % 3}"
        for v in values:
            h.labels(name).observe(v)
        c.labels(name).inc(len(values))
        lc.labels(name).inc(len(values))
        if i % 2:
            lh.labels(name).observe_many([v for v in values if v != 0.0], zeros=values.count(0.0))
        else:
            for v in values:
                lh.labels(name).observe(v)

    def samples(text: str):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples if not s.name.endswith("_created")}

    expected, got = samples(generate_latest(reference).decode()), samples(ours.text())
    assert set(got) == set(expected)
    for key, v in expected.items():
        assert got[key] == pytest.approx(v), key
    with pytest.raises(ValueError):
        lh.labels("a", "b")


def test_a_series_is_exported_once_observed_and_records_its_twin():
    """A series made but never observed has no lines (a figure never reported has no series);
    an increment by 0 exports it; one increment records the twin (its OpenTelemetry name) too."""
    from mtproxy.metrics import lean

    ours = lean.LeanRegistry()
    usage = lean.Histogram("usage", "d", ("model", "type"), (1, 16))
    tokens = ours.counter("tokens", "d", ("model",), twin=lean.Twin(usage, lambda values: (*values, "input")))
    ours.add(usage)
    tokens.labels("never")
    tokens.labels("zero").inc(0)
    tokens.labels("some").inc(5)
    s = scrape(ours.text())
    assert value(s, "tokens_total", model="never") is None and value(s, "usage_count", model="never") is None
    assert value(s, "tokens_total", model="zero") == 0 and value(s, "usage_count", model="zero") == 1
    assert value(s, "tokens_total", model="some") == 5 and value(s, "usage_sum", model="some", type="input") == 5
    assert value(s, "usage_bucket", model="some", le="1.0") == 0 and value(s, "usage_bucket", model="some", le="16.0") == 1


def test_metrics_imports_nothing_above_it():
    """metrics/ lies under the backends, the runtimes and the proxy (which import it): it may
    import stream/, errors and prometheus_client, and reads the backend pool through a protocol."""
    import ast
    from pathlib import Path

    import mtproxy

    package = Path(mtproxy.__file__).parent
    for path in sorted((package / "metrics").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 1:  # from ..x import y
                assert (node.module or "").split(".")[0] in {"stream", "errors"}, (path.name, node.module)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "mtproxy", (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "mtproxy" for a in node.names), path.name


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_metrics_page_is_prometheus_clients_own_exposition(openmetrics):
    """/metrics renders the request families from cached per-series prefixes after
    prometheus_client's registry (metrics/export.py): line for line what prometheus_client's
    exposition writes for both, label values needing escapes, big counts and an empty family
    included."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from mtproxy.backends import BackendPool
    from mtproxy.config import Config
    from mtproxy.metrics.export import render
    from mtproxy.metrics.instruments import Metrics
    from mtproxy.metrics.meter import Outcome

    config = Config.model_validate({"backends": [
        {"name": name, "runtime": "vllm", "url": f"http://127.0.0.1:{9000 + i}", "models": ['m"1', "m\\2"]}
        for i, name in enumerate(["a", "b\nc"])]})
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = Metrics(registry, BackendPool(config), TokenWindow())
    rnd = random.Random(3)
    for _i in range(60):
        meter = RequestMeter(0.0, rnd.choice(["chat", "completions"]), stream=rnd.random() < 0.6)
        meter.route(None, rnd.choice(["a", "b\nc"]), "vllm", rnd.choice(['m"1', "m\\2"]), False)
        outcome = rnd.choice([200, 502, Outcome.CLIENT_CLOSED])
        if isinstance(outcome, int):
            meter.answered(outcome)
        else:
            meter.outcome = outcome
        meter.t_sent, meter.t_in, meter.t_out, meter.t_end = 0.001, 0.01, 0.011, rnd.uniform(0.05, 900)
        meter.report.prompt_tokens = rnd.choice([1, 3, 2_000_000])
        meter.report.completion_tokens = rnd.randint(2, 40)
        if meter.labels.stream:
            meter.times = sorted(rnd.uniform(0.02, 0.04) for _ in range(rnd.randint(1, 30)))
            meter.counts = [1] * len(meter.times)
        metrics.finish(meter)
    metrics.retry("a", "vllm")
    assert "mtproxy_request_duration_seconds" not in generate_latest(registry).decode()  # apart
    both = CollectorRegistry()  # what prometheus_client would write with the families registered
    both.register(registry)
    both.register(metrics.lean)
    reference = (generate_openmetrics if openmetrics else generate_latest)(both).decode()
    page = render(registry, metrics.lean, openmetrics).decode()
    assert "process_cpu_seconds_total" in page and "mtproxy_request_duration_seconds_bucket" in page
    assert "mtproxy_spec_decode_draft_tokens" in page  # no series yet: HELP and TYPE only

    def lines(text: str) -> list[str]:  # the process' own figures move between the two renders
        return sorted(line for line in text.splitlines() if not line.startswith("process_"))

    assert lines(page) == lines(reference)
    assert page.endswith("# EOF\n") == openmetrics and page.count("# EOF") == openmetrics
