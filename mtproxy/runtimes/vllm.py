"""vLLM.

Source: vllm-project/vllm vllm/entrypoints/openai/api_server.py (/health, /version),
protocol.py (ErrorResponse {"error": {message, type, param, code}}; older releases flat).
- per-request `metrics` (opt-in): time_to_first_token_ms, generation_time_ms, …, and
  `metrics.speculative_decoding` (SpeculativeDecodingMetrics in
  vllm/entrypoints/generate/base/protocol.py, `--per-request-spec-decode-metrics summary|detailed`)
  {num_draft_tokens, num_accepted_draft_tokens, num_spec_steps (verification steps),
  mean_acceptance_length (1 + accepted / steps), draft_acceptance_rate, acceptance_histogram
  (index j: the steps that accepted exactly j drafts, length num_spec_tokens + 1), and at
  `detailed` per_step_accepted / per_step_drafted} — on the body, or on the usage chunk when
  streaming;
- reasoning: chat deltas carry `reasoning` (`reasoning_content` before), usage
  `completion_tokens_details.reasoning_tokens` where reported;
- usage in streams only with stream_options.include_usage.
- OpenAI Responses served natively: POST /v1/responses (vllm/entrypoints/openai/serving_responses.py,
  documented from v0.10.0: https://docs.vllm.ai/en/v0.10.0/api/vllm/entrypoints/openai/serving_responses.html,
  absent from v0.9.2's docs). Streaming for models other than gpt-oss came with PR #23741 (merged
  2025-08-27, after v0.10.1): 0.10.2 is the first release relayed. Stateless as relayed: `store`
  is ignored unless VLLM_ENABLE_RESPONSES_API_STORE is set (responses/serving.py), and the proxy
  puts the turns of previous_response_id in front of the input itself (front/responses.py);
  `background` needs that store (400 without it): such requests are translated. Usage on the
  Response (`usage.input_tokens`/`output_tokens`), on `response.completed` when streamed.
- Anthropic Messages served natively: POST /v1/messages (vllm/entrypoints/anthropic/, documented
  from v0.11.1: https://docs.vllm.ai/en/v0.11.1/api/vllm/entrypoints/anthropic/; PR #27882 put it
  on `vllm serve`). Its request model (anthropic/protocol.py AnthropicMessagesRequest) has no
  `thinking` and no tool_choice.disable_parallel_tool_use (ignored), no "document" block (400),
  ignores tool_result.is_error, and its stream never reports stop_reason "stop_sequence"
  (anthropic/serving.py stop_reason_map): requests with any of these are translated. Usage on
  message_start (input) and message_delta (input and output). /v1/messages/count_tokens came
  later (listed by the v0.32.0 docs, not v0.22.1): /tokenize counts in every version instead.
- sleep mode (vllm/entrypoints/serve/sleep/api_router.py; routes only with VLLM_SERVER_DEV_MODE=1,
  sleeping only with --enable-sleep-mode): POST /sleep?level=1&mode=… answers 200 once asleep
  (level 1: weights offloaded to CPU RAM, KV cache dropped; mode abort | wait | keep, how running
  requests are treated: vllm/v1/engine/core.py pause_scheduler), POST /wake_up answers 200 once
  awake, GET /is_sleeping {"is_sleeping": bool}. Without dev mode the routes answer 404. A
  request to a sleeping engine waits in its paused scheduler until it wakes (older releases
  crashed: vllm-project/vllm#15483). It serves one model: the names are not needed.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar

import orjson

from ..mtp import detect
from ..mtp.detect import Trained
from ..mtp.state import NO_EVIDENCE, Evidence
from ..stream.events import Report
from ..stream.tap import Observer
from ..wire import Native
from .base import (
    POLL_SECONDS,
    PROBE_ERRORS,
    SWAP_REQUEST_SECONDS,
    BackendHTTP,
    SwapFailed,
    accepted_by_position,
    accepted_by_position_of_steps,
    as_float,
    as_int,
    runtime_words,
    swap_request,
)
from .native import message_blocks, tool_choice
from .openai_compat import USAGE, OpenAICompatible

_DRAFTS = re.compile(r"^vllm:spec_decode_num_draft_tokens_total(?:\{[^}]*\})?\s+([0-9.eE+]+)", re.M)
_ACCEPTED = re.compile(r"^vllm:spec_decode_num_accepted_tokens_total(?:\{[^}]*\})?\s+([0-9.eE+]+)", re.M)


def spec_decode_evidence(metrics_text: str) -> Evidence:
    """vLLM registers its spec_decode counters only when speculative decoding is configured;
    drafted tokens > 0 show it has been drafting since the process started."""
    drafts = [float(v) for v in _DRAFTS.findall(metrics_text)]
    if not drafts:
        return Evidence(mtp=False, speculating=False, why="/metrics has no spec_decode counters")
    accepted = sum(float(v) for v in _ACCEPTED.findall(metrics_text))
    total = sum(drafts)
    if total > 0:
        return Evidence(mtp=True, speculating=True,
                        why=f"/metrics spec_decode: {total:.0f} draft tokens, {accepted:.0f} accepted")
    return Evidence(speculating=True, why="/metrics spec_decode counters present, no drafts yet")


def observe_metrics(obj: dict[str, Any], report: Report) -> None:
    """vLLM's per-request ``metrics``: generation time and speculative decoding counts."""
    metrics = obj.get("metrics")
    if isinstance(metrics, dict):
        generation_ms = as_float(metrics.get("generation_time_ms"))
        if generation_ms is not None:
            report.decode_seconds = generation_ms / 1000
        spec = metrics.get("speculative_decoding")
        if isinstance(spec, dict):
            report.draft_tokens = as_int(spec.get("num_draft_tokens"))
            report.accepted_tokens = as_int(spec.get("num_accepted_draft_tokens"))
            report.draft_rounds = as_int(spec.get("num_spec_steps"))
            report.tokens_per_step = as_float(spec.get("mean_acceptance_length"))
            report.accepted_by_position = (accepted_by_position(spec.get("acceptance_histogram"))
                                           or accepted_by_position_of_steps(spec.get("per_step_accepted")))


