"""Tokens per decode step: exact from the runtime's accepted drafts where it reports them, else
timed from the arrival of the stream's reads, checked against real llama-server traces.

The proxy runs here on uvloop, the loop ``mtproxy serve`` runs on (its clock has 1 ms
resolution: the meter must not use it), with the fake runtime and the client in the same loop.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from bench.fake_runtime import Behaviour, FakeRuntime
from mtproxy.app import create_app
from mtproxy.metrics.meter import count_bursts
from mtproxy.server import start

from .conftest import Proxy, make_config
from .promtext import scrape, value

TRACES = json.loads((Path(__file__).parent / "data" / "llamacpp" / "read_times.json").read_text())["traces"]


def truth(trace: dict) -> int:
    """The runtime's decode steps: output tokens − accepted drafts (none without speculation)."""
    return trace["completion_tokens"] - (trace["draft_n_accepted"] or 0)


def steps_of(trace: dict) -> list[tuple[float, int]]:
    """The trace as a schedule of decode steps: (seconds after the first, chunks). Reads less
    than 2 ms apart are one step (within a step they are at most 0.62 ms apart in these traces,
    steps at least 5 ms)."""
    steps: list[list[float]] = []
    for t, n in trace["reads"]:
        if steps and t - steps[-1][2] < 2.0:
            steps[-1][1] += n
            steps[-1][2] = t
        else:
            steps.append([t, n, t])
    return [((t - steps[0][0]) / 1000, int(n)) for t, n, _ in steps]


# --- the rule, on the arrival times of real streams ------------------------------------------

@pytest.mark.parametrize("trace", TRACES, ids=[f"{t['speculation']}-{i}" for i, t in enumerate(TRACES)])
def test_steps_timed_on_real_llama_server_streams(trace):
    """22 streams of llama-server on a busy 2-core VM (SmolLM2-135M with and without n-gram
    speculation on the repeat-a-paragraph request, the tiny MTP model), each read timed with
    perf_counter. The runtime's own steps are exact: output tokens − accepted drafts."""
    counts = [n for _, n in trace["reads"]]
    bursts = count_bursts([t / 1000 for t, n in trace["reads"] for _ in range(n)])  # a time per chunk
    if counts[0] > 1:
        # the reader stalled before its first read (30 ms after the prompt ended in the one such
        # trace) and the steps that queued up meanwhile came in one read: they count as one
        assert bursts == truth(trace) - (counts[0] - 1)
    elif trace["speculation"] == "plain":
        # one token per step and per read but for a late read that brought two chunks, and no
        # content chunk for the last token (72 chunks for 73 tokens)
        assert len(counts) - 1 <= bursts <= len(counts)
        assert trace["completion_tokens"] / bursts == pytest.approx(1.0, rel=0.05)
    else:
        assert bursts == truth(trace)


def test_the_traces_hold_what_the_tests_rely_on():
    kinds = [t["speculation"] for t in TRACES]
    assert kinds.count("ngram-simple") == 10 and kinds.count("plain") == 6 and kinds.count("draft-mtp") == 6
    ngram = [t for t in TRACES if t["speculation"] == "ngram-simple"]
    assert all(truth(t) == 15 and t["completion_tokens"] == 73 for t in ngram)  # 73 − 58
    for t in ngram:  # one-token steps 10-35 ms apart, and long verification steps (0.26-0.53 s)
        if t["reads"][0][1] > 1:
            continue  # the late first read (above)
        starts = [at for at, _ in steps_of(t)]
        gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
        assert len(starts) == 15 and 0.005 < gaps[0] and gaps[-1] > 0.25


# --- through the proxy, on uvloop -------------------------------------------------------------

Scenario = Callable[[aiohttp.ClientSession, Proxy, FakeRuntime], Awaitable[None]]


