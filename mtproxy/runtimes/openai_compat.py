"""The shared base of every runtime that speaks the OpenAI API: SSE decoding, usage in
streams, OpenAI ``usage`` extraction, model discovery from ``/v1/models``.

Runtime modules subclass :class:`OpenAICompatible` and override only what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import orjson

from ..errors import UpstreamError, normalise_upstream_error
from ..mtp import detect
from ..mtp.registry import REGISTRY, Support
from ..mtp.state import NO_EVIDENCE, Evidence
from ..stream.events import Report, StreamDecoder
from ..stream.tap import Observer, SSEDecoder, attention_markers, observe_all
from ..upstream import describe
from ..wire import ApiRequest, Native
from .base import PROBE_ERRORS, BackendHTTP, Probe, Upstream
from .native import observe_body, relay_decoder


def model_ids(data: Any) -> tuple[str, ...] | None:
    """Model ids from an OpenAI ``/v1/models`` list body."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return tuple(m["id"] for m in data["data"] if isinstance(m, dict) and isinstance(m.get("id"), str))
    return None


def _count(data: Any, field: str, path: str) -> int:
    count = data.get(field) if isinstance(data, dict) else None
    if count.__class__ is not int:
        raise UpstreamError(f"The backend's {path} answered without `{field}`.", status=502)
    return count


def observe_usage(obj: dict[str, Any], report: Report) -> None:
    """OpenAI ``usage``: prompt and completion tokens, and of those the reasoning ones
    (``completion_tokens_details.reasoning_tokens``) where reported."""
    usage = obj.get("usage")
    if usage.__class__ is dict:
        prompt = usage.get("prompt_tokens")
        if prompt.__class__ is int:  # an int, not a bool
            report.prompt_tokens = prompt
        completion = usage.get("completion_tokens")
        if completion.__class__ is int:
            report.completion_tokens = completion
        details = usage.get("completion_tokens_details")
        if details.__class__ is dict:
            reasoning = details.get("reasoning_tokens")
            if reasoning.__class__ is int:
                report.reasoning_tokens = reasoning


USAGE = Observer("usage", observe_usage)


