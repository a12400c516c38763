"""llama.cpp's llama-server.

Source: ggml-org/llama.cpp tools/server (server.cpp, README.md); real captures of build
b1-0c1e570 in tests/data/llamacpp/ (SOURCE.md).
- health: GET /health → 200 {"status":"ok"}, 503 while the model loads;
- version: GET /props → "build_info": "b<N>-<hash>"; the embedded runtime (mtproxy/embedded.py,
  xllamacpp) reports "b0-unknown" there and the llama.cpp build it packages in
  ui_settings["mtproxy"]["build_info"] ("b11549 (xllamacpp 2026.10.11549)"), which wins;
- every response carries `timings` {prompt_n, prompt_ms, predicted_n, predicted_ms, …, and with
  speculation draft_n, draft_n_accepted}; in streams on the usage chunk, or on the finish chunk
  when usage was not asked for. Nothing more per request: verification steps and acceptance by
  position are engine-wide only (/metrics llamacpp:spec_decode_num_drafts_total,
  ..._num_accepted_tokens_per_pos_total; server-common.cpp result_timings::to_json writes draft_n
  and draft_n_accepted alone, in the test build b1-0c1e570 and the stored upstream tree);
- errors: {"error": {"code", "message", "type"}};
- Anthropic Messages served natively: POST /v1/messages and /v1/messages/count_tokens (PR #17570,
  merged 2025-11-28; the build number is not recorded, so every build is taken to serve it; both
  b1-0c1e570 and the embedded b11549 do). Its converter (tools/server/server-chat.cpp
  server_chat_convert_anthropic_to_oai) turns tool_choice {"type":"tool"} into "required" and
  drops {"type":"none"} and disable_parallel_tool_use: such requests are translated instead.
  Its stream carries usage and no timings.
- router mode (llama-server started without -m/-hf, with --models-dir / --models-preset; PR #17470,
  tools/server/server-models.cpp, server.cpp): POST /models/load {"model"} answers
  {"success": true} at once, the model's status already "loading" (404 "model is not found", 400
  "model is already running"); POST /models/unload {"model"} likewise (400 "model is not
  running"). GET /models lists each model with "status": {"value": "unloaded" | "loading" |
  "loaded" | "sleeping" | "downloading" | …}; a load that failed reads "unloaded" with "failed":
  true and the "exit_code" of the model's process. A single-model server has no /models/load
  (404). A request for an unloaded model loads it (unless --no-models-autoload).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson

from ..embedded import UI_KEY
from ..errors import UpstreamError
from ..mtp import detect
from ..mtp.detect import Trained
from ..mtp.registry import version_key
from ..mtp.state import NO_EVIDENCE, Evidence
from ..stream.events import Report
from ..stream.tap import Observer
from ..wire import ApiRequest, Native
from .base import (
    POLL_SECONDS,
    PROBE_ERRORS,
    SWAP_REQUEST_SECONDS,
    BackendHTTP,
    SwapFailed,
    as_float,
    as_int,
    runtime_words,
    swap_request,
)
from .openai_compat import USAGE, OpenAICompatible


def observe_timings(timings: Any, report: Report) -> None:
    """llama.cpp's ``timings``: prompt and decode figures, and draft counts with speculation."""
    if timings.__class__ is not dict:
        return
    prompt_n = as_int(timings.get("prompt_n"))
    if prompt_n is not None and report.prompt_tokens is None:
        report.prompt_tokens = prompt_n
    predicted_n = as_int(timings.get("predicted_n"))
    if predicted_n is not None and report.completion_tokens is None:
        report.completion_tokens = predicted_n
    prompt_ms = as_float(timings.get("prompt_ms"))
    if prompt_ms is not None:
        report.prompt_seconds = prompt_ms / 1000
    predicted_ms = as_float(timings.get("predicted_ms"))
    if predicted_ms is not None:
        report.decode_seconds = predicted_ms / 1000
    draft_n = as_int(timings.get("draft_n"))
    if draft_n is not None:
        report.draft_tokens = draft_n
        report.accepted_tokens = as_int(timings.get("draft_n_accepted"))
    elif predicted_n is not None:
        # llama-server writes draft_n / draft_n_accepted only when the request drafted something
        # (tools/server/server-common.cpp, `if (n_draft_tokens > 0)`): without them every decode
        # step yielded one token, exactly
        report.tokens_per_step = 1.0