def on_uvloop(runtime: str, scenario: Scenario, **behaviour: Any) -> None:
    """A fake runtime and mtproxy (backend ``a``, the given runtime adapter) on uvloop, then
    ``scenario(http, proxy, fake)``."""
    async def main() -> None:
        rt = await FakeRuntime("a", Behaviour(models=["m"], **behaviour)).start()
        app = create_app(make_config([{"name": "a", "runtime": runtime, "url": rt.url}]))
        runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=2)
        try:
            async with aiohttp.ClientSession() as http:
                await scenario(http, Proxy(app, runner, port), rt)
        finally:
            await runner.cleanup()
            await rt.stop()

    uvloop.run(main())


async def per_step(http: aiohttp.ClientSession, proxy: Proxy, stream: bool = True) -> tuple[float, float]:
    """(sum, count) of the exported tokens per step, from /metrics."""
    async with http.get(proxy.url + "/metrics") as resp:
        s = scrape(await resp.text())
    labels = {"backend": "a", "stream": "true" if stream else "false"}
    return (value(s, "mtproxy_tokens_per_step_sum", **labels) or 0.0,
            value(s, "mtproxy_tokens_per_step_count", **labels) or 0.0)


async def chat(http: aiohttp.ClientSession, proxy: Proxy, stream: bool = True) -> bytes:
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "m", "stream": stream, "messages": [{"role": "user", "content": "x"}]}) as resp:
        assert resp.status == 200
        return await resp.read()


# the ngram trace whose last step brought 10 chunks in one read 314 ms after the step before it,
# after 12 one-token steps ~12 ms apart and a 333 ms verification step (15 steps, 72 chunks)
LONG_STEPS = TRACES[2]


@pytest.mark.parametrize("coalesce", [True, False], ids=["step-per-write", "chunk-per-write"])
def test_a_real_speculative_trace_replayed_is_timed_right(coalesce):
    """A runtime that reports no drafts (runtime: openai): the steps come from the timing. Each
    step's chunks in one write, as a coalescing network hands them over (the issue's case: the
    old rule put its threshold above every one-token step and exported 24.3 tokens per step for
    4.87), or one write per chunk, as llama-server writes them."""
    schedule = steps_of(LONG_STEPS)
    assert len(schedule) == truth(LONG_STEPS) == 15
    chunks = sum(n for _, n in schedule)

    async def scenario(http, proxy, rt):
        await chat(http, proxy)
        total, count = await per_step(http, proxy)
        assert count == 1
        assert total == pytest.approx(chunks / 15, rel=0.1)

    on_uvloop("openai", scenario, tokens=[f"t{i} " for i in range(chunks)], steps=schedule, coalesce=coalesce)


@pytest.mark.parametrize("runtime, extra", [
    ("llamacpp", {"timings": {"predicted_n": 72, "draft_n": 85, "draft_n_accepted": 57}}),
    ("vllm", {"metrics": {"speculative_decoding": {"num_draft_tokens": 85, "num_accepted_draft_tokens": 57,
                                                   "mean_acceptance_length": 1.67}}}),
], ids=["llamacpp-timings", "vllm-metrics"])
def test_tokens_per_step_is_exact_from_the_runtimes_drafts(runtime, extra):
    """72 tokens, 57 accepted drafts: 15 steps, whatever the timing (here all 72 chunks in one
    read, which timing alone calls one step), streamed or not."""
    async def scenario(http, proxy, rt):
        await chat(http, proxy)
        assert await per_step(http, proxy) == (pytest.approx(72 / 15), 1)
        await chat(http, proxy, stream=False)
        assert await per_step(http, proxy, stream=False) == (pytest.approx(72 / 15), 1)

    on_uvloop(runtime, scenario, tokens=[f"t{i} " for i in range(72)], extra=extra)


def test_the_runtimes_own_tokens_per_iteration_is_taken_as_it_is():
    """TensorRT-LLM reports tokens per decode iteration itself (avg_decoded_tokens_per_iter)."""
    async def scenario(http, proxy, rt):
        await chat(http, proxy, stream=False)
        assert await per_step(http, proxy, stream=False) == (pytest.approx(2.5), 1)

    on_uvloop("trtllm", scenario, tokens=[f"t{i} " for i in range(12)],
              extra={"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"},
                                  "finish_reason": "stop", "avg_decoded_tokens_per_iter": 2.5}]})
