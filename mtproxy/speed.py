"""Live speed estimates per backend × model, for routing by measured speed (``routing.balance:
fastest``) and for telling whether MTP pays (``routing.mtp: prefer``); see router.py.

Each estimate is a peak-EWMA, as Finagle and Linkerd balance on latency: an observation above
the current value replaces it at once, one below pulls it down with the time-based weight
``exp(-dt / decay_seconds)`` (dt: since the previous observation), so a backend that slows down
is seen at its first slow answer and one that recovers within about ``decay_seconds``, however
many requests that takes. Tokens per step is a plain time-weighted EWMA. An estimate older than
``routing.max_age_seconds`` counts as unknown (the router probes it with real traffic).
"""

from __future__ import annotations

from math import exp

# MTP pays when the backend's measured tokens per step is above this (it drafts and accepts)...
PAYS_TOKENS_PER_STEP = 1.05
# ...and its decode rate is at least this share of the fastest candidate's without MTP active
# (closer than that is measurement noise: equal)
PAYS_RATE_SHARE = 0.9


class Speed:
    """One backend's measured speed for one model, updated when a request to it finishes."""

    __slots__ = ("ttft", "per_token", "unary", "per_step", "at", "count", "probed")

    def __init__(self) -> None:
        # streams: seconds from sent upstream to the first content chunk, and per output token
        # after it (the decode rate's inverse)
        self.ttft: float | None = None
        self.per_token: float | None = None
        self.unary: float | None = None  # non-streaming answers: seconds per output token, prefill included
        self.per_step: float | None = None  # output tokens per decode step (~1 without speculation)
        self.at = 0.0  # perf_counter() of the last observation
        self.count = 0  # observations
        self.probed = -1e18  # perf_counter() of the last probe sent (router.py)

    # One answer's figures, the peak-EWMA written out, once per request: a stream's (per_token,
    # per_step: None when not measured) and a non-streaming answer's, each updating only its own
    # estimates. The time weight is taken once, and 1 - w with it.

    def stream(self, now: float, decay: float, ttft: float, per_token: float | None,
               per_step: float | None) -> None:
        count = self.count
        self.count = count + 1
        if not count:
            self.at, self.ttft, self.per_token, self.per_step = now, ttft, per_token, per_step
            return
        w = exp((self.at - now) / decay)
        v = 1.0 - w
        self.at = now
        old = self.ttft
        self.ttft = ttft if old is None or ttft >= old else old * w + ttft * v
        if per_token is not None:
            old = self.per_token
            self.per_token = per_token if old is None or per_token >= old else old * w + per_token * v
        if per_step is not None:
            old = self.per_step
            self.per_step = per_step if old is None else old * w + per_step * v

    def unary_answer(self, now: float, decay: float, unary: float, per_step: float | None) -> None:
        count = self.count
        self.count = count + 1
        if not count:
            self.at, self.unary, self.per_step = now, unary, per_step
            return
        w = exp((self.at - now) / decay)
        v = 1.0 - w
        self.at = now
        old = self.unary
        self.unary = unary if old is None or unary >= old else old * w + unary * v
        if per_step is not None:
            old = self.per_step
            self.per_step = per_step if old is None else old * w + per_step * v

    def fresh(self, now: float, max_age: float) -> bool:
        return self.count > 0 and now - self.at <= max_age

    def seconds(self, tokens: float) -> float:
        """Expected seconds for a request of ``tokens`` output tokens, alone on the backend:
        from its streams where measured, else from its non-streaming answers."""
        ttft, per_token = self.ttft, self.per_token
        if per_token is None:
            unary = self.unary
            if unary is not None:
                return tokens * unary
            per_token = 0.0
        return (ttft if ttft is not None else 0.0) + tokens * per_token

    @property
    def decode_rate(self) -> float | None:
        per_token = self.per_token
        return 1.0 / per_token if per_token else None


def expected_tokens(payload: dict) -> int:
    """The output tokens a request asks for at most (``max_tokens``, ``max_completion_tokens``),
    0 when it does not say."""
    n = payload.get("max_tokens")
    if n is None:
        n = payload.get("max_completion_tokens")
    return n if n.__class__ is int and n > 0 else 0
