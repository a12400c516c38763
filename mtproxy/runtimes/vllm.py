"""vLLM.

Source: vllm-project/vllm vllm/entrypoints/openai/api_server.py (/health, /version),
protocol.py (ErrorResponse {"error": {message, type, param, code}}; older releases flat).
- per-request `metrics` (opt-in): time_to_first_token_ms, generation_time_ms, …, and
  `metrics.speculative_decoding` {num_draft_tokens, num_accepted_draft_tokens,
  mean_acceptance_length, …} — on the body, or on the usage chunk when streaming;
- usage in streams only with stream_options.include_usage.
"""

from __future__ import annotations

import re
from typing import Any

from ..mtp import detect
from ..mtp.detect import Trained
from ..mtp.state import NO_EVIDENCE, Evidence
from ..stream.events import Report
from ..stream.tap import Observer
from .base import PROBE_ERRORS, BackendHTTP, as_float, as_int
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
            report.tokens_per_step = as_float(spec.get("mean_acceptance_length"))


class VLLM(OpenAICompatible):
    name = "vllm"
    observers = (USAGE, Observer("metrics", observe_metrics))  # per-request metrics, with speculative_decoding
    health_path = "/health"
    version_path = "/version"
    chat_tokenize_path = "/tokenize"  # {"model", "messages", "add_generation_prompt"} -> {"count"}

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
