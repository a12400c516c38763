"""The same speculation figures whatever the runtime, and reasoning kept apart from the answer:
fake runtimes (bench/fake_runtime.py, or replaying tests/data transcripts) reporting each
runtime's own fields, and what /metrics exports for them."""

from __future__ import annotations

import json

import pytest

from mtproxy.runtimes.base import accepted_by_position, accepted_by_position_of_steps
from mtproxy.stream.anthropic import AnthropicSSEDecoder
from mtproxy.stream.events import Report
from mtproxy.stream.native import NativeDecoder
from mtproxy.stream.tap import SSEDecoder, observe_all

from .conftest import make_config
from .promtext import scrape, value
from .transcripts import replay

CHAT = {"messages": [{"role": "user", "content": "x"}]}
SPEC = ("mtproxy_spec_decode_acceptance_rate", "mtproxy_spec_decode_acceptance_length",
        "mtproxy_spec_decode_draft_rounds_total", "mtproxy_spec_decode_accepted_by_position_total")


async def ask(http, proxy, model: str, stream: bool) -> None:
    async with http.post(proxy.url + "/v1/chat/completions", json={"model": model, "stream": stream, **CHAT}) as resp:
        assert resp.status == 200
        await resp.read()


async def samples(http, proxy) -> tuple[dict, str]:
    async with http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    return scrape(text), text


def test_acceptance_by_position_from_a_histogram_and_from_steps():
    # vLLM's transcript: 4 steps accepting 0, 1, 2, 2 of 3 drafts (histogram [1, 1, 2, 0])
    assert accepted_by_position([1, 1, 2, 0]) == [3, 2, 0]
    assert accepted_by_position_of_steps([0, 1, 2, 2]) == [3, 2]
    assert accepted_by_position([5]) == []  # no drafts accepted at all
    assert accepted_by_position([1, -1]) is None and accepted_by_position("x") is None
    assert accepted_by_position([1, True]) is None


@pytest.mark.parametrize("stream", [True, False])
async def test_vllm_transcript_figures(proxy_factory, http, stream):
    """vLLM's per-request SpeculativeDecodingMetrics (tests/data/vllm/chat_spec.json and the
    usage chunk of chat_stream_usage_spec.sse): 12 drafted, 5 accepted in 4 steps, histogram
    [1, 1, 2, 0], mean acceptance length 2.25."""
    rt = await replay("vllm", variant="_spec").start()
    try:
        proxy = await proxy_factory(make_config([{"name": "v", "runtime": "vllm", "url": rt.url}]))
        model = rt.meta["model"]
        await ask(http, proxy, model, stream)
        s, _ = await samples(http, proxy)
    finally:
        await rt.stop()
    labels = {"backend": "v", "stream": "true" if stream else "false"}
    assert value(s, "mtproxy_spec_decode_draft_tokens_total", **labels) == 12
    assert value(s, "mtproxy_spec_decode_accepted_tokens_total", **labels) == 5
    assert value(s, "mtproxy_spec_decode_draft_rounds_total", **labels) == 4
    assert value(s, "mtproxy_spec_decode_acceptance_rate_count", **labels) == 1
    assert value(s, "mtproxy_spec_decode_acceptance_rate_sum", **labels) == pytest.approx(5 / 12, rel=1e-12)
    assert value(s, "mtproxy_spec_decode_acceptance_length_sum", **labels) == 2.25
    by_position = {p: value(s, "mtproxy_spec_decode_accepted_by_position_total", position=p, **labels)
                   for p in ("0", "1", "2", "3")}
    assert by_position == {"0": 3, "1": 2, "2": 0, "3": None}


