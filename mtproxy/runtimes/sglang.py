"""SGLang.

Source: sgl-project/sglang python/sglang/srt/entrypoints/http_server.py (/health,
/server_info), srt/entrypoints/openai/protocol.py (flat ErrorResponse {"object":"error",
"message","type","param","code"}).
- version: GET /server_info → "version" (with the server args, e.g. speculative_algorithm,
  and internal_states[].avg_spec_accept_length);
- usage in streams only with stream_options.include_usage.
- native_apis {}: the repository has python/sglang/srt/entrypoints/anthropic/ (/v1/messages and
  /count_tokens, PR #18630, opened 2026-02-11) and srt/entrypoints/openai/serving_responses.py,
  but the first release serving either is not determined (docs/client-apis-wire.md §3.1), and a
  declaration needs one: every request is translated until it is.
"""

from __future__ import annotations

from typing import Any

from ..mtp import detect
from ..mtp.detect import Trained
from ..mtp.state import NO_EVIDENCE, Evidence
from .base import PROBE_ERRORS, BackendHTTP
from .openai_compat import OpenAICompatible

# NEXTN is an alias of EAGLE; with no separate draft model SGLang drafts with the model's own
# NextN/MTP layers (docs/advanced_features/speculative_decoding.md).
_MTP_ALGORITHMS = {"EAGLE", "NEXTN"}


def speculative_evidence(info: dict[str, Any]) -> Evidence:
    algorithm = info.get("speculative_algorithm")
    if not algorithm:
        return Evidence(mtp=False, speculating=False, why="/server_info speculative_algorithm = null")
    draft = info.get("speculative_draft_model_path")
    accept = [s.get("avg_spec_accept_length") for s in info.get("internal_states") or ()
              if isinstance(s, dict) and s.get("avg_spec_accept_length") is not None]
    why = f"/server_info speculative_algorithm = {algorithm}" + (
        f", avg_spec_accept_length = {accept[0]:.2f}" if accept else "")
    own_head = not draft or draft == info.get("model_path")
    if str(algorithm).upper() in _MTP_ALGORITHMS and own_head:
        return Evidence(mtp=True, speculating=True, why=why)
    return Evidence(mtp=False, speculating=True, why=f"{why}, draft model {draft}: not the model's MTP layers")


class SGLang(OpenAICompatible):
    name = "sglang"
    health_path = "/health"
    version_path = "/server_info"
    metrics_path = "/metrics"  # Prometheus text, with --enable-metrics
    reprobe_mtp = True  # /server_info, again if it did not answer at start-up

    async def mtp_probe(self, http: BackendHTTP, model: str) -> tuple[Trained | None, Evidence]:
        try:
            status, info = await http.get("/server_info")
        except PROBE_ERRORS:
            return None, NO_EVIDENCE
        if status != 200 or not isinstance(info, dict):
            return None, NO_EVIDENCE
        trained = None
        if isinstance(info.get("model_path"), str):
            found = await detect.from_path_async(info["model_path"])  # a local checkpoint directory
            if found is not None:
                trained = Trained(found.mtp, "runtime", f"/server_info model_path: {found.why}")
        return trained, speculative_evidence(info)
