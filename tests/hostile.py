"""Upstreams that answer anything, and a plain request sender, for the hostile-input suites of the
client formats (test_hostile_messages.py, test_hostile_responses.py): every 5xx seen is the
proxy's own."""

from __future__ import annotations

import http.client

import orjson
from aiohttp import web


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

