"""The runtimes' own metrics on mtproxy's /metrics (metrics.runtime_metrics, metrics/scrape.py),
against fake runtimes serving their /metrics as real aiohttp servers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from .conftest import make_config
from .promtext import scrape, value

# the shape of vLLM's page (vllm/v1/metrics/loggers.py through prometheus_client), two engines'
# worth of families; `backend` is a label of the runtime's own here, to be kept as exported_backend
VLLM_A = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 8123.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 41.5
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m1"} 3.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m1"} 1234.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="m1"} 1.7e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.5",model_name="m1"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m1"} 5.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m1"} 5.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m1"} 7.25
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{backend="FLASH_ATTN",block_size="16"} 1.0
"""
VLLM_B = (VLLM_A.replace("1234.0", "99.0").replace("41.5", "2.5")
          .replace('model_name="m1"} 3.0', 'model_name="m1"} 1.0').replace('model_name="m1"', 'model_name="m2"'))

# trtllm-serve's GET /metrics (tensorrt_llm/serve/openai_server.py get_iteration_stats): the
# fields its own test asserts (tests/unittest/llmapi/apps/_test_openai_metrics.py), values as
# the PyTorch backend reports them, and specDecodingStats as with MTP
TRTLLM_STATS = [
    {"cpuMemUsage": 0, "gpuMemUsage": 56401920000, "iter": 6, "iterLatencyMS": 18.2, "maxBatchSizeRuntime": 8,
     "maxBatchSizeStatic": 8, "maxBatchSizeTunerRecommended": 0, "maxNumActiveRequests": 8,
     "maxNumTokensRuntime": 8192, "maxNumTokensStatic": 8192, "maxNumTokensTunerRecommended": 0,
     "newActiveRequestsQueueLatencyMS": 0.0007, "numActiveRequests": 1, "numCompletedRequests": 0,
     "numNewActiveRequests": 0, "numQueuedRequests": 0, "pinnedMemUsage": 0, "staticBatchingStats": None,
     "timestamp": "11-29-2026 10:00:00",
     "inflightBatchingStats": {"avgNumDecodedTokensPerIter": 0.0, "microBatchId": 0, "numContextRequests": 0,
                               "numCtxTokens": 0, "numGenRequests": 1, "numPausedRequests": 0,
                               "numScheduledRequests": 1},
     "kvCacheStats": {"allocNewBlocks": 0, "allocTotalBlocks": 3, "cacheHitRate": 0.0, "freeNumBlocks": 1021,
                      "maxNumBlocks": 1024, "missedBlocks": 3, "reusedBlocks": 0, "tokensPerBlock": 32,
                      "usedNumBlocks": 3},
     "specDecodingStats": {"acceptanceLength": 2.5, "draftOverhead": 0.1, "iterLatencyMS": 18.2,
                           "numAcceptedTokens": 3, "numDraftTokens": 4, "numRequestsWithDraftTokens": 2}},
]
TRTLLM_STATS = [{**TRTLLM_STATS[0], "iter": 5, "numActiveRequests": 2}, *TRTLLM_STATS]


def families_of(text: str) -> dict[str, Any]:
    """Every family of a page, by name; fails on a malformed page or a family given twice."""
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} twice on the page"
        out[family.name] = family
    return out


def runtime_config(backends: list[dict[str, Any]], **metrics: Any):
    return make_config(backends, metrics={"runtime_metrics": True, **metrics})


async def page(http, proxy, accept: str | None = None) -> str:
    headers = {"Accept": accept} if accept else {}
    async with http.get(proxy.url + "/metrics", headers=headers) as resp:
        assert resp.status == 200
        return await resp.text()


def counted(text: str) -> tuple[dict[str, int], Any]:
    """A /metrics route serving ``text`` that counts the reads mtproxy's scraper makes (which
    ask for the text format: the MTP probe of a vLLM backend reads /metrics too)."""
    hits = {"scrapes": 0}

    async def route(request: web.Request) -> web.Response:
        if request.headers.get("Accept", "").startswith("text/plain"):
            hits["scrapes"] += 1
        return web.Response(text=text)

    return hits, route


