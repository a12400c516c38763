"""Whether a backend is actually running MTP for a model: ``active``, ``capable`` or ``off``.

Evidence, strongest first: the runtime's own report (probe: llama.cpp /slots speculative types,
SGLang speculative_algorithm, vLLM spec_decode counters, Ollama draft_num_predict) and what its
responses carry (draft/accepted tokens, tokens per iteration); then the registry's support row
and the version the backend reports. The config flag ``backends[].mtp`` states intent only: the
evidence wins, and a disagreement is logged and exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .detect import family_of
from .registry import Support

State = Literal["active", "capable", "off"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a runtime said about speculative decoding for one model. None: it did not say."""

    mtp: bool | None = None  # MTP drafting specifically is on / off
    speculating: bool | None = None  # some speculative decoding is on (maybe not MTP)
    why: str = ""


NO_EVIDENCE = Evidence()


@dataclass(frozen=True, slots=True)
class MtpStatus:
    state: State
    why: str
    configured: bool | None = None  # backends[].mtp
    mismatch: bool = False  # configured intent and evidence disagree

    @property
    def on(self) -> bool:
        return self.state == "active"


def decide(support: Support, version: str | None, model: str, trained: bool | None, probe: Evidence,
           live: Evidence, configured: bool | None) -> MtpStatus:
    """The MTP state of ``model`` on a backend whose runtime has ``support`` (its registry row)."""
    state, why = _state(support, version, model, trained, probe, live, configured)
    mismatch = configured is not None and configured != (state == "active")
    if mismatch:
        why += (f"; config says mtp: {str(configured).lower()}, "
                f"{'but the runtime shows no MTP drafting' if configured else 'but the runtime is drafting'}")
    return MtpStatus(state, why, configured, mismatch)


def _state(support, version, model, trained, probe, live, configured) -> tuple[State, str]:
    if trained is False:
        return "off", f"{model} is not MTP-trained"
    if probe.mtp is True:
        if live.mtp is False:
            return "capable", f"{probe.why}, but {live.why}"
        return "active", probe.why
    if live.mtp is True and probe.mtp is None:
        return "active", live.why
    if support.level == "no":
        return "off", f"{support.runtime} has no MTP: {support.switch}"
    family = family_of(model)
    if support.level == "some" and family and any(f in family.lower() for f in support.not_families):
        return "off", f"{support.runtime} does not run MTP for {family}"
    ok = support.version_ok(version)
    if ok is False:
        return "off", f"{support.runtime} {version} predates MTP support ({support.since})"
    if support.level == "unknown":
        if configured:
            return "capable", "configured for MTP; this runtime cannot be probed"
        return "off", "a generic OpenAI-compatible server: MTP cannot be seen"
    detail = probe.why or live.why
    if probe.mtp is False or probe.speculating is False:
        return "capable", f"supported{_since(support, version)}, but the runtime reports it off ({detail})"
    return "capable", f"supported{_since(support, version)}, not shown to be on" + (f" ({detail})" if detail else "")


def _since(support, version) -> str:
    if support.since and version:
        return f" ({version} >= {support.since})"
    if support.since:
        return f" from {support.since}; version not reported"
    return ""


# The live signal: this many requests in a row averaging about one token per step, with no
# accepted drafts, say MTP is not working whatever the runtime's settings claim.
LIVE_WINDOW = 5
ONE_TOKEN_PER_STEP = 1.1


def live_evidence(report, recent) -> Evidence | None:
    """What responses show about drafting: ``report`` is the last one's runtime report
    (``runtimes.base.Report``), ``recent`` the last requests' (tokens per step measured by the
    proxy, accepted drafts reported by the runtime)."""
    if report.accepted_tokens:
        return Evidence(mtp=True, speculating=True,
                        why=f"responses carry accepted drafts ({report.accepted_tokens} of "
                            f"{report.draft_tokens} in the last)")
    if report.tokens_per_step is not None and report.tokens_per_step > 1.05:
        return Evidence(mtp=True, speculating=True,
                        why=f"the runtime reports {report.tokens_per_step:.2f} tokens per iteration")
    if len(recent) < LIVE_WINDOW:
        return None
    total = 0.0
    for tps, accepted in recent:  # runs once per request: no generators
        if accepted:
            return None
        total += tps
    mean = total / len(recent)
    if mean >= ONE_TOKEN_PER_STEP:
        return None
    return Evidence(mtp=False, speculating=False,
                    why=f"the last {len(recent)} requests show {mean:.2f} tokens per step and no accepted drafts")
