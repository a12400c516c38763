"""vLLM.

Source: vllm-project/vllm vllm/entrypoints/openai/api_server.py (/health, /version),
protocol.py (ErrorResponse {"error": {message, type, param, code}}; older releases flat).
- per-request `metrics` (opt-in): time_to_first_token_ms, generation_time_ms, …, and
  `metrics.speculative_decoding` {num_draft_tokens, num_accepted_draft_tokens,
  mean_acceptance_length, …} — on the body, or on the usage chunk when streaming;
- usage in streams only with stream_options.include_usage.
"""

from __future__ import annotations

from typing import Any

from .base import Report, as_float, as_int
from .openai_compat import OpenAICompatible, observe_usage


class VLLM(OpenAICompatible):
    name = "vllm"
    health_path = "/health"
    version_path = "/version"

    def observe(self, obj: dict[str, Any], report: Report) -> None:
        observe_usage(obj, report)
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