async def test_two_vllm_pages_merge_into_one_family_each(runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", routes={"/metrics": VLLM_A})
    b = await runtime_factory("b", models=["m2"], routes={"/metrics": VLLM_B})
    proxy = await proxy_factory(runtime_config([
        {"name": "va", "runtime": "vllm", "url": a.url, "models": ["m1"]},
        {"name": "vb", "runtime": "vllm", "url": b.url, "models": ["m2"]}]))
    text = await page(http, proxy)
    families = families_of(text)  # valid, and no family twice
    samples = scrape(text)
    assert text.count("# TYPE vllm:generation_tokens_total counter") == 1
    gen = families["vllm:generation_tokens"]
    assert {(s.labels["backend"], s.labels["runtime"], s.labels["model_name"], s.value) for s in gen.samples} == {
        ("va", "vllm", "m1", 1234.0), ("vb", "vllm", "m2", 99.0)}
    assert value(samples, "vllm:num_requests_running", backend="va", engine="0") == 3.0
    assert value(samples, "vllm:num_requests_running", backend="vb") == 1.0
    assert value(samples, "vllm:e2e_request_latency_seconds_bucket", backend="vb", le="0.5") == 2.0
    assert value(samples, "vllm:e2e_request_latency_seconds_sum", backend="va") == 7.25
    assert value(samples, "python_gc_objects_collected_total", backend="vb", generation="0") == 8123.0
    # the runtime's own `backend` label, kept as Prometheus keeps a target's clashing label
    info = [s for s in families["vllm:cache_config_info"].samples if s.labels["backend"] == "va"]
    assert info[0].labels["exported_backend"] == "FLASH_ATTN" and info[0].labels["runtime"] == "vllm"
    # a Python runtime's process_* join the proxy's own family, beside its series
    cpu = families["process_cpu_seconds"].samples
    assert {s.labels.get("backend"): s.value for s in cpu if "backend" in s.labels} == {"va": 41.5, "vb": 2.5}
    assert any("backend" not in s.labels for s in cpu)  # the proxy's own process
    assert value(samples, "mtproxy_runtime_metrics_up", backend="va", runtime="vllm") == 1.0
    # OpenMetrics, as Prometheus asks for it first, is valid too
    om = await page(http, proxy, "application/openmetrics-text; version=1.0.0")
    om_families = {f.name: f for f in parse_openmetrics(om)}
    assert {s.labels["backend"] for s in om_families["vllm:generation_tokens"].samples} == {"va", "vb"}


async def test_a_malformed_page_is_left_out_and_counted(runtime_factory, proxy_factory, http):
    good = await runtime_factory("good", routes={"/metrics": VLLM_A})
    bad = await runtime_factory("bad", routes={"/metrics": "vllm:num_requests_running{engine=\"0\" 3\n"})
    twice = await runtime_factory("twice", routes={"/metrics": "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n"})
    proxy = await proxy_factory(runtime_config([
        {"name": "good", "runtime": "vllm", "url": good.url, "models": ["m1"]},
        {"name": "bad", "runtime": "sglang", "url": bad.url, "models": ["m1"]},
        {"name": "twice", "runtime": "llamacpp", "url": twice.url, "models": ["m1"]}]))
    text = await page(http, proxy)
    families_of(text)
    samples = scrape(text)
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="bad", reason="malformed") == 1.0
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="twice", reason="malformed") == 1.0
    assert value(samples, "mtproxy_runtime_metrics_up", backend="bad") == 0.0
    assert value(samples, "vllm:num_requests_running", backend="bad") is None
    assert value(samples, "x", backend="twice") is None
    assert value(samples, "vllm:num_requests_running", backend="good") == 3.0
    assert value(samples, "mtproxy_requests_in_flight", backend="good") == 0.0  # the proxy's own, intact


async def test_name_clashes_are_left_out(runtime_factory, proxy_factory, http):
    first = await runtime_factory("first", routes={"/metrics": "# TYPE shared gauge\nshared 1\n# TYPE own gauge\nown 1\n"})
    clash = await runtime_factory("clash", routes={"/metrics": (
        "# TYPE mtproxy_requests_total counter\nmtproxy_requests_total 7\n"  # named like mtproxy's own
        "# TYPE shared_total counter\nshared_total 2\n"  # another type than first's `shared`
        "# TYPE process_cpu_seconds_total gauge\nprocess_cpu_seconds_total 3\n"  # another type than the proxy's
        "# TYPE kept gauge\nkept 5\n")})
    proxy = await proxy_factory(runtime_config([
        {"name": "first", "runtime": "vllm", "url": first.url, "models": ["m1"]},
        {"name": "clash", "runtime": "vllm", "url": clash.url, "models": ["m1"]}]))
    text = await page(http, proxy)
    families = families_of(text)
    samples = scrape(text)
    assert families["shared"].type == "gauge" and value(samples, "shared", backend="first") == 1.0
    assert value(samples, "shared_total", backend="clash") is None
    assert value(samples, "mtproxy_requests_total", backend="clash") is None
    assert value(samples, "process_cpu_seconds_total", backend="clash") is None
    assert value(samples, "kept", backend="clash") == 5.0
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="clash", reason="clash") == 1.0


