"""Ollama, spoken to through its native API so its timings and options are available.

Source: ollama/ollama server/routes.go (/api/chat, /api/generate, /api/embed, /api/tags,
/api/version, /api/show), api/types.go (request/response structs, Metrics in nanoseconds).
- streams are NDJSON (application/x-ndjson), streaming unless "stream": false; the last object
  has done: true, done_reason and prompt_eval_count/_duration, eval_count/_duration;
- an error inside a stream is an object {"error": "<text>"};
- errors are {"error": "<text>"} with the HTTP status;
- no draft/acceptance figures at all; `options.draft_num_predict` sets MTP drafting length.
- OpenAI Responses served natively: POST /v1/responses since v0.13.3 (PR #13351, commit 1eb5e75,
  openai/responses.go), stateless: previous_response_id, background and conversation are not
  supported, tool_choice and parallel_tool_calls are not read, image URLs other than data: are
  refused. The proxy puts the turns of previous_response_id in front of the input itself
  (front/responses.py); requests asking for the others are translated. Usage on
  `response.completed`.
- Anthropic Messages served natively: POST /v1/messages since v0.14.0 (PR #13600, commit 2b2cda7,
  anthropic/anthropic.go); no /v1/messages/count_tokens. Its converter reads no tool_choice,
  maps thinking "enabled"/"disabled" only (not "adaptive"), takes base64 images only, drops
  "document" blocks and tool_result.is_error: such requests are translated. Usage on
  message_start (an estimate of the input) and message_delta (the counts).
- swapping (docs/api.md "Load a model" / "Unload a model", docs/faq.mdx, server/routes.go
  GenerateHandler, server/sched.go expireRunner): POST /api/generate {"model"} without a prompt
  loads the model and answers once it is loaded (done_reason "load"); "keep_alive": -1 keeps it
  loaded until told otherwise (api/types.go Duration: any negative number is forever; the string
  "-1" has no unit and is refused). {"model", "keep_alive": 0} answers at once (done_reason
  "unload") and only marks the runner expired: it is freed when its requests finish, and GET
  /api/ps lists it until then (names as "<model>:<tag>").
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import orjson

from ..errors import UpstreamError, normalise_upstream_error
from ..mtp.detect import Trained
from ..mtp.registry import REGISTRY, Support
from ..mtp.state import NO_EVIDENCE, Evidence
from ..stream.events import DONE, Batch, Event, Report, StreamDecoder, StreamFailure
from ..stream.tap import content_count, shows_answer
from ..upstream import describe
from ..wire import ApiRequest, Native
from . import ollama_wire as wire
from .base import (
    POLL_SECONDS,
    PROBE_ERRORS,
    SWAP_REQUEST_SECONDS,
    BackendHTTP,
    Probe,
    SwapFailed,
    Upstream,
    runtime_words,
    swap_request,
)
from .native import message_blocks, nothing, observe_body, relay_decoder, response_parts, tool_choice

_PATHS = {"chat": "/api/chat", "completions": "/api/generate", "embeddings": "/api/embed"}


def observe(obj: dict[str, Any], report: Report) -> None:
    if isinstance(obj.get("prompt_eval_count"), int):
        report.prompt_tokens = obj["prompt_eval_count"]
    if isinstance(obj.get("eval_count"), int):
        report.completion_tokens = obj["eval_count"]
    if isinstance(obj.get("prompt_eval_duration"), int):
        report.prompt_seconds = obj["prompt_eval_duration"] / 1e9
    if isinstance(obj.get("eval_duration"), int):
        report.decode_seconds = obj["eval_duration"] / 1e9


def show_evidence(shown: dict[str, Any]) -> tuple[Trained | None, Evidence]:
    """/api/show: model_info "<arch>.nextn_predict_layers" says MTP-trained; Ollama then runs
    llama-server with --spec-type draft-mtp, drafting draft_num_predict tokens (parameters)."""
    info = shown.get("model_info") or {}
    arch = info.get("general.architecture")
    layers = info.get(f"{arch}.nextn_predict_layers") if arch else None
    trained = None
    if isinstance(layers, int):
        trained = Trained(layers > 0, "runtime", f"/api/show {arch}.nextn_predict_layers = {layers}")
    draft = None
    for line in str(shown.get("parameters") or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "draft_num_predict" and value.strip().isdigit():
            draft = int(value.strip())
    if not layers:
        return trained, Evidence(mtp=False, speculating=None, why="no NextN layers in the model")
    if draft is None:
        return trained, Evidence(why="draft_num_predict not set; its default differs between releases")
    if draft > 0:
        return trained, Evidence(mtp=True, speculating=True, why=f"/api/show draft_num_predict = {draft}")
    return trained, Evidence(mtp=False, speculating=False, why="/api/show draft_num_predict = 0")


class NDJSONDecoder:
    """Ollama's NDJSON stream in, OpenAI chunks out (made up, so their raw bytes are None)."""

    __slots__ = ("_tail", "_chat", "_model", "_id", "_created", "_first", "_tools", "_report")

    def __init__(self, req: ApiRequest, report: Report) -> None:
        self._tail = b""
        self._chat = req.endpoint.kind == "chat"
        self._model = req.model
        self._id = wire.new_id("chatcmpl" if self._chat else "cmpl")
        self._created = int(time.time())
        self._first = True
        self._tools = False
        self._report = report

    def feed(self, data: bytes) -> Batch | None:
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return self._batch(self._lines(data[:cut])) if cut else None

    def flush(self) -> Batch | None:
        tail, self._tail = self._tail, b""
        return self._batch(self._lines(tail)) if tail.strip() else None

    @staticmethod
    def _batch(events: list[Event]) -> Batch | None:
        if not events:
            return None
        content = sum(content_count(obj) for _, obj in events)  # thinking: reasoning_content deltas
        return Batch(None, events, content, content > 0 and not any(shows_answer(obj) for _, obj in events))

    def _lines(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise StreamFailure("unparseable line in the NDJSON stream") from None
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                raise StreamFailure(str(obj["error"]))
            events.extend(self._convert(obj))
        return events

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk" if self._chat else "text_completion",
                "created": self._created, "model": self._model, "choices": [choice]}

    def _convert(self, obj: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if self._chat:
            delta = wire.chat_delta(obj, self._first)
            self._tools = self._tools or "tool_calls" in delta
            if delta and (not obj.get("done") or len(delta) > 1 or self._first):
                events.append((None, self._chunk({"index": 0, "delta": delta, "finish_reason": None})))
                self._first = False
        elif obj.get("response"):
            events.append((None, self._chunk({"index": 0, "text": obj["response"], "finish_reason": None})))
        if obj.get("done"):
            observe(obj, self._report)
            reason = wire.finish_reason(obj, self._tools)
            final = ({"index": 0, "delta": {}, "finish_reason": reason} if self._chat
                     else {"index": 0, "text": "", "finish_reason": reason})
            events.append((None, self._chunk(final)))
            usage = wire.usage_of(obj)
            if usage:
                events.append((None, {**self._chunk({}), "choices": [], "usage": usage}))
            events.append((None, DONE))
        return events


class Ollama:
    name: ClassVar[str] = "ollama"
    rediscover: ClassVar[bool] = True
    mtp_support: ClassVar[Support] = REGISTRY["ollama"]
    # the first release serving each (the module docstring has the sources)
    native_apis: ClassVar[dict[str, str]] = {"messages": "0.14.0", "responses": "0.13.3"}
    relays_local: ClassVar[bool] = False  # no rerank, tokenize, audio or images routes
    swaps: ClassVar[bool] = True  # /api/generate without a prompt loads; with keep_alive 0 unloads
    metrics_path: ClassVar[str | None] = None  # Ollama serves no metrics of its own

    def exposition(self, body: bytes) -> str:
        raise ValueError("Ollama has no /metrics")
    reprobe_mtp: ClassVar[bool] = False  # /api/show's parameters do not change with requests

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        try:
            status, data = await http.get("/api/version")
            if status != 200:
                return Probe(False, f"/api/version answered HTTP {status}")
            version = data.get("version") if isinstance(data, dict) else None
            models = None
            if discover:
                status, tags = await http.get("/api/tags")
                if status != 200:
                    return Probe(False, f"/api/tags answered HTTP {status}")
                models = tuple(str(m.get("name") or m.get("model")) for m in (tags or {}).get("models") or ()
                               if isinstance(m, dict) and (m.get("name") or m.get("model")))
        except PROBE_ERRORS as exc:
            return Probe(False, describe(exc))
        return Probe(True, models=models, version=version if isinstance(version, str) else None)

    async def show(self, http: BackendHTTP, model: str) -> dict[str, Any] | None:
        try:
            status, data = await http.request("POST", "/api/show", json={"model": model})
        except PROBE_ERRORS:
            return None
        return data if status == 200 and isinstance(data, dict) else None

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[Trained | None, Evidence]:
        shown = await self.show(http, model)
        if shown is None:
            return None, NO_EVIDENCE
        return show_evidence(shown)

    def relays(self, native: Native) -> bool:
        payload = native.payload
        if native.kind == "responses":
            if payload.get("background") or payload.get("conversation") is not None:
                return False
            if payload.get("tool_choice") not in (None, "auto") or payload.get("parallel_tool_calls") is False:
                return False
            return not any(part.get("type") == "input_image" and not str(part.get("image_url") or "").startswith("data:")
                           for part in response_parts(payload))
        if native.path.endswith("/count_tokens"):
            return False  # no such route
        choice = tool_choice(payload)
        if choice.get("type", "auto") != "auto" or choice.get("disable_parallel_tool_use"):
            return False
        thinking = payload.get("thinking")
        if thinking is not None and (not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled")):
            return False
        for block in message_blocks(payload):
            kind = block.get("type")
            source = block.get("source")
            if kind == "document" or block.get("is_error") or (
                    kind == "image" and not (isinstance(source, dict) and source.get("type") == "base64")):
                return False
        return True

    async def count_tokens(self, http: BackendHTTP, req: ApiRequest) -> int | None:
        return None  # Ollama has no tokenizer route

    def prepare(self, req: ApiRequest) -> Upstream:
        if req.relayed:  # the client's own request, to Ollama's route for its API
            assert req.native is not None
            return Upstream(req.native.path, req.native.body(req.payload["model"]))
        kind = req.endpoint.kind
        if kind == "chat":
            body = wire.chat_request(req.payload, req.stream)
        elif kind == "completions":
            body = wire.generate_request(req.payload, req.stream)
        else:
            body = wire.embed_request(req.payload)
        return Upstream(_PATHS[kind], orjson.dumps(body))

    def stream_decoder(self, req: ApiRequest, report: Report, *, parse_all: bool = False,
                       texts: bool = False) -> StreamDecoder:
        if req.relayed and req.native is not None:  # Ollama's own SSE in the client's API
            return relay_decoder(req.native, nothing, report)
        return NDJSONDecoder(req, report)

    def decode_body(self, req: ApiRequest, body: bytes, report: Report) -> bytes:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("Ollama sent a body that is not JSON.", status=502) from None
        if not isinstance(obj, dict):
            raise UpstreamError("Ollama sent an unexpected body.", status=502)
        if req.relayed and req.native is not None:  # in the client's API, relayed as it is
            observe_body(req.native, obj, report, nothing)
            return body
        observe(obj, report)
        kind = req.endpoint.kind
        if kind == "chat":
            out = wire.chat_body(obj, req.model)
        elif kind == "completions":
            out = wire.completion_body(obj, req.model)
        else:
            out = wire.embeddings_body(obj, req.model)
        return orjson.dumps(out)

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        return normalise_upstream_error(status, body)

    async def load(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        for model in models:  # kept loaded (keep_alive -1) until mtproxy unloads it
            await _generate(http, {"model": model, "keep_alive": -1, "stream": False})

    async def unload(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        for model in models:
            await _generate(http, {"model": model, "keep_alive": 0, "stream": False})
        while (running := await _running(http)) is None or any(_tagged(m) in running for m in models):
            await asyncio.sleep(POLL_SECONDS)  # until its runner is gone (requests it still serves)

    async def loaded(self, http: BackendHTTP, models: tuple[str, ...]) -> bool | None:
        try:
            running = await _running(http)
        except SwapFailed:
            return None
        return None if running is None else all(_tagged(m) in running for m in models)


def _tagged(model: str) -> str:
    """A model's name as /api/ps writes it: with its tag (":latest" when none is given)."""
    return model if ":" in model.rpartition("/")[2] else f"{model}:latest"


async def _running(http: BackendHTTP) -> set[str] | None:
    """The models /api/ps lists as loaded; None: it did not answer with a list."""
    status, body = await swap_request(http, "GET", "/api/ps")
    try:
        data = orjson.loads(body) if status == 200 else None
    except orjson.JSONDecodeError:
        return None
    listed = data.get("models") if isinstance(data, dict) else None
    if not isinstance(listed, list):
        return None
    return {_tagged(str(m.get("model") or m.get("name"))) for m in listed
            if isinstance(m, dict) and (m.get("model") or m.get("name"))}


async def _generate(http: BackendHTTP, body: dict[str, Any]) -> None:
    status, answer = await swap_request(http, "POST", "/api/generate", body, timeout=SWAP_REQUEST_SECONDS)
    if status != 200:
        action = "unload" if body["keep_alive"] == 0 else "load"
        raise SwapFailed(f"Ollama could not {action} {body['model']}: "
                         f"{runtime_words('POST', '/api/generate', status, answer)}")