class OpenAICompatible:
    """A runtime that serves the OpenAI API under ``/v1``.

    ``health_path`` None: the runtime has no health endpoint and ``/v1/models`` answers for it.
    ``version_path`` None: it does not report a version.
    """

    name: ClassVar[str] = "openai"
    health_path: ClassVar[str | None] = None
    version_path: ClassVar[str | None] = None
    # The request fields this runtime accepts, per endpoint kind (it rejects others: they are
    # dropped before sending); None: it accepts (and ignores) unknown fields.
    accepted_fields: dict[str, frozenset[str]] | None = None
    # Fields mtproxy itself understands as extensions (Ollama `options`); never sent to
    # runtimes that do not know them.
    extension_fields: ClassVar[tuple[str, ...]] = ("options",)
    # The fields of the runtime's answers the adapter reads into the Report. Stream events with
    # any of them are parsed (``observe``); the others are relayed unread (stream/tap.py).
    observers: ClassVar[tuple[Observer, ...]] = (USAGE,)
    attention: ClassVar[tuple[bytes, ...]] = attention_markers(observers)
    # Whether the model list is asked for again at every health check (False: only when the
    # backend first appears or comes back up, for a runtime whose /v1/models disturbs it).
    rediscover: ClassVar[bool] = True
    # What the MTP registry (mtp/registry.py) says of this runtime: since when, how it is switched on.
    mtp_support: ClassVar[Support] = REGISTRY["openai"]
    # Client APIs the runtime serves itself besides the OpenAI ones (Runtime.native_apis).
    native_apis: ClassVar[dict[str, str]] = {}
    # The rest of the local API goes to the runtime as it came (a route it lacks answers 404).
    relays_local: ClassVar[bool] = True
    # A tokenizer route that takes chat messages ({"model", "messages"} -> {"count"}), if any.
    chat_tokenize_path: ClassVar[str | None] = None
    # Loads and unloads models on request (Runtime.swaps); those that do override the three below.
    swaps: ClassVar[bool] = False
    # The runtime's own Prometheus metrics (Runtime.metrics_path); None: not known to have any.
    metrics_path: ClassVar[str | None] = None
    # What mtp_probe reads changes as the runtime serves (Runtime.reprobe_mtp); those whose does
    # say so.
    reprobe_mtp: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.attention = attention_markers(cls.observers)
        cls.mtp_support = REGISTRY.get(cls.name, REGISTRY["openai"])

    def observe(self, obj: dict[str, Any], report: Report) -> None:
        """Fill ``report`` from one response object or stream chunk: every observer."""
        for observer in self.observers:
            observer.read(obj, report)

    def exposition(self, body: bytes) -> str:
        return body.decode()  # the text format is UTF-8; anything else is a UnicodeDecodeError

    async def probe(self, http: BackendHTTP, *, discover: bool) -> Probe:
        try:
            if self.health_path is not None:
                status, _ = await http.get(self.health_path)
                if status != 200:
                    return Probe(False, f"{self.health_path} answered HTTP {status}")
            version = await self._version(http)
            models = None
            if discover or self.health_path is None:
                status, data = await http.get("/v1/models")
                if status != 200:
                    return Probe(False, f"/v1/models answered HTTP {status}")
                models = model_ids(data) if discover else None
        except PROBE_ERRORS as exc:
            return Probe(False, describe(exc))
        return Probe(True, models=models, version=version)

    async def _version(self, http: BackendHTTP) -> str | None:
        if self.version_path is None:
            return None
        status, data = await http.get(self.version_path)
        return self.version_from(data) if status == 200 else None

    def version_from(self, data: Any) -> str | None:
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version is not None else None

    async def show(self, http: BackendHTTP, model: str) -> dict[str, Any] | None:
        return None

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[detect.Trained | None, Evidence]:
        return None, NO_EVIDENCE

    def relays(self, native: Native) -> bool:
        return True

    def prepare(self, req: ApiRequest) -> Upstream:
        if req.endpoint.relay:  # the rest of the local API: as it came, to the same path
            if req.form is not None:
                return Upstream(req.endpoint.path, req.form.body(req.payload["model"]), req.form.content_type)
            return Upstream(req.endpoint.path, req.body())
        if req.relayed:  # the client's own request, to the runtime's own route for its API
            assert req.native is not None  # (its usage is always in it: no stream_options)
            return Upstream(req.native.path, req.native.body(req.payload["model"]))
        payload = req.payload
        options = None
        if req.stream and not req.client_usage:  # always ask for usage: token counts are exact
            options = {**(payload.get("stream_options") or {}), "include_usage": True}
        drop = self._dropped_fields(req, payload)
        if not drop:
            body = req.body() if options is None else req.body_with("stream_options", options)
            return Upstream(req.endpoint.path, body)
        fields = {k: v for k, v in payload.items() if k not in drop}
        if options is not None:
            fields["stream_options"] = options
        return Upstream(req.endpoint.path, orjson.dumps(fields))

    def _dropped_fields(self, req: ApiRequest, payload: dict[str, Any]) -> Iterable[str]:
        if self.accepted_fields is not None:
            return payload.keys() - self.accepted_fields[req.endpoint.kind]
        return payload.keys() & self.extension_fields

    def stream_decoder(self, req: ApiRequest, report: Report, *, parse_all: bool = False,
                       texts: bool = False) -> StreamDecoder:
        if req.relayed and req.native is not None:  # the runtime's own stream in the client's API
            fields = tuple(f'"{o.field}"'.encode() for o in self.observers)
            return relay_decoder(req.native, observe_all(self.observers), report, fields)
        return SSEDecoder(observe_all(self.observers), report, parse_all, req.endpoint.kind, self.attention, texts)

    def decode_body(self, req: ApiRequest, body: bytes, report: Report) -> bytes:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if isinstance(obj, dict):
            if req.relayed and req.native is not None:
                observe_body(req.native, obj, report, self.observe)
            else:
                self.observe(obj, report)
        return body

    async def count_tokens(self, http: BackendHTTP, req: ApiRequest) -> int | None:
        """The runtime's own counting route for the client's API when relayed, else its
        ``chat_tokenize_path`` (a /tokenize that renders chat messages, vLLM's), else None."""
        if req.relayed and req.native is not None:
            data = await self._post(http, req.native.path, {**req.native.payload, "model": req.payload["model"]})
            return _count(data, "input_tokens", req.native.path)
        if self.chat_tokenize_path is None:
            return None
        payload = req.payload
        body = {"model": payload["model"], "messages": payload.get("messages") or [], "add_generation_prompt": True}
        if payload.get("tools"):
            body["tools"] = payload["tools"]
        return _count(await self._post(http, self.chat_tokenize_path, body), "count", self.chat_tokenize_path)

    async def _post(self, http: BackendHTTP, path: str, body: dict[str, Any]) -> Any:
        status, data = await http.request("POST", path, json=body)
        if status != 200:
            raise self.upstream_error(status, orjson.dumps(data) if data is not None else b"")
        return data

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        return normalise_upstream_error(status, body)

    async def load(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        raise NotImplementedError(f"{self.name} does not load models on request")

    async def unload(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        raise NotImplementedError(f"{self.name} does not unload models on request")

    async def loaded(self, http: BackendHTTP, models: tuple[str, ...]) -> bool | None:
        return None