async def test_a_hanging_backend_is_cut_at_the_timeout(runtime_factory, proxy_factory, http):
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="# TYPE late gauge\nlate 1\n")

    fast = await runtime_factory("fast", routes={"/metrics": VLLM_A})
    slow = await runtime_factory("slow", routes={"/metrics": hang})
    proxy = await proxy_factory(runtime_config([
        {"name": "fast", "runtime": "vllm", "url": fast.url, "models": ["m1"]},
        {"name": "slow", "runtime": "sglang", "url": slow.url, "models": ["m1"]}],
        runtime_metrics_timeout=0.3))
    try:
        text = await page(http, proxy)
    finally:
        release.set()
    families_of(text)
    samples = scrape(text)
    assert value(samples, "late", backend="slow") is None
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="slow", reason="timeout") == 1.0
    assert value(samples, "mtproxy_runtime_metrics_up", backend="slow", runtime="sglang") == 0.0
    assert value(samples, "vllm:generation_tokens_total", backend="fast") == 1234.0


async def test_reads_are_cached(runtime_factory, proxy_factory, http):
    hits, route = counted(VLLM_A)
    rt = await runtime_factory("a", routes={"/metrics": route})
    proxy = await proxy_factory(runtime_config([{"name": "a", "runtime": "vllm", "url": rt.url, "models": ["m1"]}],
                                               runtime_metrics_cache_seconds=600))
    texts = await asyncio.gather(*(page(http, proxy) for _ in range(3)))  # at once: one read shared
    texts += [await page(http, proxy) for _ in range(5)]
    assert hits["scrapes"] == 1
    assert all(value(scrape(t), "vllm:generation_tokens_total", backend="a") == 1234.0 for t in texts)
    # no cache: a read per scrape
    proxy2 = await proxy_factory(runtime_config([{"name": "a", "runtime": "vllm", "url": rt.url, "models": ["m1"]}],
                                                runtime_metrics_cache_seconds=0))
    for _ in range(3):
        await page(http, proxy2)
    assert hits["scrapes"] == 4


async def test_trtllm_iteration_stats_become_gauges(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("trt", routes={"/metrics": TRTLLM_STATS})
    proxy = await proxy_factory(runtime_config([{"name": "trt", "runtime": "trtllm", "url": rt.url,
                                                 "models": ["m1"]}]))
    text = await page(http, proxy)
    families = families_of(text)
    samples = scrape(text)

    def gauge(name: str) -> float | None:
        assert families[name].type == "gauge"
        return value(samples, name, backend="trt", runtime="trtllm")

    assert gauge("trtllm_iterations_read") == 2.0
    assert gauge("trtllm_iteration_iter") == 6.0  # the latest iteration's
    assert gauge("trtllm_iteration_num_active_requests") == 1.0
    assert gauge("trtllm_iteration_iter_latency_ms") == 18.2
    assert gauge("trtllm_iteration_gpu_mem_usage") == 56401920000.0
    assert gauge("trtllm_iteration_kv_cache_stats_free_num_blocks") == 1021.0
    assert gauge("trtllm_iteration_inflight_batching_stats_num_gen_requests") == 1.0
    assert gauge("trtllm_iteration_spec_decoding_stats_num_draft_tokens") == 4.0
    assert gauge("trtllm_iteration_spec_decoding_stats_acceptance_length") == 2.5
    assert not any(name.startswith("trtllm_iteration_timestamp") for name in families)


async def test_trtllm_json_that_is_not_a_list_is_malformed(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("trt", routes={"/metrics": {"detail": "Not Found"}})
    proxy = await proxy_factory(runtime_config([{"name": "trt", "runtime": "trtllm", "url": rt.url,
                                                 "models": ["m1"]}]))
    samples = scrape(await page(http, proxy))
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="trt", reason="malformed") == 1.0


async def test_ollama_has_no_metrics_to_read(runtime_factory, proxy_factory, http):
    hits, route = counted("# TYPE ollama_thing gauge\nollama_thing 1\n")
    rt = await runtime_factory("o", flavour="ollama", version="0.12.0", routes={"/metrics": route})
    proxy = await proxy_factory(runtime_config([{"name": "o", "runtime": "ollama", "url": rt.url,
                                                 "models": ["m1"]}]))
    samples = scrape(await page(http, proxy))
    assert hits["scrapes"] == 0
    assert value(samples, "ollama_thing") is None
    assert value(samples, "mtproxy_runtime_metrics_up", backend="o") is None
    assert value(samples, "mtproxy_runtime_metrics_errors_total", backend="o") is None


async def test_off_by_default(runtime_factory, proxy_factory, http):
    hits, route = counted(VLLM_A)
    rt = await runtime_factory("a", routes={"/metrics": route})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url, "models": ["m1"]}]))
    samples = scrape(await page(http, proxy))
    assert hits["scrapes"] == 0
    assert value(samples, "vllm:generation_tokens_total") is None
    assert value(samples, "mtproxy_runtime_metrics_up") is None
