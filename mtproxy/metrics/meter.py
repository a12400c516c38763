"""One request's measurement, taken from a copy of what the proxy relays (never altering it).

Definitions (../shared/reference/metrics-conventions.md):
- TTFT: from the moment the proxy received the request to the first content chunk relayed;
- inter-token latency: the gaps between content chunks;
- time per output token: (duration − TTFT) / (output tokens − 1);
- decode rate: (output tokens − 1) / (t_last − t_first);
- tokens per chunk: output tokens / content chunks;
- tokens per step: output tokens / bursts of content chunks, a new burst starting after a gap that
  is large against the typical gap (llama-server sends accepted drafts as one-token chunks back to
  back; see ../shared/reference/runtimes.md §3);
- overhead: the proxy's own time: request received → sent upstream, plus first upstream byte in →
  first byte out.
Output tokens come from the runtime's usage; a figure that needs them stays None without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtimes.base import Report

# A gap starts a new burst when it exceeds BURST_FRACTION of the typical step gap (the 90th
# percentile of gaps: with speculation most gaps are near zero, the rest are decode steps), and
# at least MIN_BURST_GAP seconds.
BURST_FRACTION = 0.25
MIN_BURST_GAP = 0.0005


def count_bursts(times: list[float], counts: list[int] | None = None) -> int:
    """Decode steps seen in the content chunks' arrival times.

    ``times`` has one entry per upstream read that carried content and ``counts`` the content
    chunks of each read; without ``counts``, one entry per chunk (chunks of one read sharing a
    time).

    Chunks closer together than the threshold belong to one step. Chunks that arrive together
    after a gap of several typical steps are several steps that queued up (a busy proxy read
    late), not one burst: such a group counts round(gap / typical step) steps, at most one per
    chunk.
    """
    if not times:
        return 0
    if counts is None:
        times, counts = group(times)
    return bursts_from_gaps([b - a for a, b in zip(times, times[1:])], counts)


def bursts_from_gaps(gaps: list[float], counts: list[int]) -> int:
    """:func:`count_bursts` from the gaps between reads and the chunks of each read."""
    if not gaps:
        return 1
    ordered = sorted(gaps)
    threshold = max(BURST_FRACTION * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], MIN_BURST_GAP)
    steps = [g for g in ordered if g > threshold]
    typical = steps[len(steps) // 2] if steps else 0.0
    n = 1
    for gap, size in zip(gaps, counts[1:]):
        if gap > threshold:
            n += min(size, max(1, round(gap / typical)))
    return n


def group(times: list[float]) -> tuple[list[float], list[int]]:
    """One time per chunk → (distinct consecutive times, chunks at each)."""
    out: list[float] = []
    counts: list[int] = []
    for t in times:
        if out and out[-1] == t:
            counts[-1] += 1
        else:
            out.append(t)
            counts.append(1)
    return out, counts


@dataclass(slots=True)
class Measurement:
    duration: float
    ttft: float | None = None
    gaps: list[float] | None = None  # between reads that carried content
    zero_gaps: int = 0  # between chunks that came in one read
    output_tokens: int | None = None
    content_chunks: int = 0
    bursts: int = 0
    time_per_output_token: float | None = None
    decode_rate: float | None = None
    tokens_per_chunk: float | None = None
    tokens_per_step: float | None = None
    overhead: float | None = None


class RequestMeter:
    """Timestamps of one request (event-loop clock, seconds) and its labels."""

    __slots__ = ("t0", "t_sent", "t_in", "t_out", "t_end", "times", "counts", "report", "status", "endpoint",
                 "stream", "backend", "runtime", "model", "mtp", "window_key", "window", "target")

    def __init__(self, t0: float, endpoint: str) -> None:
        self.t0 = t0
        self.t_sent: float | None = None  # request sent upstream (last attempt)
        self.t_in: float | None = None  # first upstream byte received
        self.t_out: float | None = None  # first byte written to the client
        self.t_end: float | None = None
        # one entry per upstream read that carried content: its time and its content chunks
        # (a runtime that sends all at once fills one read with hundreds of chunks)
        self.times: list[float] = []
        self.counts: list[int] = []
        self.report = Report()
        self.status = "200"
        self.endpoint = endpoint
        self.stream = False
        self.backend = self.runtime = self.model = "none"
        self.mtp = "off"
        self.window_key: tuple[str, str] | None = None
        self.window: Any = None
        self.target: Any = None  # the Backend chosen last

    def content(self, t: float, n: int) -> None:
        times = self.times
        if times and times[-1] == t:
            self.counts[-1] += n
        else:
            times.append(t)
            self.counts.append(n)
        if self.window is not None:
            self.window.add(self.window_key, t, n)

    def measure(self) -> Measurement:
        end = self.t_end if self.t_end is not None else self.t0
        m = Measurement(duration=end - self.t0)
        if self.t_sent is not None and self.t_in is not None and self.t_out is not None:
            m.overhead = max(0.0, self.t_sent - self.t0) + max(0.0, self.t_out - self.t_in)
        n = self.report.completion_tokens
        m.output_tokens = n
        times = self.times
        if not self.stream or not times:
            return m
        m.ttft = times[0] - self.t0
        m.gaps = [b - a for a, b in zip(times, times[1:])]
        m.content_chunks = sum(self.counts)
        m.zero_gaps = m.content_chunks - len(times)
        m.bursts = bursts_from_gaps(m.gaps, self.counts)
        if n is None or n <= 0:
            return m
        m.tokens_per_chunk = n / m.content_chunks
        m.tokens_per_step = n / m.bursts
        if n > 1:
            m.time_per_output_token = (m.duration - m.ttft) / (n - 1)
            span = times[-1] - times[0]
            if span > 0:
                m.decode_rate = (n - 1) / span
        return m
