"""Every Prometheus metric mtproxy exports: names, units, labels and buckets, declared once.

Labels come from a fixed small set (backend, runtime, model, mtp, endpoint, stream, status);
a model label value is always a configured or discovered model (the router resolved it), never a
name only the client chose. The same request figures are also exported under the OpenTelemetry
GenAI semantic-convention names with their advised buckets (extended at the top for CPU runtimes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as ClientCounter
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ..backends import BackendPool
from .lean import Counter, Histogram, Total
from .meter import Measurement, RequestMeter
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
OVERHEAD = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
TOKEN_USAGE = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
               67108864)  # OTel advised

LABELS = ("backend", "runtime", "model", "mtp", "endpoint", "stream")
CUT_REASONS = ("header_timeout", "body_timeout", "too_many")  # client connections cut (clients.py)
OTEL_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
OTEL_OPERATION = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


class Metrics:
    """The instruments, on an injected registry (a fresh one per app, and per test)."""

    def __init__(self, registry: CollectorRegistry, pool: BackendPool, window: TokenWindow) -> None:
        self.window = window
        self.registry = r = registry

        def hist(name: str, doc: str, buckets, labels=LABELS) -> Histogram:
            return Histogram(name, doc, labels, buckets, r)

        self.duration = hist("mtproxy_request_duration_seconds", "Request received to response finished.", DURATION)
        self.ttft = hist("mtproxy_time_to_first_token_seconds",
                         "Request received to first content chunk relayed (streams).", TTFT)
        self.itl = hist("mtproxy_inter_token_latency_seconds", "Gaps between content chunks (streams).",
                        INTER_TOKEN)
        self.tpot = hist("mtproxy_time_per_output_token_seconds",
                         "(duration - TTFT) / (output tokens - 1) (streams).", TPOT)
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
        self.requests = Counter("mtproxy_requests", "Requests by outcome.", (*LABELS, "status"), r)
        self.prompt_tokens = Counter("mtproxy_prompt_tokens", "Prompt tokens (runtime usage).", LABELS, r)
        self.completion_tokens = Counter("mtproxy_completion_tokens", "Output tokens (runtime usage).", LABELS, r)
        self.draft_tokens = Counter("mtproxy_spec_decode_draft_tokens",
                                    "Speculative tokens drafted, as the runtime reports them.", LABELS, r)
        self.accepted_tokens = Counter("mtproxy_spec_decode_accepted_tokens",
                                       "Drafted tokens accepted, as the runtime reports them.", LABELS, r)
        self.retries = ClientCounter("mtproxy_upstream_retries",
                                     "Requests moved to another backend before their first byte.",
                                     ("backend", "runtime"), registry=r)
        self.client_cuts = ClientCounter(
            "mtproxy_client_connections_cut",
            "Client connections closed without a whole request within server.receive_timeout "
            "(header_timeout, body_timeout) or refused beyond server.max_connections (too_many).",
            ("reason",), registry=r)
        self._cuts = {reason: self.client_cuts.labels(reason) for reason in CUT_REASONS}  # at 0 from the start
        self.clients_open = 0  # client connections open now: kept by clients.ClientServer
        # OpenTelemetry GenAI semantic conventions (metrics, status: Development)
        self.otel_ttft = hist("gen_ai_server_time_to_first_token_seconds", "OTel: time to first token.",
                              TTFT, OTEL_LABELS)
        self.otel_tpot = hist("gen_ai_server_time_per_output_token_seconds", "OTel: time per output token.",
                              OTEL_TPOT, OTEL_LABELS)
        self.otel_duration = hist("gen_ai_server_request_duration_seconds", "OTel: request duration.",
                                  DURATION, OTEL_LABELS)
        self.otel_usage = Histogram("gen_ai_client_token_usage", "OTel: tokens used per request.",
                                    (*OTEL_LABELS, "gen_ai_token_type"), TOKEN_USAGE, r)
        self.state = StateCollector(pool, window, lambda: self.clients_open)
        r.register(self.state)
        # the families /metrics renders apart from prometheus_client's exposition (metrics/export.py)
        self.lean: list[Histogram | Counter] = [v for v in vars(self).values() if isinstance(v, (Histogram, Counter))]
        self._bound: dict[tuple[str, ...], Bound] = {}

    def retry(self, backend: str, runtime: str) -> None:
        self.retries.labels(backend, runtime).inc()

    def client_cut(self, reason: str) -> None:
        self._cuts[reason].inc()

    def finish(self, meter: RequestMeter) -> Measurement:
        """Observe one finished request (called after the client got its last byte). A series
        appears when first observed, so a figure a runtime never reports has none at all."""
        key = (meter.backend, meter.runtime, meter.model, meter.mtp, meter.endpoint,
               "true" if meter.stream else "false")
        s = self._bound.get(key)
        if s is None:
            s = self._bound[key] = Bound(self, key)
        m = meter.measure()
        requests = s.requests.get(meter.status)
        if requests is None:
            requests = s.requests[meter.status] = self.requests.labels(*key, meter.status)
        requests.inc()
        if meter.backend == "none":  # never routed: nothing else to say
            return m
        if meter.window_key is not None:
            self.window.settle(meter.window_key, meter.times, meter.counts, m.output_tokens)
        s.duration.observe(m.duration)
        s.otel_duration.observe(m.duration)
        if m.overhead is not None:
            s.overhead.observe(m.overhead)
        report = meter.report
        if report.prompt_tokens is not None:
            s.prompt_tokens.inc(report.prompt_tokens)
            s.otel_input.observe(report.prompt_tokens)
        if m.output_tokens is not None:
            s.completion_tokens.inc(m.output_tokens)
            s.otel_output.observe(m.output_tokens)
        if report.draft_tokens is not None:
            s.draft_tokens.inc(report.draft_tokens)
        if report.accepted_tokens is not None:
            s.accepted_tokens.inc(report.accepted_tokens)
        if m.ttft is not None:
            s.ttft.observe(m.ttft)
            s.otel_ttft.observe(m.ttft)
        if m.content_chunks > 1:
            s.itl.observe_many(m.gaps, m.zero_gaps)
        if m.time_per_output_token is not None:
            s.tpot.observe(m.time_per_output_token)
            s.otel_tpot.observe(m.time_per_output_token)
        if m.decode_rate is not None:
            s.decode.observe(m.decode_rate)
        if m.tokens_per_chunk is not None:
            s.per_chunk.observe(m.tokens_per_chunk)
        if m.tokens_per_step is not None:
            s.per_step.observe(m.tokens_per_step)
        return m


# Bound's series: its attribute -> (the Metrics family, label values after the label set's own
# (True) or after its OpenTelemetry ones (False)).
_BOUND: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    **{name: (name, True, ()) for name in (
        "duration", "overhead", "prompt_tokens", "completion_tokens", "draft_tokens", "accepted_tokens",
        "ttft", "itl", "tpot", "decode", "per_chunk", "per_step")},
    "otel_duration": ("otel_duration", False, ()),
    "otel_ttft": ("otel_ttft", False, ()),
    "otel_tpot": ("otel_tpot", False, ()),
    "otel_input": ("otel_usage", False, ("input",)),
    "otel_output": ("otel_usage", False, ("output",)),
}


class Bound:
    """One label set's series in every request family ("pre-bound children"): a request looks
    its label set up once instead of once per family. Each series is still created the first
    time it is observed (``__getattr__`` runs only for a slot not set yet), so a figure a
    runtime never reports has no series."""

    __slots__ = ("_metrics", "_labels", "_otel", "requests", *_BOUND)

    def __init__(self, metrics: Metrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._otel = (OTEL_OPERATION.get(labels[4], labels[4]), labels[1], labels[2])  # endpoint, runtime, model
        self.requests: dict[str, Total] = {}  # by status

    def __getattr__(self, name: str) -> Any:
        try:
            family, own, extra = _BOUND[name]
        except KeyError:
            raise AttributeError(name) from None
        values = (*(self._labels if own else self._otel), *extra)
        series = getattr(self._metrics, family).labels(*values)
        setattr(self, name, series)
        return series


class StateCollector(Collector):
    """State read at scrape time: backend health, version, MTP state, in-flight requests, the
    token window, open client connections and the event loop's tasks. Nothing on the request
    path updates these.

    ``/metrics`` renders in a worker thread; what belongs to the event loop is read on it first
    (:meth:`snapshot`), and that thread renders the snapshot. Collected on the loop's thread
    itself, it is read afresh."""

    def __init__(self, pool: BackendPool, window: TokenWindow, clients_open: Callable[[], int]) -> None:
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
        clients = GaugeMetricFamily("mtproxy_client_connections", "Client connections open.",
                                    value=self.clients_open())
        families: list[Metric] = [up, in_flight, info, active, mismatch, window, clients]
        if loop is not None:
            for (backend, model), rate in self.window.rates(perf_counter()):  # the meter's clock
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