async def test_every_runtime_under_the_same_names(runtime_factory, proxy_factory, http):
    """One fake per runtime, each reporting the figures in its own fields; /metrics shows them
    under the same names, with the exact values."""
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    hist = [2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 3]  # 7 steps: 2 accepting 0 drafts, 1 one, 1 three, 3 ten
    runtimes = {
        "vllm": {"metrics": {"speculative_decoding": {
            "num_draft_tokens": 70, "num_accepted_draft_tokens": 34, "num_spec_steps": 7,
            "mean_acceptance_length": 1 + 34 / 7, "draft_acceptance_rate": 34 / 70,
            "acceptance_histogram": hist, "num_spec_tokens": 10}}},
        "sglang": {"usage": {**usage, "reasoning_tokens": 2}, "meta_info": {
            "spec_verify_ct": 7, "spec_num_correct_drafts": 34, "spec_num_proposed_drafts": 70,
            "spec_accept_length": 4 / 7, "spec_acceptance_histogram": hist}},
        "llamacpp": {"timings": {"prompt_n": 5, "predicted_n": 4, "draft_n": 70, "draft_n_accepted": 34}},
    }
    backends = []
    for name, extra in runtimes.items():
        rt = await runtime_factory(name, models=[f"m-{name}"], extra=extra)
        backends.append({"name": name, "runtime": name, "url": rt.url})
    proxy = await proxy_factory(make_config(backends))
    for name in runtimes:
        for stream in (True, False):
            await ask(http, proxy, f"m-{name}", stream)
    s, text = await samples(http, proxy)
    for name in runtimes:
        labels = {"backend": name}
        assert value(s, "mtproxy_spec_decode_draft_tokens_total", **labels, stream="true") == 70, name
        assert value(s, "mtproxy_spec_decode_accepted_tokens_total", **labels, stream="false") == 34, name
        for stream in ("true", "false"):
            assert value(s, "mtproxy_spec_decode_acceptance_rate_sum", **labels, stream=stream) == \
                pytest.approx(34 / 70, rel=1e-12), name
        rounds = value(s, "mtproxy_spec_decode_draft_rounds_total", **labels, stream="true")
        position = {p: value(s, "mtproxy_spec_decode_accepted_by_position_total", position=p, **labels,
                             stream="true") for p in ("0", "1", "2", "3", "7", "8+")}
        if name == "llamacpp":  # per request it reports drafted and accepted, nothing more
            assert rounds is None and set(position.values()) == {None}
            assert value(s, "mtproxy_spec_decode_acceptance_length_count", **labels, stream="true") is None
            continue
        assert rounds == 7, name
        # positions 0..7 and the rest: 5 steps accepted at least one, 4 at least 2 and 3, ...
        assert position == {"0": 5, "1": 4, "2": 4, "3": 3, "7": 3, "8+": 6}, (name, position)
    length = {name: value(s, "mtproxy_spec_decode_acceptance_length_sum", backend=name, stream="true")
              for name in ("vllm", "sglang")}
    assert length == {"vllm": pytest.approx(1 + 34 / 7, rel=1e-12), "sglang": pytest.approx(4 / 7, rel=1e-12)}
    assert value(s, "mtproxy_reasoning_tokens_total", backend="sglang", stream="true") == 2
    assert 'position="9"' not in text  # bounded: 0..7 and 8+


async def test_a_runtime_that_reports_no_speculation_exports_none(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("o", models=["m"])
    proxy = await proxy_factory(make_config([{"name": "o", "runtime": "vllm", "url": rt.url}]))
    await ask(http, proxy, "m", True)
    _, text = await samples(http, proxy)
    for name in SPEC + ("mtproxy_reasoning_tokens_total",):
        assert f"\n{name}" not in text.replace("# HELP", "").replace("# TYPE", ""), name


async def test_trtllm_tokens_per_iteration_is_its_acceptance_length(proxy_factory, http):
    rt = await replay("trtllm", variant="_mtp").start()
    try:
        proxy = await proxy_factory(make_config([{"name": "t", "runtime": "trtllm", "url": rt.url}]))
        await ask(http, proxy, rt.meta["model"], True)
        await ask(http, proxy, rt.meta["model"], False)
        s, _ = await samples(http, proxy)
    finally:
        await rt.stop()
    for stream in ("true", "false"):  # the last (cumulative) figure of the stream, the body's
        assert value(s, "mtproxy_spec_decode_acceptance_length_sum", backend="t", stream=stream) == 2.25
        assert value(s, "mtproxy_spec_decode_draft_rounds_total", backend="t", stream=stream) is None


# --- reasoning ----------------------------------------------------------------------------------

TOKENS = [f"t{i} " for i in range(20)]
REASONING = 8  # the first 8 chunks are reasoning
RATE = 20.0  # chunks per second: the answer starts 8 / 20 = 0.4 s after the reasoning


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_then_answer(runtime_factory, proxy_factory, http, field):
    details = {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS),
               "completion_tokens_details": {"reasoning_tokens": REASONING}}
    rt = await runtime_factory("r", models=["m"], tokens=TOKENS, rate=RATE, reasoning=REASONING,
                               reasoning_field=field, extra={"usage": details})
    proxy = await proxy_factory(make_config([{"name": "r", "runtime": "vllm", "url": rt.url}]))
    await ask(http, proxy, "m", True)
    s, _ = await samples(http, proxy)
    labels = {"backend": "r", "stream": "true"}
    ttft = value(s, "mtproxy_time_to_first_token_seconds_sum", **labels)
    visible = value(s, "mtproxy_time_to_first_visible_token_seconds_sum", **labels)
    # the truth: when the runtime wrote its first chunk and its first answer chunk
    true_gap = rt.write_times[REASONING] - rt.write_times[0]
    assert true_gap == pytest.approx(REASONING / RATE, rel=0.2)
    assert ttft < visible
    assert visible - ttft == pytest.approx(true_gap, rel=0.05, abs=0.01)
    assert value(s, "mtproxy_reasoning_tokens_total", **labels) == REASONING
    assert value(s, "mtproxy_completion_tokens_total", **labels) == len(TOKENS)


