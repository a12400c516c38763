"""The official openai client, unchanged but for base_url, against the proxy."""

from __future__ import annotations

import openai
import pytest

from .conftest import make_config


@pytest.fixture
async def client(runtime_factory, proxy_factory):
    a = await runtime_factory("a", models=["m1"])
    b = await runtime_factory("b", models=["m2"], die_after=2)
    cfg = make_config([{"name": "a", "runtime": "vllm", "url": a.url},
                       {"name": "b", "runtime": "llamacpp", "url": b.url}],
                      models={"m1": {"aliases": ["one"]}}, server={"api_keys": ["sk-test"]})
    proxy = await proxy_factory(cfg)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


async def test_chat(client):
    resp = await client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Hello world"
    assert resp.usage.completion_tokens == 4


async def test_chat_stream_with_usage(client):
    stream = await client.chat.completions.create(
        model="one", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[-1].usage.completion_tokens == 4


async def test_completions(client):
    resp = await client.completions.create(model="m1", prompt="say")
    assert resp.choices[0].text == "Hello world"
    stream = await client.completions.create(model="m1", prompt="say", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Hello world"


async def test_embeddings(client):
    resp = await client.embeddings.create(model="m1", input=["a", "b"])
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[0].embedding == [0.1, 0.2, 0.3]


async def test_models(client):
    ids = sorted([m.id async for m in client.models.list()])
    assert ids == ["m1", "m2", "one"]
    assert (await client.models.retrieve("one")).id == "one"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("zzz")


async def test_errors_surface_as_openai_exceptions(client):
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "model_not_found"
    bad = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
    await bad.close()


async def test_mid_stream_failure_raises_in_the_client(client):
    stream = await client.chat.completions.create(
        model="m2", messages=[{"role": "user", "content": "hi"}], stream=True)
    got = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["Hel", "lo"]
    assert "failed mid-stream" in exc.value.message
