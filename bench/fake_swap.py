"""The load/unload APIs of three runtimes, for :class:`bench.fake_runtime.FakeRuntime` when its
``Behaviour.swap`` names one (the wire facts and their sources: mtproxy/runtimes/llamacpp.py,
ollama.py, vllm.py):

- ``"llamacpp"``: llama-server's router mode. ``GET /models`` (and ``/v1/models``) lists each
  model with its ``status``; ``POST /models/load`` answers at once and the model reads "loading",
  then "loaded" after ``load_seconds`` (or "unloaded", failed, exit code 1, for a model in
  ``fail_load``); ``POST /models/unload``; ``GET /props`` says ``"role": "router"``. A request
  for an unloaded model loads it first, or with ``autoload`` off gets 400 "model is not loaded".
- ``"ollama"``: ``POST /api/generate`` / ``/api/chat`` without a prompt (messages) load the model,
  answering once loaded (``load_seconds``; a model in ``fail_load`` gets 500), with
  ``keep_alive: 0`` unload it; ``GET /api/ps`` lists what is loaded; with a prompt they load on
  demand and answer one done object. Each request sets how long its model stays loaded after it:
  its ``keep_alive`` in seconds (negative: for good), or ``Behaviour.keep_alive`` when it names
  none; then the fake unloads the model by itself (``("expired", model)`` in ``calls``), as
  Ollama does. ``/api/version`` and ``/api/tags`` as Ollama's.
- ``"vllm"``: sleep mode's dev routes: ``POST /sleep`` answers once asleep, ``POST /wake_up`` once
  awake (after ``load_seconds``), ``GET /is_sleeping``. A request to a sleeping engine waits until
  it wakes, as vLLM's paused scheduler holds it.

Models start unloaded (llama.cpp, Ollama); vLLM starts awake. ``load_seconds`` None: a load never
finishes. A runtime without these APIs (a single-model llama-server, vLLM without dev mode) is a
FakeRuntime without ``swap``: the routes answer 404.

The status routes (``GET /models``, ``/api/ps``, ``/is_sleeping``) count the looks they get in
``polls``; while ``hold`` is an event not set, they answer (what held when they were asked) only
once it is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from bench.fake_runtime import Behaviour

CREATED = 1_700_000_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, type_: str) -> web.Response:  # llama-server's error shape
    return web.json_response({"error": {"code": status, "message": message, "type": type_}}, status=status)


class Swapper:
    """The models' load state of one fake runtime, and the routes that change it."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.kind = behaviour.swap
        self.status = dict.fromkeys(behaviour.models, "unloaded")  # llama.cpp and Ollama
        self.failed: set[str] = set()
        self.awake = asyncio.Event()  # vLLM
        self.awake.set()
        self.calls: list[tuple[str, str]] = []  # (route, model) of each load/unload asked for
        self.polls = 0  # looks at the load state (GET /models, /api/ps, /is_sleeping)
        self.hold: asyncio.Event | None = None  # an event: those looks answer once it is set
        self._expiry: dict[str, asyncio.Task[Any]] = {}  # Ollama: a model's keep_alive running out
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loads: dict[str, asyncio.Task[Any]] = {}

    def routes(self, app: web.Application, read_json: Callable[[web.Request], Awaitable[dict[str, Any]]]) -> None:
        self._read = read_json
        table: dict[str, list[tuple[str, str, Handler]]] = {
            "llamacpp": [("GET", "/models", self.router_models), ("GET", "/v1/models", self.router_models),
                         ("GET", "/props", self.router_props), ("POST", "/models/load", self.router_load),
                         ("POST", "/models/unload", self.router_unload)],
            "ollama": [("GET", "/api/version", self.ollama_version), ("GET", "/api/tags", self.ollama_tags),
                       ("GET", "/api/ps", self.ollama_ps), ("POST", "/api/generate", self.ollama_generate),
                       ("POST", "/api/chat", self.ollama_generate)],
            "vllm": [("POST", "/sleep", self.vllm_sleep), ("POST", "/wake_up", self.vllm_wake_up),
                     ("GET", "/is_sleeping", self.vllm_is_sleeping)],
        }
        for method, path, handler in table[str(self.kind)]:
            app.router.add_route(method, path, handler)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loading(self, model: str) -> bool:
        """One load of ``model``: its time, then whether it worked."""
        if self.b.load_seconds is None:
            await asyncio.Event().wait()  # never
        await asyncio.sleep(self.b.load_seconds or 0.0)
        return model not in self.b.fail_load

    def _later(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, model: str) -> None:
        self.status[model] = "loading"  # before answering, as llama.cpp's server_models::load does
        self.failed.discard(model)
        self._loads[model] = self._later(self._run_load(model))

    async def _run_load(self, model: str) -> bool:
        ok = await self._loading(model)
        self.status[model] = "loaded" if ok else "unloaded"
        if not ok:
            self.failed.add(model)
        return ok

    async def _load(self, model: str) -> bool:
        """``model`` loaded on demand (or its load under way awaited); whether it loaded."""
        if self.status[model] == "unloaded":
            self._start(model)
        task = self._loads.get(model)
        if self.status[model] == "loading" and task is not None:
            return bool(await asyncio.shield(task))  # a request that leaves does not stop the load
        return self.status[model] == "loaded"

    async def _answer(self, body: Any) -> web.Response:
        """A status route's answer: ``body``, as of when it was asked, once ``hold`` allows."""
        hold = self.hold
        if hold is not None:
            await hold.wait()
        return web.json_response(body)

    def _keep(self, model: str, keep_alive: Any) -> None:
        """Ollama: ``model`` stays loaded ``keep_alive`` seconds after this request (the default
        when it names none, for good when negative), then is unloaded."""
        old = self._expiry.pop(model, None)
        if old is not None:
            old.cancel()
        seconds = keep_alive if isinstance(keep_alive, int | float) else self.b.keep_alive
        if seconds >= 0:
            self._expiry[model] = self._later(self._expire(model, seconds))

    async def _expire(self, model: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        del self._expiry[model]
        if self.status[model] == "loaded":
            self.calls.append(("expired", model))
            self.status[model] = "unloaded"

    async def _unload(self, model: str) -> None:
        expiry = self._expiry.pop(model, None)
        if expiry is not None:
            expiry.cancel()
        task = self._loads.pop(model, None)
        if task is not None:
            task.cancel()  # the router kills a model still loading
        await asyncio.sleep(0.05)  # the process exits (the runner is freed) a little later
        self.status[model] = "unloaded"

    async def before_generate(self, model: str) -> web.Response | None:
        """What a generation request meets first: its model loaded on demand, or a refusal."""
        if self.kind == "vllm":
            await self.awake.wait()
            return None
        if model not in self.status:
            return _error(400, f"model '{model}' not found", "invalid_request_error")
        if self.kind == "llamacpp" and self.status[model] == "unloaded" and not self.b.autoload:
            return _error(400, "model is not loaded", "invalid_request_error")
        if await self._load(model):
            return None
        if self.kind == "ollama":
            return web.json_response({"error": "llama runner process has terminated: exit status 2"}, status=500)
        return _error(500, f"model name={model} failed to load", "server_error")

    # --- llama.cpp's router --------------------------------------------------------------------

    async def router_models(self, request: web.Request) -> web.Response:
        data = []
        for model, value in self.status.items():
            status: dict[str, Any] = {"value": value, "args": ["llama-server", "--port", "0"]}
            if model in self.failed and value == "unloaded":
                status.update(exit_code=1, failed=True)
            data.append({"id": model, "aliases": [], "tags": [], "object": "model", "owned_by": "llamacpp",
                         "created": CREATED, "status": status})
        if request.path == "/models":  # what the adapter's load, unload and loaded read
            self.polls += 1
            return await self._answer({"data": data, "object": "list"})
        return web.json_response({"data": data, "object": "list"})

    async def router_props(self, request: web.Request) -> web.Response:
        return web.json_response({"role": "router", "max_instances": 4, "models_autoload": self.b.autoload,
                                  "model_alias": "llama-server", "model_path": "none", "build_info": "b7400-fake"})

    async def router_load(self, request: web.Request) -> web.Response:
        model = str((await self._read(request)).get("model") or "")
        self.calls.append(("load", model))
        if model not in self.status:
            return _error(404, "model is not found", "not_found_error")
        if self.status[model] != "unloaded":
            return _error(400, "model is already running", "invalid_request_error")
        self._start(model)
        return web.json_response({"success": True})

    async def router_unload(self, request: web.Request) -> web.Response:
        model = str((await self._read(request)).get("model") or "")
        self.calls.append(("unload", model))
        if model not in self.status:
            return _error(400, "model is not found", "invalid_request_error")
        if self.status[model] == "unloaded":
            return _error(400, "model is not running", "invalid_request_error")
        self._later(self._unload(model))
        return web.json_response({"success": True})

    # --- Ollama ----------------------------------------------------------------------------------

    async def ollama_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def ollama_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m, "model": m} for m in self.status]})

    async def ollama_ps(self, request: web.Request) -> web.Response:
        self.polls += 1
        return await self._answer({"models": [
            {"name": m, "model": m, "size": 1 << 30, "size_vram": 1 << 30, "digest": "0" * 64,
             "expires_at": "2318-08-21T00:00:00Z", "context_length": 4096}
            for m, value in self.status.items() if value == "loaded"]})

    async def ollama_generate(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        model = str(body.get("model") or "")
        if ":" not in model and f"{model}:latest" in self.status:  # a name without its tag
            model = f"{model}:latest"
        chat = request.path == "/api/chat"
        empty = not body.get("messages") if chat else not body.get("prompt")
        if model not in self.status:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        done = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": True}
        if empty and body.get("keep_alive") == 0:
            self.calls.append(("unload", model))
            self._later(self._unload(model))  # the runner is freed after the answer (expireRunner)
            return web.json_response({**done, "response": "", "done_reason": "unload"})
        if empty:
            self.calls.append(("load", model))
        refused = await self.before_generate(model)
        if refused is not None:
            return refused
        self._keep(model, body.get("keep_alive"))
        if empty:
            return web.json_response({**done, "response": "", "done_reason": "load"})
        text = "".join(self.b.tokens)
        answer = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        return web.json_response({**done, **answer, "done_reason": "stop", "prompt_eval_count": 5,
                                  "eval_count": len(self.b.tokens)},
                                 content_type="application/x-ndjson" if body.get("stream", True) else "application/json")

    # --- vLLM's sleep mode ---------------------------------------------------------------------------

    async def vllm_sleep(self, request: web.Request) -> web.Response:
        self.calls.append(("sleep", request.query.get("level", "1")))
        self.awake.clear()
        return web.Response(status=200)

    async def vllm_wake_up(self, request: web.Request) -> web.Response:
        self.calls.append(("wake_up", ""))
        if not self.awake.is_set():
            await self._loading("")
            self.awake.set()
        return web.Response(status=200)

    async def vllm_is_sleeping(self, request: web.Request) -> web.Response:
        self.polls += 1
        return await self._answer({"is_sleeping": not self.awake.is_set()})
