"""Adapters on their own: what each extracts from its runtime's real-format transcripts, and how
it prepares requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from mtproxy.runtimes import ADAPTERS, Report, runtime_for
from mtproxy.stream.events import DONE
from mtproxy.wire import CHAT, COMPLETIONS, from_payload, parse_request

from .transcripts import DATA, RUNTIMES, meta, replay


def decode_batches(runtime: str, name: str, kind=CHAT, read_size: int = 7, parse_all: bool = True):
    """Feed a transcript to the adapter in small, arbitrary reads, as TCP may deliver it."""
    adapter = runtime_for(runtime)
    req = from_payload({"model": "m", "stream": True}, kind)
    report = Report()
    decoder = adapter.stream_decoder(req, report, parse_all=parse_all)
    raw = (DATA / runtime / name).read_bytes()
    batches = [decoder.feed(raw[i:i + read_size]) for i in range(0, len(raw), read_size)]
    batches.append(decoder.flush())
    return report, [b for b in batches if b is not None]


def decode_stream(runtime: str, name: str, kind=CHAT, read_size: int = 7) -> tuple[Report, list]:
    report, batches = decode_batches(runtime, name, kind, read_size)
    return report, [event for b in batches for event in b.events]


# the OpenAI-format streams of each runtime's transcripts (tests/data/<runtime>/; other folders
# hold client formats' golden streams, and files named for another API are that API's)
SSE_TRANSCRIPTS = sorted((p.parent.name, p.name) for p in DATA.glob("*/*.sse")
                         if p.parent.name in ADAPTERS and not p.name.startswith(("messages", "responses", "llamacpp_")))


@pytest.mark.parametrize("runtime, name", SSE_TRANSCRIPTS)
@pytest.mark.parametrize("read_size", [7, 200, 1 << 20])
def test_fast_path_relays_the_same_bytes_and_counts_the_same_content(runtime, name, read_size):
    """Without parsing plain content chunks, the relay sends the same bytes, reads the same
    report and counts the same content chunks as parsing every event does."""
    kind = COMPLETIONS if name.startswith("completions") else CHAT
    full_report, full = decode_batches(runtime, name, kind, read_size, parse_all=True)
    fast_report, fast = decode_batches(runtime, name, kind, read_size, parse_all=False)
    raw = (DATA / runtime / name).read_bytes().replace(b"\r\n", b"\n")
    assert b"".join(b.raw for b in fast) == raw
    assert sum(b.content for b in fast) == sum(b.content for b in full) > 0
    assert fast_report == full_report
    m = meta(runtime)
    if name.startswith("chat_stream") and "_spec" not in name and "_mtp" not in name and "content_chunks" in m:
        assert sum(b.content for b in fast) == m["content_chunks"]


def test_every_configurable_runtime_has_an_adapter():
    from mtproxy.config import RUNTIMES as CONFIG_RUNTIMES

    assert set(ADAPTERS) == set(CONFIG_RUNTIMES)


def test_llamacpp_timings_with_speculation():
    m = meta("llamacpp")
    report, events = decode_stream("llamacpp", "chat_stream_usage_spec.sse")
    assert events[-1][1] is DONE
    assert (report.draft_tokens, report.accepted_tokens) == (m["spec_draft"]["draft_n"],
                                                             m["spec_draft"]["draft_n_accepted"])
    assert report.completion_tokens == m["spec_usage"]["completion_tokens"]
    assert report.prompt_tokens == m["spec_usage"]["prompt_tokens"]
    assert report.decode_seconds and 0 < report.decode_seconds < 10
    # relayed byte for byte: the events' raw bytes are the transcript
    assert b"".join(raw for raw, _ in events) == (DATA / "llamacpp" / "chat_stream_usage_spec.sse").read_bytes()


def test_llamacpp_timings_ride_on_the_finish_chunk_without_usage():
    report, _ = decode_stream("llamacpp", "chat_stream_spec.sse")
    assert report.draft_tokens == meta("llamacpp")["spec_draft"]["draft_n"]
    assert report.completion_tokens == meta("llamacpp")["usage"]["completion_tokens"]


def test_llamacpp_plain_run_reports_no_drafts():
    report, _ = decode_stream("llamacpp", "chat_stream_usage.sse")
    assert report.draft_tokens is None and report.accepted_tokens is None


def test_ollama_ndjson_becomes_openai_chunks():
    m = meta("ollama")
    report, events = decode_stream("ollama", "api_chat.ndjson")
    assert all(raw is None for raw, _ in events)
    chunks = [obj for _, obj in events if obj is not DONE]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == m["text"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == m["usage"]
    assert events[-1][1] is DONE
    assert (report.prompt_tokens, report.completion_tokens) == (31, 26)
    final = orjson.loads((DATA / "ollama" / "api_chat.ndjson").read_bytes().splitlines()[-1])
    assert report.decode_seconds == final["eval_duration"] / 1e9


def test_ollama_generate_stream_becomes_text_completion_chunks():
    report, events = decode_stream("ollama", "api_generate.ndjson", kind=COMPLETIONS)
    text = "".join(obj["choices"][0]["text"] for _, obj in events if obj is not DONE and obj["choices"])
    assert text == meta("ollama")["text"]
    assert report.completion_tokens == meta("ollama")["usage"]["completion_tokens"]


def test_ollama_request_translation():
    req = from_payload({"model": "q", "stream": True, "max_tokens": 9, "temperature": 0.1, "stop": "END",
                        "response_format": {"type": "json_object"}, "options": {"draft_num_predict": 4},
                        "messages": [{"role": "user", "content": [
                            {"type": "text", "text": "what is this"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, CHAT)
    up = runtime_for("ollama").prepare(req)
    body = orjson.loads(up.body)
    assert up.path == "/api/chat"
    assert body["options"] == {"num_predict": 9, "temperature": 0.1, "stop": ["END"], "draft_num_predict": 4}
    assert body["format"] == "json"
    assert body["messages"] == [{"role": "user", "content": "what is this", "images": ["AAAA"]}]
    assert body["stream"] is True


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != "ollama"])
def test_openai_runtimes_ask_for_usage_and_drop_extensions(runtime):
    req = from_payload({"model": "m", "stream": True, "messages": [], "options": {"x": 1}}, CHAT)
    body = orjson.loads(runtime_for(runtime).prepare(req).body)
    assert body["stream_options"] == {"include_usage": True}
    assert "options" not in body
    plain = from_payload({"model": "m", "messages": []}, CHAT, raw=b'{"model":"m","messages":[]}')
    assert runtime_for(runtime).prepare(plain).body == b'{"model":"m","messages":[]}'  # untouched


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_probe_reads_health_version_and_models(runtime):
    import aiohttp
    from yarl import URL

    from mtproxy.runtimes import BackendHTTP

    rt = await replay(runtime).start()
    try:
        async with aiohttp.ClientSession() as session:
            probe = await runtime_for(runtime).probe(BackendHTTP(session, URL(rt.url), {}, 5), discover=True)
    finally:
        await rt.stop()
    assert probe.up, probe.detail
    assert rt.meta["model"] in probe.models
    assert probe.version == rt.meta.get("version")


def decode_body(runtime: str, name: str) -> Report:
    report = Report()
    req = from_payload({"model": "m"}, CHAT)
    body = (DATA / runtime / name).read_bytes()
    assert runtime_for(runtime).decode_body(req, body, report) == body  # relayed untouched
    return report


def test_vllm_per_request_spec_decode_metrics():
    for report in (decode_body("vllm", "chat_spec.json"),
                   decode_stream("vllm", "chat_stream_usage_spec.sse")[0]):
        assert (report.draft_tokens, report.accepted_tokens) == (12, 5)
        assert report.tokens_per_step == 2.25
        assert report.completion_tokens == 10 and report.prompt_tokens == 14
        assert report.decode_seconds == pytest.approx(0.0548)
    plain = decode_stream("vllm", "chat_stream_usage.sse")[0]
    assert plain.draft_tokens is None and plain.tokens_per_step is None


def test_trtllm_tokens_per_iteration():
    assert decode_body("trtllm", "chat_mtp.json").tokens_per_step == meta("trtllm")["mtp_avg_decoded_tokens_per_iter"]
    assert decode_stream("trtllm", "chat_stream_usage_mtp.sse")[0].tokens_per_step > 1


def test_trtllm_unknown_fields_are_stripped():
    adapter = runtime_for("trtllm")
    req = from_payload({"model": "m", "messages": [], "stream": True, "cache_prompt": True, "options": {},
                        "max_completion_tokens": 5}, CHAT)
    body = orjson.loads(adapter.prepare(req).body)
    assert body == {"model": "m", "messages": [], "stream": True, "max_completion_tokens": 5,
                    "stream_options": {"include_usage": True}}


def test_trtllm_fields_are_read_once_on_first_use_not_at_import():
    """A fresh interpreter: importing reads nothing; every adapter shares the one read, and none
    sets class state."""
    code = ("import mtproxy.runtimes as r, mtproxy.runtimes.trtllm as t\n"
            "assert t.accepted_fields.cache_info().currsize == 0\n"
            "a, b = r.runtime_for('trtllm'), r.runtime_for('trtllm')\n"
            "assert a.accepted_fields is b.accepted_fields and t.accepted_fields.cache_info().misses == 1\n"
            "assert 'accepted_fields' not in vars(t.TensorRTLLM)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_llama_cpp_python_validation_500_becomes_400():
    adapter = runtime_for("llama-cpp-python")
    err = adapter.upstream_error(500, (DATA / "llama-cpp-python" / "error_validation.body").read_bytes())
    assert err.status == 400 and err.type == "invalid_request_error"
    assert "Input should be a valid list" in err.message
    other = adapter.upstream_error(500, b'{"error":{"message":"out of memory","type":"internal_server_error"}}')
    assert other.status == 500


@pytest.mark.parametrize("runtime", ["sglang", "mlx", "llama-cpp-python"])
def test_usage_only_runtimes_report_tokens_and_nothing_else(runtime):
    m = meta(runtime)
    report = decode_body(runtime, "chat.json")
    assert report.completion_tokens == m["usage"]["completion_tokens"]
    assert report.draft_tokens is None and report.tokens_per_step is None
    streamed = decode_stream(runtime, "chat_stream_usage.sse")[0]
    expected = m["usage"]["completion_tokens"] if m.get("stream_usage", True) else None
    assert streamed.completion_tokens == expected  # unknown stays unknown


def test_the_added_stream_options_are_spliced_into_the_clients_bytes():
    """A long history is not encoded again for stream_options: the client's bytes are kept
    (spacing, key order, escapes) and the field goes before the closing brace."""
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "caf\\u00e9 }"}], "stream": true}\n'
    req = parse_request(raw, CHAT)
    body = runtime_for("vllm").prepare(req).body
    assert body.startswith(raw[:raw.rindex(b"}")])
    assert orjson.loads(body) == {**orjson.loads(raw), "stream_options": {"include_usage": True}}
    # the client's own stream_options are merged, not duplicated: encoded again
    req = parse_request(b'{"model": "m", "stream": true, "stream_options": {"x": 1}}', CHAT)
    body = runtime_for("vllm").prepare(req).body
    assert orjson.loads(body)["stream_options"] == {"x": 1, "include_usage": True}
    assert body.count(b"stream_options") == 1
