"""One request's measurement, taken from a copy of what the proxy relays (never altering it).

Definitions (the ones proxies in front of LLM runtimes have shipped wrong):
- TTFT: from the moment the proxy received the request to the first content chunk relayed;
- time to first visible token: the same, to the first chunk of the answer itself, the reasoning
  (thinking) a reasoning model streams first left out: the wait its user sees;
- inter-token latency: the gaps between content chunks;
- time per output token: (duration − TTFT) / (output tokens − 1), not duration / output tokens;
- decode rate: (output tokens − 1) / (t_last − t_first), from the first token, not the request;
- tokens per chunk: output tokens / content chunks;
- tokens per step: output tokens / decode steps, about 1 without speculative decoding and above 1
  with MTP. Where the runtime reports accepted drafts (llama.cpp ``timings.draft_n_accepted``,
  vLLM's per-request ``speculative_decoding``), the steps are exact: each step yields one token of
  the target model plus the drafts it accepted, so steps = output tokens − accepted drafts. Where
  it reports its own tokens per iteration (TensorRT-LLM, vLLM without counts), that figure.
  Otherwise the steps are the bursts of content chunks in a stream (llama-server sends the
  accepted drafts of a step as one-token chunks back to back, so tokens per chunk alone would miss
  them), timed where each upstream read returns;
- overhead: the proxy's own time: request received → sent upstream, plus first upstream byte in →
  first byte out.
Output tokens come from the runtime's usage, never from counting chunks (a runtime that
speculates sends several tokens per chunk); a figure that needs them stays None without it:
unknown is unknown.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Generic, NamedTuple, TypeVar

from ..stream.events import Report
from .window import TokenWindow

# A decode step's chunks reach the proxy microseconds apart (llama-server writes the tokens of a
# step one by one, back to back), the steps milliseconds apart. Measured on llama-server (CPU,
# busy 2-core VM, perf_counter at each read; tests/data/llamacpp/read_times.json): within a step
# up to 0.62 ms, between steps 5-35 ms for one token and up to 530 ms for a step that verified a
# long n-gram draft. A reader that shares its CPU with other work sees longer gaps inside a step
# now and then (1-15 ms). A gap up to MIN_STEP_GAP is inside a step and one of MAX_WITHIN_GAP or
# more between steps (a longer stall cannot be told from a one-token step by timing); in
# between, the boundary is the widest empty stretch (at least SPLIT_RATIO wide) above the
# stream's short gaps, else MIN_STEP_GAP. Long steps never move the boundary: the old rule (a
# quarter of the 90th-percentile gap, several steps for a read that brought several chunks
# late) counted 13, 24 and 45 steps on traces where the runtime took 15.
MIN_STEP_GAP = 0.0005
MAX_WITHIN_GAP = 0.005
SPLIT_RATIO = 3.0


def count_bursts(times: list[float]) -> int:
    """Decode steps seen in the content chunks' arrival times: one entry per upstream read that
    carried content (or per chunk, the chunks of one read sharing its time).

    A new step starts after a gap longer than :func:`step_threshold`. A read that brings many
    chunks after a long gap is one step, however long the gap: a speculative runtime's long
    verification steps look just like that (530 ms and 34 chunks in one read on the real trace).
    The price: steps that queued up while the proxy itself was stalled for longer than a decode
    step count as one.
    """
    if not times:
        return 0
    return bursts_from_gaps([b - a for a, b in zip(times, times[1:])])


def bursts_from_gaps(gaps: list[float]) -> int:
    """:func:`count_bursts` from the gaps between reads."""
    if not gaps:
        return 1
    ordered = sorted(gaps)
    return 1 + len(ordered) - bisect_right(ordered, step_threshold(ordered))


def step_threshold(ordered: list[float]) -> float:
    """The longest gap still inside a decode step, from all the gaps of a stream, sorted."""
    best, threshold = SPLIT_RATIO, MIN_STEP_GAP
    for lo, hi in zip(ordered, ordered[1:]):
        if lo >= MAX_WITHIN_GAP:
            break
        floor = lo if lo > MIN_STEP_GAP else MIN_STEP_GAP
        if hi >= best * floor:
            best, threshold = hi / floor, floor
    return threshold


@dataclass(slots=True)
class Measurement:
    duration: float
    ttft: float | None = None
    visible_ttft: float | None = None  # to the first answer (not reasoning) content
    gaps: list[float] | None = None  # between reads that carried content
    zero_gaps: int = 0  # between chunks that came in one read
    output_tokens: int | None = None
    content_chunks: int = 0
    bursts: int = 0  # bursts of content chunks: the decode steps the arrival times show
    steps: float | None = None  # the decode steps behind tokens_per_step (see reported_steps)
    time_per_output_token: float | None = None
    decode_rate: float | None = None
    tokens_per_chunk: float | None = None
    tokens_per_step: float | None = None
    overhead: float | None = None


def reported_steps(report: Report, tokens: int) -> float | None:
    """The decode steps of ``tokens`` output tokens from the runtime's own figures, or None when
    it reports none: output tokens − accepted drafts (every step yields one token of the target
    model plus the drafts it accepted; llama.cpp, vLLM), else output tokens / the runtime's
    tokens per iteration (TensorRT-LLM)."""
    accepted = report.accepted_tokens
    if accepted is not None and 0 <= accepted < tokens:
        return tokens - accepted
    per_step = report.tokens_per_step
    if per_step is not None and per_step >= 1.0:
        return tokens / per_step
    return None


class Labels(NamedTuple):
    """A request's label values, in the order of ``instruments.LABELS``; the key of its series.
    Frozen: choosing a backend (again on a retry) replaces them as a whole."""

    backend: str
    runtime: str
    model: str
    mtp: str  # "on" / "off"
    endpoint: str
    stream: bool


@cache
def unrouted(endpoint: str, stream: bool) -> Labels:
    """The labels of a request before a backend is chosen for it (and if none ever is)."""
    return Labels("none", "none", "none", "off", endpoint, stream)


_make_labels = tuple.__new__  # Labels from a tuple of six, without NamedTuple's argument handling


class Outcome(Enum):
    """How a request ended: the ``status`` label is the HTTP status answered (an error's
    included) or, for the others, their value (metrics/instruments.py ``Metrics.finish``)."""

    ANSWERED = "answered"  # with RequestMeter.http_status
    STREAM_ERROR = "stream_error"  # the upstream stream failed after its first byte
    CLIENT_CLOSED = "client_closed"  # the client left before its last byte


# The members by name, as ``re`` exports its flags: Python 3.11 reads a member off the class
# through Enum's metaclass' ``__getattr__`` hook (~1k instructions), too much on the request path.
ANSWERED, STREAM_ERROR, CLIENT_CLOSED = Outcome.ANSWERED, Outcome.STREAM_ERROR, Outcome.CLIENT_CLOSED


T = TypeVar("T")


class RequestMeter(Generic[T]):
    """One request: its labels, its timings, the runtime's report and its outcome. ``T``: what
    the proxy chose to serve it (its ``Backend``), kept for the proxy.

    Every timestamp is ``time.perf_counter()`` (seconds), taken where the event happens: the
    event loop's clock is the time its iteration started, at 1 ms resolution under uvloop, too
    coarse for a step's chunks (microseconds apart) and short steps (a few ms)."""

    __slots__ = ("labels", "target", "outcome", "http_status", "report",
                 "t0", "t_sent", "t_in", "t_out", "t_end", "t_visible", "times", "counts", "window", "window_key",
                 "attempts")

    def __init__(self, t0: float, endpoint: str, stream: bool = False) -> None:
        self.labels = unrouted(endpoint, stream)
        self.target: T | None = None  # chosen last
        self.attempts = 0  # backends tried (route() calls): retries = attempts - 1
        # ANSWERED with 200 unless said otherwise (the relay fails, the client leaves, an error)
        self.outcome = ANSWERED
        self.http_status = 200
        self.report = Report()
        # timings
        self.t0 = t0  # request received
        self.t_sent: float | None = None  # request sent upstream (last attempt)
        self.t_in: float | None = None  # first upstream byte received
        self.t_out: float | None = None  # first byte written to the client
        self.t_end: float | None = None
        self.t_visible: float | None = None  # the first content that was not all reasoning
        # one entry per upstream read that carried content: its time and its content chunks
        # (a runtime that sends all at once fills one read with hundreds of chunks)
        self.times: list[float] = []
        self.counts: list[int] = []
        # the live token window, from the stream's first byte (:meth:`count_live`)
        self.window: TokenWindow | None = None
        self.window_key: tuple[str, str] | None = None

    def route(self, target: T, backend: str, runtime: str, model: str, mtp: bool) -> None:
        """``target`` (the backend named ``backend``) serves the request from now on."""
        labels = self.labels
        self.labels = _make_labels(Labels, (backend, runtime, model, "on" if mtp else "off", labels[4], labels[5]))
        self.target = target
        self.attempts += 1

    def mtp_shown(self) -> None:
        """The answer showed the backend drafting with MTP, which the route did not know yet."""
        self.labels = self.labels._replace(mtp="on")

    def answered(self, status: int) -> None:
        """The client got (or gets) an answer with HTTP ``status``, whatever happened before."""
        self.outcome = ANSWERED
        self.http_status = status

    def count_live(self, window: TokenWindow) -> None:
        """Count the content into ``window`` as it comes, under (backend, model)."""
        self.window = window
        self.window_key = (self.labels.backend, self.labels.model)

    def content(self, t: float, n: int, hidden: bool = False) -> None:
        """``n`` content chunks came in at ``t``; ``hidden``: all of them reasoning."""
        if self.t_visible is None and not hidden:
            self.t_visible = t
        times = self.times
        if times and times[-1] == t:
            self.counts[-1] += n
        else:
            times.append(t)
            self.counts.append(n)
        window = self.window
        if window is not None:
            window.add(self.window_key, t, n)  # type: ignore[arg-type]  # (set with the window)

    def measure(self) -> Measurement:
        end = self.t_end if self.t_end is not None else self.t0
        m = Measurement(duration=end - self.t0)
        if self.t_sent is not None and self.t_in is not None and self.t_out is not None:
            m.overhead = max(0.0, self.t_sent - self.t0) + max(0.0, self.t_out - self.t_in)
        n = self.report.completion_tokens
        m.output_tokens = n
        if n is not None and n > 0:
            m.steps = reported_steps(self.report, n)  # exact, streamed or not
            if m.steps is not None:
                m.tokens_per_step = n / m.steps
        times = self.times
        if not self.labels.stream or not times:
            return m
        m.ttft = times[0] - self.t0
        if self.t_visible is not None:
            m.visible_ttft = self.t_visible - self.t0
        m.gaps = [b - a for a, b in zip(times, times[1:])]
        m.content_chunks = sum(self.counts)
        m.zero_gaps = m.content_chunks - len(times)
        m.bursts = bursts_from_gaps(m.gaps)
        if n is None or n <= 0:
            return m
        m.tokens_per_chunk = n / m.content_chunks
        if m.steps is None:
            m.steps = m.bursts
            m.tokens_per_step = n / m.bursts
        if n > 1:
            m.time_per_output_token = (m.duration - m.ttft) / (n - 1)
            span = times[-1] - times[0]
            if span > 0:
                m.decode_rate = (n - 1) / span
        return m
