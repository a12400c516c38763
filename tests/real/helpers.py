"""Small helpers shared by the real-runtime tests: proxies in front of real servers, /metrics."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai

from ..conftest import Proxy, make_config
from ..promtext import scrape, value  # noqa: F401  (re-exported for the real-runtime tests)

# A prompt the model does not finish before max_tokens: every answer ends with finish_reason
# "length", so completion_tokens is known exactly in advance.
STORY = "Write a long story about a dragon who learns to bake bread. Describe every step in detail."
MAX_TOKENS = 16


def backend(name: str, runtime: str, url: str, **extra: Any) -> dict[str, Any]:
    """A backend entry without `models`: the proxy discovers them from the runtime."""
    return {"name": name, "runtime": runtime, "url": url, **extra}


async def start_proxy(proxy_factory, *backends: dict[str, Any], **extra: Any) -> Proxy:
    # By default only the probe at start-up: a health probe of llama-cpp-python (GET /v1/models)
    # while it generates interrupts or stalls the request (see test_llama_cpp_python_quirks.py).
    # Tests that want probes running alongside requests pass `health`. Generous probe timeout:
    # the servers share two busy cores with the tests.
    # mtp_interval too: each MTP probe of a llama-server reads the model's GGUF on the event loop
    # (see test_mtp_probe_does_not_stall_the_proxy); the one at start-up cannot be avoided.
    extra.setdefault("health", {"interval": 3600, "timeout": 60, "mtp_interval": 3600})
    return await proxy_factory(make_config(list(backends), **extra))


def client(proxy: Proxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def labels_of(samples: dict, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


async def metrics(proxy: Proxy) -> dict:
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200
        return scrape(await resp.text())


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