async def test_without_reasoning_the_first_visible_token_is_the_first_token(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("p", models=["m"], tokens=TOKENS, rate=RATE)
    proxy = await proxy_factory(make_config([{"name": "p", "runtime": "vllm", "url": rt.url}]))
    await ask(http, proxy, "m", True)
    s, _ = await samples(http, proxy)
    labels = {"backend": "p", "stream": "true"}
    assert value(s, "mtproxy_time_to_first_visible_token_seconds_sum", **labels) == \
        value(s, "mtproxy_time_to_first_token_seconds_sum", **labels)


def _chunk(field: str, text: str, spaced: bool = False) -> bytes:
    sep = ": " if spaced else ":"
    return (f'data: {{"id"{sep}"c"{sep[1:]},"choices"{sep}[{{"index"{sep}0,"delta"{sep}{{"{field}"{sep}"{text}"}}}}]}}'
            "\n\n").encode()


@pytest.mark.parametrize("spaced", [False, True])
def test_decoder_marks_reasoning_until_the_answer(spaced):
    """Read by read as a paced stream comes (the learnt template's path included), and in one
    read with both: a read of reasoning alone is hidden, the first with answer content is not."""
    decoder = SSEDecoder(observe_all(()), Report())
    assert decoder.feed(_chunk("content", "", spaced)).content == 0  # a role chunk's empty content
    hidden = [decoder.feed(_chunk("reasoning_content", f"r{i}", spaced)) for i in range(5)]
    assert [(b.content, b.hidden) for b in hidden] == [(1, True)] * 5
    answer = [decoder.feed(_chunk("content", f"a{i}", spaced)) for i in range(3)]
    assert [(b.content, b.hidden) for b in answer] == [(1, False)] * 3
    both = SSEDecoder(observe_all(()), Report()).feed(_chunk("reasoning", "r", spaced) + _chunk("content", "a", spaced))
    assert (both.content, both.hidden) == (2, False)
    tool = SSEDecoder(observe_all(()), Report()).feed(
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}\n\n')
    assert (tool.content, tool.hidden) == (1, False)


def _typed(kind: str, obj: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **obj}).encode() + b"\n\n"


def test_anthropic_and_responses_taps_mark_thinking_until_the_answer():
    """The other EventTap formats: Anthropic ``thinking_delta`` and Responses
    ``reasoning_text.delta`` reads are hidden; the first text delta is not, nor what follows."""
    def delta(kind: str, field: str, text: str) -> bytes:
        return _typed("content_block_delta", {"index": 0, "delta": {"type": kind, field: text}})

    anthropic = AnthropicSSEDecoder(observe_all(()), Report())
    reads = [delta("thinking_delta", "thinking", "hm"), delta("thinking_delta", "thinking", "so"),
             delta("text_delta", "text", "Hi"), delta("thinking_delta", "thinking", "late")]
    assert [(b.content, b.hidden) for b in map(anthropic.feed, reads)] == [(1, True), (1, True), (1, False), (1, False)]
    assert AnthropicSSEDecoder(observe_all(()), Report()).feed(reads[0] + reads[2]).hidden is False

    responses = NativeDecoder("responses", observe_all(()), Report())
    reads = [_typed("response.reasoning_text.delta", {"delta": "hm"}),
             _typed("response.output_text.delta", {"delta": "Hi"}),
             _typed("response.reasoning_text.delta", {"delta": "late"})]
    assert [(b.content, b.hidden) for b in map(responses.feed, reads)] == [(1, True), (1, False), (1, False)]
