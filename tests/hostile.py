"""For the hostile-input suites (test_hostile_input.py, test_hostile_messages.py,
test_hostile_responses.py): upstreams that answer anything (every 5xx seen is the proxy's own),
a plain request sender, :class:`ServedOnLoop`, which serves them and the proxy on a loop of
their own, and the bodies the suites send: :func:`wrong_typed` (a wrong type in every field) and
:func:`mutated` (bytes flipped, cut, inserted or repeated)."""

from __future__ import annotations

import asyncio
import copy
import http.client
import random
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import orjson
from aiohttp import web

from mtproxy.server import start


class ServedOnLoop:
    """Upstreams and proxies on an event loop in a thread of their own, so hypothesis can drive
    them synchronously. A suite's subclass starts what it serves in :meth:`_start` (with
    :meth:`upstream` and :meth:`proxy`), which answers the port of the proxy its tests use;
    :meth:`stop` stops every proxy, then every upstream."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._runners: list[web.AppRunner] = []
        self.port: int = self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run ``coro`` on the served loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> int:
        raise NotImplementedError

    async def upstream(self, app: web.Application) -> str:
        """Serve ``app`` (a runtime) on a free loopback port; its URL."""
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def proxy(self, app: web.Application) -> int:
        """Serve ``app`` (the proxy's, create_app) as mtproxy serves it, on a free port; the port."""
        runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=1)
        self._runners.append(runner)
        return port

    async def _stop(self) -> None:
        for runner in reversed(self._runners):  # the proxies started after their upstreams
            await runner.cleanup()

    def stop(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def send(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


async def tolerant_runtime(request: web.Request) -> web.StreamResponse:
    """An upstream that answers anything, so every 5xx seen would be the proxy's own."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = {}
    if isinstance(body, dict) and body.get("stream") is True:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
                         b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
        return resp
    return web.json_response({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


async def tolerant_ollama(request: web.Request) -> web.StreamResponse:
    """An Ollama runtime that answers anything in its own API (NDJSON unless ``stream`` is false)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        body = {}
    kind = request.match_info["kind"]
    if kind == "embed":
        return web.json_response({"model": "o1", "embeddings": [[0.0]], "prompt_eval_count": 1})
    if kind == "show":
        return web.json_response({"modelfile": "", "parameters": "", "template": "", "model_info": {}})
    key = "response" if kind == "generate" else "message"
    line = {"model": "o1", key: "ok" if kind == "generate" else {"role": "assistant", "content": "ok"}}
    last = {"done": True, "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1}
    if isinstance(body, dict) and body.get("stream") is False:
        return web.json_response({**line, **last})
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    await resp.write(orjson.dumps({**line, "done": False}) + b"\n" + orjson.dumps({"model": "o1", **last}) + b"\n")
    return resp



WRONG = [None, False, 7, -1.5, "", "s", [], [1], {}, {"k": [1]}]  # a value of every JSON type


def field_paths(value, at: tuple = ()):
    """Every key and index in ``value``, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*at, key)
        yield from field_paths(item, (*at, key))


def replaced(body: dict, at: tuple, value) -> dict:
    out = copy.deepcopy(body)
    here = out
    for key in at[:-1]:
        here = here[key]
    here[at[-1]] = value
    return out


def wrong_typed(rnd: random.Random, body: dict, *, stream: bool = True) -> Iterator[tuple[tuple, object, dict]]:
    """``(at, value, body)``: ``body`` with each field in turn (depth first) set to each of WRONG;
    for a field other than ``stream``, one time in two (drawn from ``rnd``) asking for a stream as
    well, unless ``stream`` is false (a route that has none)."""
    for at in field_paths(body):
        for value in WRONG:
            out = replaced(body, at, value)
            if at != ("stream",) and rnd.random() < 0.5 and stream:
                out["stream"] = True
            yield at, value, out


def mutated(rnd: random.Random, seed: bytes, inserts: list[bytes], *, times: tuple[int, int] = (1, 4),
            cut: int = 8, repeat: int | None = 16) -> bytes:
    """``seed`` with ``times`` (drawn from ``rnd``) random edits: a byte flipped, up to ``cut``
    bytes cut, one of ``inserts`` inserted, or (unless ``repeat`` is None) up to ``repeat`` bytes
    repeated two to four times."""
    body = bytearray(seed)
    for _ in range(rnd.randint(*times)):
        i = rnd.randrange(len(body))
        op = rnd.randrange(3 if repeat is None else 4)
        if op == 0:
            body[i] = rnd.randrange(256)
        elif op == 1:
            del body[i:i + rnd.randint(1, cut)]
        elif op == 2:
            body[i:i] = rnd.choice(inserts)
        elif repeat is not None:  # op 3, drawn only with a repeat
            body[i:i] = body[i:i + rnd.randint(1, repeat)] * rnd.randint(2, 4)
    return bytes(body)
