"""Client connections: each request must arrive whole in time, and the number open is capped;
answers, however long, are never cut. Real sockets against the proxy on 127.0.0.1."""

from __future__ import annotations

import asyncio

import orjson

from mtproxy.state import METRICS

from .conftest import make_config
from .promtext import scrape, value
from .test_reliability import until

BODY = b'{"model": "m1", "messages": [{"role": "user", "content": "hi"}]}'
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
CUT = "mtproxy_client_connections_cut_total"


def request(body: bytes = BODY) -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection (a bound only so that a failing
    test ends)."""
    return await asyncio.wait_for(reader.read(), 30)


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One non-streaming response read off a kept-alive connection: (status line, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head.split(b"\r\n")[0], await reader.readexactly(length)


async def cuts(http, proxy) -> dict:
    async with http.get(proxy.url + "/metrics") as resp:
        return scrape(await resp.text())


async def test_a_request_that_stalls_in_its_headers_or_body_is_cut(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"receive_timeout": 0.3}))
    head_only = await connect(proxy.port)
    head_only[1].write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # a request line, one header
    silent = await connect(proxy.port)  # connects and sends nothing
    part_body = await connect(proxy.port)
    part_body[1].write(request()[:-20])  # headers whole, the body short of 20 bytes
    for reader, writer in (head_only, silent, part_body):
        assert await until_closed(reader) == b""  # closed without an answer
        writer.close()
    assert len(rt.requests) == 0
    samples = await cuts(http, proxy)
    assert value(samples, CUT, reason="header_timeout") == 2
    assert value(samples, CUT, reason="body_timeout") == 1
    assert value(samples, CUT, reason="too_many") == 0
    async with http.post(proxy.url + "/v1/chat/completions", data=BODY) as resp:
        assert resp.status == 200  # the proxy serves on


async def test_long_answers_and_idle_keep_alive_are_not_cut(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a", tokens=["a", "b", "c", "d", "e", "f"], token_delay=0.25)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"receive_timeout": 0.3}))
    # a stream lasting several times the limit
    async with http.post(proxy.url + "/v1/chat/completions",
                         data=BODY[:-1] + b', "stream": true}') as resp:
        assert resp.status == 200
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    # one kept-alive connection: an answer longer than the limit, an idle spell longer than it,
    # then the next request
    reader, writer = await connect(proxy.port)
    rt.b.first_token_delay = 1.0
    writer.write(request())
    status, body = await response(reader)
    assert status == b"HTTP/1.1 200 OK" and orjson.loads(body)["choices"]
    rt.b.first_token_delay = 0.0
    await asyncio.sleep(1.0)
    writer.write(request())
    status, _ = await response(reader)
    assert status == b"HTTP/1.1 200 OK"
    writer.close()
    samples = await cuts(http, proxy)
    assert value(samples, CUT) == 0


async def test_connections_beyond_the_cap_are_refused_at_once(runtime_factory, proxy_factory, http):
    rt = await runtime_factory("a")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url}],
                                            server={"max_connections": 2}))
    metrics = proxy.app[METRICS]
    held = [await connect(proxy.port) for _ in range(2)]
    await until(lambda: metrics.clients_open == 2)
    reader, writer = await connect(proxy.port)
    writer.write(request())
    answer = await until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
    assert len(rt.requests) == 0

    held.pop()[1].close()  # one leaves: room for another
    await until(lambda: metrics.clients_open == 1)
    async with http.post(proxy.url + "/v1/chat/completions", data=BODY) as resp:
        assert resp.status == 200
        await resp.read()
    samples = await cuts(http, proxy)  # on the connection the request used: still two open
    assert value(samples, CUT, reason="too_many") == 1
    assert value(samples, "mtproxy_client_connections") == 2
    for _, w in held:
        w.close()
