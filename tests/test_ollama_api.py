"""Ollama clients (the official `ollama` package) against mtproxy, in front of any runtime."""

from __future__ import annotations

import json

import ollama
import pytest

from bench.fake_runtime import ReplayRuntime

from .conftest import make_config
from .transcripts import replay


@pytest.fixture
async def ollama_client(proxy_factory, runtime_factory):
    started: list[ReplayRuntime] = []

    async def factory(runtime: str, **kw):
        rt = await replay(runtime, **kw).start()
        started.append(rt)
        emb = await runtime_factory("emb", models=["embedder"])
        proxy = await proxy_factory(make_config([
            {"name": "main", "runtime": runtime, "url": rt.url},
            {"name": "emb", "runtime": "vllm", "url": emb.url},
        ]))
        return rt, ollama.AsyncClient(host=proxy.url), proxy

    yield factory
    for rt in started:
        await rt.stop()


@pytest.mark.parametrize("runtime", ["llamacpp", "ollama"])
async def test_chat_and_generate_stream_and_not(ollama_client, runtime):
    rt, client, _ = await ollama_client(runtime)
    model, text, usage = rt.meta["model"], rt.meta["text"], rt.meta["usage"]
    resp = await client.chat(model=model, messages=[{"role": "user", "content": "Repeat."}], stream=False)
    assert resp.message.content == text
    assert resp.done and resp.done_reason == "stop"
    assert (resp.prompt_eval_count, resp.eval_count) == (usage["prompt_tokens"], usage["completion_tokens"])

    parts = [p async for p in await client.chat(model=model, messages=[{"role": "user", "content": "Repeat."}],
                                                 stream=True)]
    assert "".join(p.message.content for p in parts) == text
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == usage["completion_tokens"]
    assert parts[-1].total_duration > 0

    parts = [p async for p in await client.generate(model=model, prompt="Repeat.", stream=True)]
    assert "".join(p.response for p in parts) == text
    assert parts[-1].done and parts[-1].prompt_eval_count == usage["prompt_tokens"]
    resp = await client.generate(model=model, prompt="Repeat.")
    assert resp.response == text
    # without raw, /api/generate applies the chat template: it becomes a chat request upstream
    path, _ = rt.requests[-1]
    assert path in ("/v1/chat/completions", "/api/chat")


async def test_raw_generate_is_a_text_completion(ollama_client):
    rt, client, _ = await ollama_client("llamacpp")
    resp = await client.generate(model=rt.meta["model"], prompt="The capital of France is", raw=True)
    assert resp.response == rt.meta["completions_text"]
    assert rt.requests[-1][0] == "/v1/completions"


async def test_options_map_to_openai_parameters(ollama_client):
    rt, client, _ = await ollama_client("llamacpp")
    await client.chat(model=rt.meta["model"], messages=[{"role": "user", "content": "x"}],
                      options={"temperature": 0.2, "num_predict": 7, "seed": 3, "draft_num_predict": 4},
                      format="json")
    _, sent = rt.requests[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.2, 7, 3)
    assert sent["response_format"] == {"type": "json_object"}
    assert "options" not in sent  # native options are for Ollama backends only


async def test_native_options_reach_an_ollama_backend(ollama_client):
    rt, client, _ = await ollama_client("ollama")
    await client.chat(model=rt.meta["model"], messages=[{"role": "user", "content": "x"}],
                      options={"temperature": 0.2, "draft_num_predict": 4}, think=False)
    _, sent = rt.requests[-1]
    assert sent["options"]["draft_num_predict"] == 4 and sent["options"]["temperature"] == 0.2
    assert sent["think"] is False


async def test_tags_show_embed_version(ollama_client, http):
    rt, client, proxy = await ollama_client("ollama")
    names = {m.model for m in (await client.list()).models}
    assert {rt.meta["model"], "embedder"} <= names
    shown = await client.show(rt.meta["model"])  # an Ollama backend describes its own model
    assert shown.modelinfo[rt.meta["nextn_key"]] == 1
    other = await client.show("embedder")  # others get a minimal description
    assert other.modelinfo == {}
    emb = await client.embed(model="embedder", input=["a", "b"])
    assert len(emb.embeddings) == 2 and emb.embeddings[0] == [0.1, 0.2, 0.3]
    async with http.get(proxy.url + "/api/version") as resp:
        assert "version" in await resp.json()


async def test_errors_are_ollama_shaped(ollama_client, http):
    rt, client, proxy = await ollama_client("llamacpp")
    with pytest.raises(ollama.ResponseError) as exc:
        await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404
    async with http.post(proxy.url + "/api/chat", data=b"{bad") as resp:
        assert resp.status == 400
        assert isinstance((await resp.json())["error"], str)


async def test_midstream_error_from_ollama_reaches_both_kinds_of_client(ollama_client, http):
    rt, client, proxy = await ollama_client("ollama", variant="_error_midstream")
    with pytest.raises(ollama.ResponseError) as exc:
        async for _ in await client.chat(model=rt.meta["model"], messages=[{"role": "user", "content": "x"}],
                                         stream=True):
            pass
    assert rt.meta["midstream_error"] in str(exc.value)
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": rt.meta["model"], "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert events[-2].startswith(b"event: error")
    assert rt.meta["midstream_error"] in json.loads(events[-2].split(b"data: ", 1)[1])["error"]["message"]
