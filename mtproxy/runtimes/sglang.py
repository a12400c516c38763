"""SGLang.

Source: sgl-project/sglang python/sglang/srt/entrypoints/http_server.py (/health,
/server_info), srt/entrypoints/openai/protocol.py (flat ErrorResponse {"object":"error",
"message","type","param","code"}).
- version: GET /server_info → "version" (with the server args, e.g. speculative_algorithm,
  and internal_states[].avg_spec_accept_length);
- usage in streams only with stream_options.include_usage; `usage.reasoning_tokens` (SGLang's own
  place for it, 0 without reasoning); newer releases put speculative counts in
  `usage.completion_tokens_details` {accepted_prediction_tokens, rejected_prediction_tokens}
  (entrypoints/openai/usage_processor.py `_details_if_spec`: correct / proposed − correct drafts);
- per-request speculative figures in `meta_info` (the native /generate; on an OpenAI chat choice
  when the client asks `return_meta_info`): spec_verify_ct (verification steps),
  spec_accept_length (completion tokens / steps), spec_num_correct_drafts (older:
  spec_accepted_tokens) of spec_num_proposed_drafts, spec_acceptance_histogram (index j: the steps
  that accepted exactly j drafts; managers/schedule_batch.py Req.update_spec_acceptance_histogram).
  The proxy reads them where the answer carries them and never asks for them (that would change
  the client's answer).
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
from ..stream.events import Report
from ..stream.tap import Observer
from .base import PROBE_ERRORS, BackendHTTP, accepted_by_position, as_float, as_int
from .openai_compat import OpenAICompatible, observe_usage

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


def _first_int(data: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = as_int(data.get(key))
        if value is not None:
            return value
    return None


def observe_meta_info(meta: Any, report: Report) -> None:
    """SGLang's per-request ``meta_info``: its speculative decoding figures."""
    if meta.__class__ is not dict:
        return
    rounds = as_int(meta.get("spec_verify_ct"))
    if not rounds:  # absent, or 0: nothing was verified (no speculation)
        return
    report.draft_rounds = rounds
    accepted = _first_int(meta, "spec_num_correct_drafts", "spec_accepted_drafts", "spec_accepted_tokens")
    if accepted is not None:
        report.accepted_tokens = accepted
    drafted = _first_int(meta, "spec_num_proposed_drafts", "spec_draft_token_num")
    if drafted is not None:
        report.draft_tokens = drafted
    length = as_float(meta.get("spec_accept_length"))
    if length is not None:
        report.tokens_per_step = length
    positions = accepted_by_position(meta.get("spec_acceptance_histogram"))
    if positions is not None:
        report.accepted_by_position = positions


def observe_answer(obj: dict[str, Any], report: Report) -> None:
    """OpenAI usage, SGLang's ``usage.reasoning_tokens`` and speculative counts, and a choice's
    (or the answer's) ``meta_info``: all on the events that carry usage, and on whole answers."""
    observe_usage(obj, report)
    usage = obj.get("usage")
    if usage.__class__ is dict:
        reasoning = as_int(usage.get("reasoning_tokens"))
        if reasoning is not None:
            report.reasoning_tokens = reasoning
        details = usage.get("completion_tokens_details")
        if details.__class__ is dict:
            accepted = as_int(details.get("accepted_prediction_tokens"))
            rejected = as_int(details.get("rejected_prediction_tokens"))
            if accepted is not None and rejected is not None:
                report.accepted_tokens, report.draft_tokens = accepted, accepted + rejected
    observe_meta_info(obj.get("meta_info"), report)
    choices = obj.get("choices")
    if choices.__class__ is list and choices and choices[0].__class__ is dict:
        observe_meta_info(choices[0].get("meta_info"), report)


class SGLang(OpenAICompatible):
    name = "sglang"
    # usage, and the speculative figures that come with it (no marker of their own: one scan less
    # of every relayed byte; SGLang writes meta_info on whole answers)
    observers = (Observer("usage", observe_answer),)
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
