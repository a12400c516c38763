"""Fake runtimes that replay golden transcripts from ``tests/data/<runtime>/``.

Each transcript follows the runtime's real wire format as its source writes it; every file's
source is cited in that directory's SOURCE.md. The main ones:
- vllm: vllm-project/vllm vllm/entrypoints/openai/chat_completion/serving.py, protocol.py,
  vllm/entrypoints/generate/base/protocol.py (PerRequestMetrics);
- sglang: sgl-project/sglang python/sglang/srt/entrypoints/openai/serving_chat.py, protocol.py;
- llamacpp: real captures of llama-server b1-0c1e570 (tests/data/llamacpp, SOURCE.md);
- ollama: ollama/ollama api/types.go, server/routes.go;
- mlx: ml-explore/mlx-lm mlx_lm/server.py;
- trtllm: NVIDIA/TensorRT-LLM tensorrt_llm/serve/openai_server.py, openai_protocol.py,
  postprocess_handlers.py;
- llama-cpp-python: abetlen/llama-cpp-python llama_cpp/server/app.py, errors.py,
  llama_cpp/llama_chat_format.py. The server is a real aiohttp server on 127.0.0.1, port 0;
streams are written event by event, as the runtime writes them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web

DATA = Path(__file__).parent / "data"
RUNTIMES = ("vllm", "sglang", "llamacpp", "ollama", "mlx", "trtllm", "llama-cpp-python")


def meta(runtime: str) -> dict[str, Any]:
    return json.loads((DATA / runtime / "meta.json").read_text())


def events_of(raw: bytes, ndjson: bool) -> list[bytes]:
    """A transcript cut where the runtime flushes: per SSE event or per NDJSON line."""
    sep = b"\n" if ndjson else b"\n\n"
    return [part + sep for part in raw.split(sep) if part]


class ReplayRuntime:
    def __init__(self, runtime: str, *, variant: str = "", fail: bool = False, gap: float = 0.0) -> None:
        self.runtime = runtime
        self.dir = DATA / runtime
        self.meta = meta(runtime)
        self.variant = variant  # e.g. "_spec": chat_stream_usage_spec.sse instead of chat_stream_usage.sse
        self.fail = fail  # answer generation requests with error.body
        self.gap = gap
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def file(self, name: str) -> bytes:
        if self.variant:
            stem, dot, ext = name.partition(".")
            special = self.dir / f"{stem}{self.variant}{dot}{ext}"
            if special.exists():
                return special.read_bytes()
        return (self.dir / name).read_bytes()

    async def start(self) -> ReplayRuntime:
        app = web.Application()
        m = self.meta
        if self.runtime == "ollama":
            app.router.add_get("/api/version", self._static("api_version.json"))
            app.router.add_get("/api/tags", self._static("api_tags.json"))
            app.router.add_post("/api/show", self._static("api_show.json"))
            app.router.add_post("/api/chat", self._generate("api_chat"))
            app.router.add_post("/api/generate", self._generate("api_generate"))
            app.router.add_post("/api/embed", self._static("api_embed.json", record=True))
        else:
            if m.get("health_path"):
                app.router.add_get(m["health_path"], self._health)
            if m.get("version_path") and m["version_path"] != m.get("health_path"):
                app.router.add_get(m["version_path"], self._static("version.json"))
            app.router.add_get("/v1/models", self._static("models.json"))
            app.router.add_post("/v1/chat/completions", self._generate("chat"))
            app.router.add_post("/v1/completions", self._generate("completions"))
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        path = self.dir / "health.json"
        return web.Response(body=path.read_bytes() if path.exists() else b'{"status":"ok"}',
                            content_type="application/json")

    def _static(self, name: str, record: bool = False):
        async def handler(request: web.Request) -> web.Response:
            if record:
                self.requests.append((request.path, await request.json()))
            return web.Response(body=self.file(name), content_type="application/json")
        return handler

    def _rejected_fields(self, kind: str, body: dict[str, Any]) -> list[str]:
        path = self.dir / "request_fields.json"
        if not path.exists():
            return []
        accepted = set(json.loads(path.read_text())[kind])
        return sorted(k for k in body if k not in accepted)

    def _generate(self, stem: str):
        ndjson = self.runtime == "ollama"

        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.requests.append((request.path, body))
            if self.fail:
                return web.Response(status=self.meta["error_status"], body=self.file("error.body"),
                                    content_type="application/json")
            unknown = self._rejected_fields("chat" if stem == "chat" else "completions", body)
            if unknown:  # TensorRT-LLM's request models forbid extra fields
                return web.json_response({"object": "error", "message": f"Extra inputs are not permitted: {unknown}",
                                          "type": "BadRequestError", "param": None, "code": 400}, status=400)
            stream = body.get("stream", ndjson)
            if not stream:
                return web.Response(body=self.file(f"{stem}.json"), content_type="application/json")
            if ndjson:
                name, ctype = f"{stem}.ndjson", "application/x-ndjson"
            else:
                usage = (body.get("stream_options") or {}).get("include_usage")
                name, ctype = f"{stem}_stream{'_usage' if usage else ''}.sse", "text/event-stream"
            resp = web.StreamResponse(headers={"Content-Type": ctype})
            await resp.prepare(request)
            for event in events_of(self.file(name), ndjson):
                await resp.write(event)
                if self.gap:
                    await asyncio.sleep(self.gap)
            await resp.write_eof()
            return resp

        return handler
