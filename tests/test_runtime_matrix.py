"""Every runtime × {chat, completions} × {non-stream, stream, stream with usage}, through the
proxy with the official openai client, against fakes replaying each runtime's golden transcripts."""

from __future__ import annotations

import json

import openai
import pytest

from bench.fake_runtime import ReplayRuntime

from .conftest import make_config
from .transcripts import RUNTIMES, meta, replay

MODES = ("unary", "stream", "stream+usage")


def expected(runtime: str, kind: str) -> tuple[str, dict | None]:
    m = meta(runtime)
    if kind == "completions":
        return m.get("completions_text", m["text"]), m.get("completions_usage", m["usage"])
    return m["text"], m["usage"]


@pytest.fixture
async def through_proxy(proxy_factory):
    started: list[ReplayRuntime] = []

    async def factory(runtime: str, **kw) -> tuple[ReplayRuntime, openai.AsyncOpenAI]:
        rt = await replay(runtime, **kw).start()
        started.append(rt)
        proxy = await proxy_factory(make_config([{"name": f"{runtime}-1", "runtime": runtime, "url": rt.url}]))
        return rt, openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)

    yield factory
    for rt in started:
        await rt.stop()


async def _complete(client: openai.AsyncOpenAI, kind: str, model: str, mode: str):
    kw: dict = {"model": model}
    if mode != "unary":
        kw["stream"] = True
    if mode == "stream+usage":
        kw["stream_options"] = {"include_usage": True}
    if kind == "chat":
        return await client.chat.completions.create(messages=[{"role": "user", "content": "Repeat."}], **kw)
    return await client.completions.create(prompt="The capital of France is", **kw)


def _text(kind: str, chunk_or_body, stream: bool) -> str:
    parts = []
    for choice in chunk_or_body.choices:
        if kind == "chat":
            parts.append((choice.delta if stream else choice.message).content or "")
        else:
            parts.append(choice.text or "")
    return "".join(parts)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["chat", "completions"])
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_matrix(through_proxy, runtime, kind, mode):
    rt, client = await through_proxy(runtime)
    text, usage = expected(runtime, kind)
    result = await _complete(client, kind, rt.meta["model"], mode)
    if mode == "unary":
        assert _text(kind, result, False) == text
        if usage is not None:
            assert result.usage.prompt_tokens == usage["prompt_tokens"]
            assert result.usage.completion_tokens == usage["completion_tokens"]
    else:
        chunks = [c async for c in result]
        assert "".join(_text(kind, c, True) for c in chunks) == text
        with_usage = [c for c in chunks if c.usage is not None]
        reports = usage is not None and meta(runtime).get("stream_usage", True)
        if mode == "stream" or not reports:  # usage only when asked for, and only if the runtime says
            assert with_usage == []
        else:
            assert len(with_usage) == 1
            assert with_usage[0].usage.completion_tokens == usage["completion_tokens"]
            assert with_usage[0].usage.prompt_tokens == usage["prompt_tokens"]
    path, sent = rt.requests[-1]
    if runtime == "ollama":  # spoken to natively
        assert path == ("/api/chat" if kind == "chat" else "/api/generate")
        assert sent["stream"] is (mode != "unary")
    elif mode != "unary":  # usage is always asked for upstream
        assert sent["stream_options"]["include_usage"] is True


def _message_of(body: bytes) -> str:
    data = json.loads(body)
    inner = data.get("error", data)
    return inner if isinstance(inner, str) else inner["message"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_error_shape_is_normalised(through_proxy, runtime):
    rt, client = await through_proxy(runtime, fail=True)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as exc:
            await client.chat.completions.create(model=rt.meta["model"], stream=stream,
                                                 messages=[{"role": "user", "content": "x"}])
        assert exc.value.status_code == rt.meta["error_status"]
        body = exc.value.body
        assert set(body) == {"message", "type", "param", "code"}
        assert body["message"] == _message_of(rt.file("error.body"))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_models_are_discovered_and_version_read(through_proxy, proxy_factory, runtime):
    rt, client = await through_proxy(runtime)
    ids = [m.id async for m in client.models.list()]
    assert rt.meta["model"] in ids


async def test_trtllm_gets_only_fields_it_accepts(through_proxy):
    rt, client = await through_proxy("trtllm")
    resp = await client.chat.completions.create(model=rt.meta["model"], messages=[{"role": "user", "content": "x"}],
                                                extra_body={"cache_prompt": True, "top_k": 5})
    assert resp.choices[0].message.content == rt.meta["text"]
    assert "cache_prompt" not in rt.requests[-1][1]
