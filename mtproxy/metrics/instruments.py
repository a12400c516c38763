"""Every Prometheus metric mtproxy exports: names, units, labels and buckets, declared once.

Labels come from a fixed small set (backend, runtime, model, mtp, endpoint, stream, status);
a model label value is always a configured or discovered model (the router resolved it), never a
name only the client chose. The same request figures are also exported under the OpenTelemetry
GenAI semantic-convention names with their advised buckets (extended at the top for CPU runtimes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from time import perf_counter
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as ClientCounter
from prometheus_client import Histogram as ClientHistogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ..stream.events import Report
from .lean import Bins, Histogram, LeanRegistry, Total, Twin
from .meter import ANSWERED, Labels, Measurement, Outcome, RequestMeter
from .window import TokenWindow

# --- buckets --------------------------------------------------------------------------------
DURATION = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
            163.84, 327.68, 655.36)  # OTel doubling series, extended to 10 minutes
TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        15.0, 20.0, 30.0, 45.0, 60.0)  # OTel advised, extended to 60 s for long prompts on CPUs
INTER_TOKEN = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.5, 1.0, 2.5, 5.0)
TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
        2.5, 5.0, 10.0)  # OTel advised (0.01 … 2.5), widened both ways
OTEL_TPOT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)  # OTel advised
TOKENS_PER_SECOND = (0.5, 1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)
TOKENS_PER_CHUNK = (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0)
RATIO = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)  # 0..1, e.g. drafts accepted
OVERHEAD = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
START = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)  # a runtime's start or load
SWAP_STATES = ("stopped", "starting", "ready", "draining", "stopping")  # the values of swap.State
TOKEN_USAGE = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
               67108864)  # OTel advised

LABELS = ("backend", "runtime", "model", "mtp", "endpoint", "stream")
# accepted drafts by draft position: 0 … POSITIONS-1, the rest summed under f"{POSITIONS}+"
POSITIONS = 8
POSITION_LABELS = (*(str(i) for i in range(POSITIONS)), f"{POSITIONS}+")
CUT_REASONS = ("header_timeout", "body_timeout", "too_many")  # client connections cut (clients.py)
OTEL_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
# Anthropic Messages and OpenAI Responses are chat operations in the GenAI conventions.
OTEL_OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings",
                  "messages": "chat", "responses": "chat"}


def otel_labels(*extra: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """OTEL_LABELS' values (then ``extra``) from LABELS' values."""
    def labels(values: tuple[str, ...]) -> tuple[str, ...]:
        endpoint = values[4]
        return (OTEL_OPERATION.get(endpoint, endpoint), values[1], values[2], *extra)  # runtime, model
    return labels


class Metrics:
    """The instruments: the request families in :attr:`lean` (metrics/lean.py), the rest on an
    injected prometheus_client registry (a fresh one per app, and per test); ``/metrics`` renders
    both (metrics/export.py)."""

    def __init__(self, registry: CollectorRegistry, pool: Pool, window: TokenWindow) -> None:
        self.window = window
        self.registry = r = registry
        self.lean = lean = LeanRegistry()
        # OpenTelemetry GenAI semantic conventions (metrics, status: Development), recorded by the
        # families they twin and listed after them: operation (chat, text_completion,
        # embeddings), provider (the runtime), requested model; token usage by type (input, output)
        otel_ttft = Histogram("gen_ai_server_time_to_first_token_seconds", "OTel: time to first token.",
                              OTEL_LABELS, TTFT)
        otel_tpot = Histogram("gen_ai_server_time_per_output_token_seconds", "OTel: time per output token.",
                              OTEL_LABELS, OTEL_TPOT)
        otel_duration = Histogram("gen_ai_server_request_duration_seconds", "OTel: request duration.",
                                  OTEL_LABELS, DURATION)
        otel_usage = Histogram("gen_ai_client_token_usage", "OTel: tokens used per request.",
                               (*OTEL_LABELS, "gen_ai_token_type"), TOKEN_USAGE)

        def hist(name: str, doc: str, buckets: Sequence[float], twin: Twin | None = None):
            return lean.histogram(name, doc, LABELS, buckets, twin)

        self.duration = hist("mtproxy_request_duration_seconds", "Request received to response finished.", DURATION,
                             twin=Twin(otel_duration, otel_labels()))
        self.ttft = hist("mtproxy_time_to_first_token_seconds",
                         "Request received to first content chunk relayed (streams).", TTFT,
                         twin=Twin(otel_ttft, otel_labels()))
        self.visible_ttft = hist("mtproxy_time_to_first_visible_token_seconds",
                                 "Request received to the first chunk of the answer relayed, reasoning "
                                 "(thinking) content left out (streams).", TTFT)
        assert self.visible_ttft.bounds == self.ttft.bounds  # finish() bins a value once for both
        self.itl = hist("mtproxy_inter_token_latency_seconds", "Gaps between content chunks (streams).",
                        INTER_TOKEN)
        self.tpot = hist("mtproxy_time_per_output_token_seconds",
                         "(duration - TTFT) / (output tokens - 1) (streams).", TPOT,
                         twin=Twin(otel_tpot, otel_labels()))
        self.decode = hist("mtproxy_decode_tokens_per_second",
                           "(output tokens - 1) / (last - first content chunk), per request (streams).",
                           TOKENS_PER_SECOND)
        self.per_chunk = hist("mtproxy_tokens_per_chunk", "Output tokens / content chunks (streams).",
                              TOKENS_PER_CHUNK)
        self.per_step = hist("mtproxy_tokens_per_step",
                             "Output tokens / decode steps: output tokens - accepted drafts where the runtime "
                             "reports them, else bursts of content chunks (streams); ~1 without speculation.",
                             TOKENS_PER_CHUNK)
        self.overhead = hist("mtproxy_overhead_seconds",
                             "The proxy's own added time: before sending upstream and relaying the first byte.",
                             OVERHEAD)
        self.requests = lean.counter("mtproxy_requests", "Requests by outcome.", (*LABELS, "status"))
        self.prompt_tokens = lean.counter("mtproxy_prompt_tokens", "Prompt tokens (runtime usage).", LABELS,
                                          twin=Twin(otel_usage, otel_labels("input")))
        self.completion_tokens = lean.counter("mtproxy_completion_tokens", "Output tokens (runtime usage).", LABELS,
                                              twin=Twin(otel_usage, otel_labels("output")))
        self.draft_tokens = lean.counter("mtproxy_spec_decode_draft_tokens",
                                         "Speculative tokens drafted, as the runtime reports them.", LABELS)
        self.accepted_tokens = lean.counter("mtproxy_spec_decode_accepted_tokens",
                                            "Drafted tokens accepted, as the runtime reports them.", LABELS)
        self.reasoning_tokens = lean.counter("mtproxy_reasoning_tokens",
                                             "Of the output tokens, reasoning (thinking) ones, as the runtime "
                                             "reports them.", LABELS)
        self.acceptance_rate = hist("mtproxy_spec_decode_acceptance_rate",
                                    "Drafted tokens accepted / drafted, per request, as the runtime reports them.",
                                    RATIO)
        self.acceptance_length = hist("mtproxy_spec_decode_acceptance_length",
                                      "Mean tokens per verification step (1 + accepted / steps), per request, "
                                      "as the runtime reports it.", TOKENS_PER_CHUNK)
        self.draft_rounds = lean.counter("mtproxy_spec_decode_draft_rounds",
                                         "Verification steps that checked drafted tokens, as the runtime reports "
                                         "them.", LABELS)
        self.accepted_by_position = lean.counter(
            "mtproxy_spec_decode_accepted_by_position",
            f"Drafted tokens accepted, by position in the draft (0 first; {POSITION_LABELS[-1]} the rest), as "
            "the runtime reports them.", (*LABELS, "position"))
        for otel in (otel_ttft, otel_tpot, otel_duration, otel_usage):
            lean.add(otel)
        self.retries = ClientCounter("mtproxy_upstream_retries",
                                     "Requests moved to another backend before their first byte.",
                                     ("backend", "runtime"), registry=r)
        self.client_cuts = ClientCounter(
            "mtproxy_client_connections_cut",
            "Client connections closed without a whole request within server.receive_timeout "
            "(header_timeout, body_timeout) or refused beyond server.max_connections (too_many).",
            ("reason",), registry=r)
        self._cuts = {reason: self.client_cuts.labels(reason) for reason in CUT_REASONS}  # at 0 from the start
        self.swaps = SwapInstruments(r)
        self.runtime_errors = ClientCounter(  # metrics.runtime_metrics (metrics/scrape.py)
            "mtproxy_runtime_metrics_errors",
            "Reads of a backend's own metrics left out of /metrics (reason: timeout, unreachable, status, "
            "too_large, malformed; clash: families named like mtproxy's own or of another type left out).",
            ("backend", "reason"), registry=r)
        self.clients_open = 0  # client connections open now: kept by clients.ClientServer
        self.state = StateCollector(pool, window, lambda: self.clients_open)
        r.register(self.state)
        self._bound: dict[Labels, Bound] = {}

    def retry(self, backend: str, runtime: str) -> None:
        self.retries.labels(backend, runtime).inc()

    def client_cut(self, reason: str) -> None:
        self._cuts[reason].inc()

    def finish(self, meter: RequestMeter) -> Measurement:
        """Observe one finished request (called after the client got its last byte); each
        family's OpenTelemetry twin records the same figure."""
        labels = meter.labels
        s = self._bound.get(labels)
        if s is None:
            s = self._bound[labels] = Bound(self, labels)
        m = meter.measure()
        outcome = meter.outcome  # the status label: the HTTP status answered, else the outcome's name
        key = meter.http_status if outcome is ANSWERED else outcome  # the label's string made once
        requests = s.requests.get(key)
        if requests is None:
            status = str(key) if outcome is ANSWERED else outcome.value
            requests = s.requests[key] = self.requests.labels(*s.values, status)
        requests.inc()
        if labels.backend == "none":  # never routed: nothing else to say
            return m
        if meter.window_key is not None:
            self.window.settle(meter.window_key, meter.times, meter.counts, m.output_tokens)
        s.duration.observe(m.duration)
        if m.overhead is not None:
            s.overhead.observe(m.overhead)
        report = meter.report
        if report.prompt_tokens is not None:
            s.prompt_tokens.inc(report.prompt_tokens)
        if m.output_tokens is not None:
            s.completion_tokens.inc(m.output_tokens)
        if report.draft_tokens is not None:
            s.draft_tokens.inc(report.draft_tokens)
        if report.accepted_tokens is not None:
            s.accepted_tokens.inc(report.accepted_tokens)
            if report.draft_tokens:
                s.acceptance_rate.observe(report.accepted_tokens / report.draft_tokens)
        if report.draft_rounds is not None or report.tokens_per_step is not None or report.accepted_by_position:
            self._speculation(s, report)
        if report.reasoning_tokens is not None:
            s.reasoning_tokens.inc(report.reasoning_tokens)
        ttft, visible = m.ttft, m.visible_ttft
        if ttft is not None and visible == ttft:  # no reasoning first: one value, one bucket (same bounds)
            s.ttft.observe_with(ttft, s.visible_ttft)
        else:
            if ttft is not None:
                s.ttft.observe(ttft)
            if visible is not None:
                s.visible_ttft.observe(visible)
        if m.content_chunks > 1 and m.gaps is not None:
            s.itl.observe_many(m.gaps, m.zero_gaps)
        if m.time_per_output_token is not None:
            s.tpot.observe(m.time_per_output_token)
        if m.decode_rate is not None:
            s.decode.observe(m.decode_rate)
        if m.tokens_per_chunk is not None:
            s.per_chunk.observe(m.tokens_per_chunk)
        if m.tokens_per_step is not None:
            s.per_step.observe(m.tokens_per_step)
        return m

    def _speculation(self, s: Bound, report: Report) -> None:
        """Draft rounds, mean acceptance length and acceptance by position, where reported."""
        rounds, accepted = report.draft_rounds, report.accepted_tokens
        if rounds is not None:
            s.draft_rounds.inc(rounds)
        length = report.tokens_per_step  # the runtime's own (vLLM, SGLang, TensorRT-LLM)
        if length is None and rounds and accepted is not None:
            length = 1 + accepted / rounds
        # for requests that speculated: steps or drafts reported, or more than a token per step
        # (TensorRT-LLM reports no counts; llama.cpp's 1.0 without drafts is the adapter's inference)
        if length is not None and (rounds or report.draft_tokens or length > 1.0):
            s.acceptance_length.observe(length)
        positions = report.accepted_by_position
        if positions:
            series = s.by_position
            if series is None:
                series = s.by_position = tuple(self.accepted_by_position.labels(*s.values, p) for p in POSITION_LABELS)
            for i, n in enumerate(positions[:POSITIONS]):
                series[i].inc(n)
            if len(positions) > POSITIONS:
                series[POSITIONS].inc(sum(positions[POSITIONS:]))