class VLLM(OpenAICompatible):
    name = "vllm"
    observers = (USAGE, Observer("metrics", observe_metrics))  # per-request metrics, with speculative_decoding
    health_path = "/health"
    version_path = "/version"
    metrics_path = "/metrics"  # Prometheus text (vllm/v1/metrics/loggers.py)
    chat_tokenize_path = "/tokenize"  # {"model", "messages", "add_generation_prompt"} -> {"count"}
    # the first release serving each (the module docstring has the sources)
    native_apis: ClassVar[dict[str, str]] = {"messages": "0.11.1", "responses": "0.10.2"}

    def relays(self, native: Native) -> bool:
        payload = native.payload
        if native.kind == "responses":
            return not payload.get("background")  # needs vLLM's own store, off by default
        if native.path.endswith("/count_tokens"):
            return False  # /tokenize counts exactly, in releases without the route too
        if payload.get("thinking") is not None or payload.get("stop_sequences"):
            return False  # thinking ignored; a stop sequence reported as end_turn
        if tool_choice(payload).get("disable_parallel_tool_use"):
            return False
        return not any(block.get("type") == "document" or block.get("is_error") for block in message_blocks(payload))
    swaps = True  # sleep mode: /sleep and /wake_up (VLLM_SERVER_DEV_MODE=1, --enable-sleep-mode)
    reprobe_mtp = True  # the spec_decode counters stay at 0 until the first drafted answer

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[Trained | None, Evidence]:
        trained = None
        try:
            status, models = await http.get("/v1/models")
            root = next((m.get("root") for m in (models or {}).get("data") or ()
                         if isinstance(m, dict) and m.get("id") == model), None)
            if status == 200 and isinstance(root, str):
                found = await detect.from_path_async(root)  # a local checkpoint directory
                if found is not None:
                    trained = Trained(found.mtp, "runtime", f"/v1/models root {root}: {found.why}")
            status, text = await http.text("/metrics")
        except PROBE_ERRORS:
            return trained, NO_EVIDENCE
        return trained, spec_decode_evidence(text) if status == 200 else NO_EVIDENCE

    async def load(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        await _sleep_call(http, "/wake_up", asleep=False)

    async def unload(self, http: BackendHTTP, models: tuple[str, ...]) -> None:
        # level 1 frees the GPU and keeps the weights in CPU RAM, so waking is quick; mode "wait"
        # lets running requests finish first rather than aborting them (ignored before 0.17)
        await _sleep_call(http, "/sleep?level=1&mode=wait", asleep=True)

    async def loaded(self, http: BackendHTTP, models: tuple[str, ...]) -> bool | None:
        try:
            status, data = await http.get("/is_sleeping")
        except PROBE_ERRORS:
            return None
        sleeping = data.get("is_sleeping") if status == 200 and isinstance(data, dict) else None
        return (not sleeping) if isinstance(sleeping, bool) else None


async def _sleep_call(http: BackendHTTP, path: str, *, asleep: bool) -> None:
    """POST ``path`` (it answers once done), then wait until /is_sleeping agrees: older releases
    answered before the engine had finished."""
    status, body = await swap_request(http, "POST", path, timeout=SWAP_REQUEST_SECONDS)
    if status == 404:
        raise SwapFailed(f"vLLM serves no POST {path.partition('?')[0]}: start it with VLLM_SERVER_DEV_MODE=1 "
                         "in its environment and --enable-sleep-mode to swap it")
    if status != 200:
        raise SwapFailed(f"vLLM refused: {runtime_words('POST', path, status, body)}")
    while True:
        status, body = await swap_request(http, "GET", "/is_sleeping")
        try:
            data = orjson.loads(body) if status == 200 else None
        except orjson.JSONDecodeError:
            data = None
        sleeping = data.get("is_sleeping") if isinstance(data, dict) else None
        if not isinstance(sleeping, bool):
            raise SwapFailed(f"vLLM's GET /is_sleeping answered HTTP {status} without is_sleeping")
        if sleeping == asleep:
            return
        await asyncio.sleep(POLL_SECONDS)