TIMINGS = Observer("timings", lambda obj, report: observe_timings(obj.get("timings"), report))


class LlamaCpp(OpenAICompatible):
    name = "llamacpp"
    observers = (USAGE, TIMINGS)  # timings: prompt/decode figures and draft counts
    health_path = "/health"
    version_path = "/props"
    metrics_path = "/metrics"  # Prometheus text, with --metrics (404 without)
    # /v1/messages (+ /count_tokens) and /v1/responses (tools/server/server.cpp, both converted to
    # chat there; first builds not recorded: every build is taken to serve them, and a route that
    # answers 404/405 takes its API off for the backend: proxy._lacks_route)
    native_apis: ClassVar[dict[str, str]] = {"messages": "", "responses": ""}
    swaps = True  # in router mode (/models/load, /models/unload); a single-model server refuses
    reprobe_mtp = True  # /slots shows the speculative types once a slot has run a task

    def relays(self, native: Native) -> bool:
        if native.kind != "messages" or native.path.endswith("/count_tokens"):
            return True  # counting needs no more than the prompt
        choice = native.payload.get("tool_choice")
        if isinstance(choice, dict) and (choice.get("type") in ("tool", "none") or choice.get("disable_parallel_tool_use")):
            return False  # llama-server's converter loses these
        return True

    async def count_tokens(self, http: BackendHTTP, req: ApiRequest) -> int | None:
        """Its native counting route; else the chat template applied (/apply-template) and the
        text tokenized (/tokenize): an approximation of the prompt the model would see."""
        if req.relayed:
            return await super().count_tokens(http, req)
        body = {k: v for k, v in req.payload.items() if k in ("messages", "tools")}
        prompt = (await self._post(http, "/apply-template", body) or {}).get("prompt")
        tokens = None
        if isinstance(prompt, str):
            tokens = (await self._post(http, "/tokenize", {"content": prompt, "add_special": True,
                                                          "parse_special": True}) or {}).get("tokens")
        if not isinstance(tokens, list):
            raise UpstreamError("The backend's /apply-template or /tokenize answered unexpectedly.", status=502)
        return len(tokens)

    def version_from(self, data: Any) -> str | None:
        if not isinstance(data, dict):
            return None
        build = data.get("build_info")
        build = build if isinstance(build, str) and build else None
        if build is not None and version_key(build) is not None:
            return build
        ui = data.get("ui_settings")  # no release number: the embedded runtime says what it packages
        embedded = ui.get(UI_KEY) if isinstance(ui, dict) else None
        packaged = embedded.get("build_info") if isinstance(embedded, dict) else None
        return packaged if isinstance(packaged, str) and packaged else build

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[Trained | None, Evidence]:
        return await _props_probe(http)

    async def load(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        for model in models:
            await _router_post(http, "/models/load", model)
        for model in models:  # the router loads them side by side
            while (state := await _router_state(http, model)).get("value") not in _LOADED:
                if state.get("value") == "unloaded":
                    if state.get("failed"):
                        raise SwapFailed(f"llama-server could not load {model}: its process exited with code "
                                         f"{state.get('exit_code')} (GET /models: status unloaded, failed)")
                    raise SwapFailed(f"llama-server unloaded {model} while it was loading")
                await asyncio.sleep(POLL_SECONDS)

    async def unload(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        for model in models:
            await _router_post(http, "/models/unload", model)
        for model in models:  # "unloaded" once its process has exited
            while (await _router_state(http, model)).get("value") != "unloaded":
                await asyncio.sleep(POLL_SECONDS)

    async def loaded(self, http: BackendHTTP, models: tuple[str, ...]) -> bool | None:
        try:
            status, data = await http.get("/models")
        except PROBE_ERRORS:
            return None
        states = _router_states(data) if status == 200 else None
        if states is None:
            return None  # not a router: its one model is loaded while it is up
        return all(states.get(model, {}).get("value") in _LOADED for model in models)


def _types_evidence(types: str, where: str) -> Evidence:
    kinds = [t.strip() for t in types.split(",") if t.strip() and t.strip() != "none"]
    if any("mtp" in k for k in kinds):
        return Evidence(mtp=True, speculating=True, why=f"{where} speculative.types = {types}")
    if kinds:
        return Evidence(mtp=False, speculating=True, why=f"{where} speculative.types = {types}: not MTP")
    return NO_EVIDENCE


def speculative_evidence(props: Any, slots: Any = None) -> Evidence:
    """What llama-server says about speculation.

    /slots is the reliable source: each slot has "speculative": true|false from the start, and
    once it has run a task its params["speculative.types"] reads e.g. "none,draft-mtp". /props
    default_generation_settings.params["speculative.types"] reads "none" whatever the flags in
    build b1-0c1e570 (get_res_props in tools/server/server-context.cpp copies only the sampling
    settings), so there "none" is no evidence; anything else is.
    """
    if isinstance(slots, list) and slots:
        for slot in slots:
            types = ((slot or {}).get("params") or {}).get("speculative.types") if isinstance(slot, dict) else None
            if isinstance(types, str):
                found = _types_evidence(types, "/slots")
                if found is not NO_EVIDENCE:
                    return found
        flags = [s.get("speculative") for s in slots if isinstance(s, dict)]
        if flags and all(f is False for f in flags):
            return Evidence(mtp=False, speculating=False, why="/slots: speculative decoding is off")
        if any(f is True for f in flags):
            return Evidence(speculating=True, why="/slots: speculative decoding is on (type not shown yet)")
    params = ((props or {}).get("default_generation_settings") or {}).get("params") or {}
    types = params.get("speculative.types")
    return _types_evidence(types, "/props") if isinstance(types, str) else NO_EVIDENCE


async def _props_probe(http: BackendHTTP) -> tuple[Trained | None, Evidence]:
    try:
        status, props = await http.get("/props")
    except PROBE_ERRORS:
        return None, NO_EVIDENCE
    if status != 200 or not isinstance(props, dict):
        return None, NO_EVIDENCE
    trained = None
    path = props.get("model_path")
    if isinstance(path, str) and path:  # readable when the runtime runs on this machine
        trained = await detect.from_path_async(path)
        if trained is not None:
            trained = Trained(trained.mtp, "runtime", f"/props model_path: {trained.why}")
    try:
        status, slots = await http.get("/slots")  # off with --no-slots
    except PROBE_ERRORS:
        slots = None
    return trained, speculative_evidence(props, slots if status == 200 else None)


# A sleeping model's process is still running and counts towards --models-max; a request wakes it.
_LOADED = ("loaded", "sleeping")


def _router_states(data: Any) -> dict[str, dict[str, Any]] | None:
    """Each model's (and alias's) status object from a router's GET /models; None: no status
    objects (a single-model server)."""
    entries = data.get("data") if isinstance(data, dict) else None
    states: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else ():
        state = entry.get("status") if isinstance(entry, dict) else None
        if isinstance(state, dict) and isinstance(entry.get("id"), str):
            aliases = entry.get("aliases")
            for name in (entry["id"], *(aliases if isinstance(aliases, list) else ())):
                states[str(name)] = state
    return states or None


async def _router_state(http: BackendHTTP, model: str) -> dict[str, Any]:
    status, body = await swap_request(http, "GET", "/models")
    try:
        states = _router_states(orjson.loads(body)) if status == 200 else None
    except orjson.JSONDecodeError:
        states = None
    if states is None:
        raise SwapFailed(f"llama-server is not in router mode: its GET /models (HTTP {status}) has no model "
                         "status; start it without -m/-hf, with --models-dir or --models-preset")
    if model not in states:
        raise SwapFailed(f"llama-server's router does not list {model} (GET /models)")
    return states[model]


async def _router_post(http: BackendHTTP, path: str, model: str) -> None:
    # the router answers once the process is started; at --models-max it first stops the least
    # recently used model, and waits for that
    status, body = await swap_request(http, "POST", path, {"model": model}, timeout=SWAP_REQUEST_SECONDS)
    if status == 200:
        return
    refused = runtime_words("POST", path, status, body)
    try:
        state = (await _router_state(http, model)).get("value")
    except SwapFailed as exc:  # not a router (no such route: 404), or no such model
        raise SwapFailed(f"{exc.message} ({refused})") from None
    if (path == "/models/load" and state in ("loading", *_LOADED)) or (path == "/models/unload" and state == "unloaded"):
        return  # already on its way: "model is already running" / "model is not running"
    raise SwapFailed(f"llama-server refused: {refused}")