class SwapInstruments:
    """Starts, stops, swaps and queue waits of the backends mtproxy starts and stops (swap.py,
    whose ``Events`` protocol this implements)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.starts = ClientCounter("mtproxy_backend_starts", "Backends started (reason: request, startup, "
                                    "admin, restart), counted once ready.", ("backend", "reason"), registry=r)
        self.stops = ClientCounter("mtproxy_backend_stops", "Backends stopped (reason: swap, idle, admin, "
                                   "exit: on its own, failed: its start failed, limit: loaded with no room, "
                                   "runtime_unloaded: its runtime unloaded it).", ("backend", "reason"), registry=r)
        self.start_seconds = ClientHistogram("mtproxy_backend_start_duration_seconds",
                                             "Seconds from starting a backend (or loading its model) to ready.",
                                             ("backend",), buckets=START, registry=r)
        self.swaps = ClientCounter("mtproxy_group_swaps", "Members swapped in after others were drained to "
                                   "make room, per group.", ("group",), registry=r)
        self.queue_wait = ClientHistogram("mtproxy_backend_queue_wait_seconds",
                                          "Seconds a request waited for its backend to start or swap in.",
                                          ("backend",), buckets=DURATION, registry=r)

    def started(self, backend: str, reason: str, seconds: float) -> None:
        self.starts.labels(backend, reason).inc()
        self.start_seconds.labels(backend).observe(seconds)

    def stopped(self, backend: str, reason: str) -> None:
        self.stops.labels(backend, reason).inc()

    def swapped(self, group: str) -> None:
        self.swaps.labels(group).inc()

    def waited(self, backend: str, seconds: float) -> None:
        self.queue_wait.labels(backend).observe(seconds)


class Bound:
    """One label set's series in every request family ("pre-bound children"): a request looks
    its label set up once instead of once per family. Made with the label set's first request;
    each series is exported once observed (metrics/lean.py)."""

    __slots__ = ("values", "requests", "duration", "overhead", "prompt_tokens", "completion_tokens", "draft_tokens",
                 "accepted_tokens", "ttft", "itl", "tpot", "decode", "per_chunk", "per_step", "visible_ttft",
                 "reasoning_tokens", "acceptance_rate", "acceptance_length", "draft_rounds", "by_position")

    def __init__(self, metrics: Metrics, labels: Labels) -> None:
        self.values = v = (*labels[:5], "true" if labels.stream else "false")
        self.requests: dict[int | Outcome, Total] = {}  # by HTTP status answered, else by outcome
        self.duration: Bins = metrics.duration.labels(*v)
        self.overhead: Bins = metrics.overhead.labels(*v)
        self.prompt_tokens: Total = metrics.prompt_tokens.labels(*v)
        self.completion_tokens: Total = metrics.completion_tokens.labels(*v)
        self.draft_tokens: Total = metrics.draft_tokens.labels(*v)
        self.accepted_tokens: Total = metrics.accepted_tokens.labels(*v)
        self.ttft: Bins = metrics.ttft.labels(*v)
        self.itl: Bins = metrics.itl.labels(*v)
        self.tpot: Bins = metrics.tpot.labels(*v)
        self.decode: Bins = metrics.decode.labels(*v)
        self.per_chunk: Bins = metrics.per_chunk.labels(*v)
        self.per_step: Bins = metrics.per_step.labels(*v)
        self.visible_ttft: Bins = metrics.visible_ttft.labels(*v)
        self.reasoning_tokens: Total = metrics.reasoning_tokens.labels(*v)
        self.acceptance_rate: Bins = metrics.acceptance_rate.labels(*v)
        self.acceptance_length: Bins = metrics.acceptance_length.labels(*v)
        self.draft_rounds: Total = metrics.draft_rounds.labels(*v)
        self.by_position: tuple[Total, ...] | None = None  # POSITION_LABELS' series, made when first reported


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _MtpState(Protocol):
    @property
    def on(self) -> bool: ...

    @property
    def mismatch(self) -> bool: ...


class _Speed(Protocol):
    """A backend's speed estimate for one model (``speed.Speed``)."""

    @property
    def ttft(self) -> float | None: ...

    @property
    def per_step(self) -> float | None: ...

    @property
    def decode_rate(self) -> float | None: ...

    @property
    def at(self) -> float: ...

    @property
    def count(self) -> int: ...


