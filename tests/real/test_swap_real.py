"""Swapping real runtimes: three managed llama-servers, each SmolLM2 under its own name, in a group
that lets one run at a time, asked for at random by concurrent clients (issue 21)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from ..test_launcher import free_port
from ..test_swap import Watch
from .conftest import LLAMA_SERVER_THREADS, OMP_ENV
from .helpers import MAX_TOKENS, STORY, client, get_json, metrics, start_proxy, value


async def test_three_llama_servers_in_a_group_of_one(proxy_factory, llama_server_bin: Path, gguf: Path):
    names = ["smol-a", "smol-b", "smol-c"]
    ports = {name: free_port() for name in names}
    backends = [{
        "name": name, "runtime": "llamacpp", "url": f"http://127.0.0.1:{ports[name]}", "models": [name],
        "launch": [str(llama_server_bin), "--host", "127.0.0.1", "--port", str(ports[name]), "-m", str(gguf),
                   "--alias", name, "-c", "2048", "-t", LLAMA_SERVER_THREADS],
        "env": OMP_ENV, "ready_timeout": 180, "group": "cpu"} for name in names]
    proxy = await start_proxy(proxy_factory, *backends, groups={"cpu": {
        "max_running": 1, "min_run": 1, "drain_timeout": 300, "queue_timeout": 600}})
    rng = random.Random(2126)
    results: list[tuple[str, str | None, int | None, str]] = []
    c = client(proxy)

    async def one_client() -> None:
        for _ in range(3):
            model = rng.choice(names)
            stream = await c.chat.completions.create(
                model=model, messages=[{"role": "user", "content": STORY}], max_tokens=MAX_TOKENS, temperature=0,
                stream=True, stream_options={"include_usage": True})
            text, finish, usage = "", None, None
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
            results.append((model, finish, usage, text))

    with Watch(set(ports.values()), str(llama_server_bin)) as watch:
        await asyncio.gather(*(one_client() for _ in range(5)))
    assert len(results) == 15
    for model, finish, usage, text in results:  # none cut off mid-stream: each ran to max_tokens
        assert finish == "length" and usage == MAX_TOKENS and text, (model, finish, usage, text)
    assert watch.samples > 20 and watch.most == 1  # one llama-server at a time, by the process list
    status = await get_json(proxy.url + "/mtproxy/backends")
    swaps = status["groups"]["cpu"]["swaps"]
    used = {model for model, *_ in results}
    assert len(used) - 1 <= swaps < len(results)  # batched: one swap serves every queued request
    samples = await metrics(proxy)
    assert value(samples, "mtproxy_group_swaps_total", group="cpu") == swaps
    assert value(samples, "mtproxy_backend_stops_total", reason="swap") == swaps
    for name in names:
        managed = next(b["managed"] for b in status["backends"] if b["name"] == name)
        if name in used:
            assert managed["last_start_seconds"] > 0
