"""A real llama-server's own /metrics (it runs with --metrics) on the proxy's /metrics, with
metrics.runtime_metrics: its llamacpp:* families labelled backend and runtime, the figures those
of a direct read of the server."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MODEL, RealServer
from .helpers import MAX_TOKENS, STORY, backend, client, start_proxy, value
from .helpers import scrape as scrape_text


async def page(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_llama_server_metrics_on_the_proxy(llama_server: RealServer, proxy_factory):
    proxy = await start_proxy(proxy_factory, backend("ls", "llamacpp", llama_server.url),
                              metrics={"runtime_metrics": True})
    answer = await client(proxy).completions.create(model=MODEL, prompt=STORY, max_tokens=MAX_TOKENS,
                                                    temperature=0)
    assert answer.usage.completion_tokens == MAX_TOKENS
    # no request in between: the proxy's read and a direct one see the same counters
    ours = await page(proxy.url)
    direct = scrape_text(await page(llama_server.url))
    families = {f.name: f for f in text_string_to_metric_families(ours)}  # the whole page is valid
    llamacpp = {name for name in families if name.startswith("llamacpp:")}
    assert {"llamacpp:tokens_predicted", "llamacpp:prompt_tokens", "llamacpp:requests_processing"} <= llamacpp
    for name in llamacpp:
        for s in families[name].samples:
            assert s.labels["backend"] == "ls" and s.labels["runtime"] == "llamacpp", s
    samples = scrape_text(ours)
    predicted = value(samples, "llamacpp:tokens_predicted_total", backend="ls", runtime="llamacpp")
    assert predicted is not None and predicted >= MAX_TOKENS
    assert predicted == value(direct, "llamacpp:tokens_predicted_total")
    assert value(samples, "llamacpp:prompt_tokens_total", backend="ls") == value(direct, "llamacpp:prompt_tokens_total")
    assert value(samples, "mtproxy_runtime_metrics_up", backend="ls", runtime="llamacpp") == 1.0