class BackendState(Protocol):
    """What :class:`StateCollector` reads of a backend (``backends.Backend``)."""

    @property
    def name(self) -> str: ...

    @property
    def runtime(self) -> _Named: ...

    @property
    def up(self) -> bool: ...

    @property
    def outstanding(self) -> int: ...

    @property
    def version(self) -> str | None: ...

    @property
    def mtp(self) -> Mapping[str, _MtpState]: ...

    @property
    def member(self) -> _Member | None: ...

    @property
    def speed(self) -> Mapping[str, _Speed]: ...


class _Member(Protocol):
    @property
    def state(self) -> str: ...

    @property
    def waiting(self) -> int: ...


class Pool(Protocol):
    """What :class:`StateCollector` reads of the backend pool (``backends.BackendPool``, which
    the app factory passes in): its backends as they are at scrape time."""

    @property
    def backends(self) -> Sequence[BackendState]: ...


class StateCollector(Collector):
    """State read at scrape time: backend health, version, MTP state, in-flight requests, the
    routing's live speed estimates, the token window, open client connections and the event loop's tasks. Nothing on the request
    path updates these.

    ``/metrics`` renders in a worker thread; what belongs to the event loop is read on it first
    (:meth:`snapshot`), and that thread renders the snapshot. Collected on the loop's thread
    itself, it is read afresh."""

    def __init__(self, pool: Pool, window: TokenWindow, clients_open: Callable[[], int]) -> None:
        self.pool = pool
        self.window = window
        self.clients_open = clients_open
        self._snapshot: list[Metric] | None = None

    def snapshot(self) -> None:
        """On the event loop, right before a render in another thread."""
        self._snapshot = self._read(asyncio.get_running_loop())

    def collect(self) -> Iterator[Metric]:
        loop = _running_loop()
        snapshot = self._snapshot
        yield from self._read(loop) if loop is not None or snapshot is None else snapshot

    def _read(self, loop: asyncio.AbstractEventLoop | None) -> list[Metric]:
        up = GaugeMetricFamily("mtproxy_backend_up", "1 when the backend passes its health check.",
                               labels=("backend", "runtime"))
        in_flight = GaugeMetricFamily("mtproxy_requests_in_flight", "Requests being served, per backend.",
                                      labels=("backend", "runtime"))
        info = InfoMetricFamily("mtproxy_backend", "The runtime and version a backend reports.",
                                labels=("backend", "runtime"))
        active = GaugeMetricFamily("mtproxy_backend_mtp_active",
                                   "1 when the backend runs MTP for the model (runtime evidence).",
                                   labels=("backend", "runtime", "model"))
        mismatch = GaugeMetricFamily("mtproxy_backend_mtp_mismatch",
                                     "1 when backends[].mtp in the config and the runtime's evidence disagree.",
                                     labels=("backend", "runtime", "model"))
        window = GaugeMetricFamily("mtproxy_window_tokens_per_second",
                                   f"Output tokens per second over the last {self.window.seconds:g} s.",
                                   labels=("backend", "runtime", "model"))
        ttft = GaugeMetricFamily("mtproxy_backend_estimated_ttft_seconds",
                                 "The router's estimate of a backend's time to first token for the model "
                                 "(peak-EWMA of its streams, from sent upstream).", labels=("backend", "runtime", "model"))
        decode = GaugeMetricFamily("mtproxy_backend_estimated_decode_tokens_per_second",
                                   "The router's estimate of a backend's decode rate for the model (peak-EWMA of "
                                   "seconds per output token, inverted).", labels=("backend", "runtime", "model"))
        per_step = GaugeMetricFamily("mtproxy_backend_estimated_tokens_per_step",
                                     "The router's estimate of a backend's output tokens per decode step for the "
                                     "model (above 1: speculation pays).", labels=("backend", "runtime", "model"))
        age = GaugeMetricFamily("mtproxy_backend_estimate_age_seconds",
                                "Seconds since a backend's speed estimate for the model was last updated (older "
                                "than routing.max_age_seconds: unknown to the router).",
                                labels=("backend", "runtime", "model"))
        now = perf_counter()  # the meter's clock
        runtimes = {}
        for b in self.pool.backends:
            runtime = b.runtime.name
            runtimes[b.name] = runtime
            up.add_metric((b.name, runtime), 1.0 if b.up else 0.0)
            in_flight.add_metric((b.name, runtime), float(b.outstanding))
            info.add_metric((b.name, runtime), {"version": b.version or "unknown"})
            for model, status in b.mtp.items():
                active.add_metric((b.name, runtime, model), 1.0 if status.on else 0.0)
                mismatch.add_metric((b.name, runtime, model), 1.0 if status.mismatch else 0.0)
            for model, speed in b.speed.items():
                if not speed.count:
                    continue
                labels = (b.name, runtime, model)
                age.add_metric(labels, now - speed.at)
                if speed.ttft is not None:
                    ttft.add_metric(labels, speed.ttft)
                if speed.decode_rate is not None:
                    decode.add_metric(labels, speed.decode_rate)
                if speed.per_step is not None:
                    per_step.add_metric(labels, speed.per_step)
        clients = GaugeMetricFamily("mtproxy_client_connections", "Client connections open.",
                                    value=self.clients_open())
        state = GaugeMetricFamily("mtproxy_backend_state", "1 for the state a backend mtproxy starts and "
                                  "stops is in (stopped, starting, ready, draining, stopping).",
                                  labels=("backend", "state"))
        queue = GaugeMetricFamily("mtproxy_backend_queue_depth",
                                  "Requests waiting for a backend to start or swap in.", labels=("backend",))
        for b in self.pool.backends:
            member = b.member
            if member is not None:
                for name in SWAP_STATES:
                    state.add_metric((b.name, name), 1.0 if member.state == name else 0.0)
                queue.add_metric((b.name,), float(member.waiting))
        families: list[Metric] = [up, in_flight, info, active, mismatch, ttft, decode, per_step, age, window, clients,
                                  state, queue]
        if loop is not None:
            for (backend, model), rate in self.window.rates(now):
                window.add_metric((backend, runtimes.get(backend, "unknown"), model), rate)
            # leak watch: back to its idle figure when no request is in flight
            families.append(GaugeMetricFamily("mtproxy_event_loop_tasks",
                                              "asyncio tasks alive in the proxy's event loop.",
                                              value=len(asyncio.all_tasks(loop))))
        return families


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
