"""Histograms and counters for the request path, exported through prometheus_client.

prometheus_client's ``Histogram.observe`` walks the buckets in Python and takes two locks per
value; a streamed request makes a dozen observations and a 512-token stream has 511
inter-token gaps, which made metrics a quarter of the proxy's CPU for such a stream. Here a
label set's series is a plain list of bucket counts (``bisect``) and a sum, a request's gaps are
binned in one call, and prometheus_client only renders them (custom collectors, its documented
extension point). Same exposition as its ``Histogram`` and ``Counter`` (``_bucket`` with
``le``, ``_count``, ``_sum``; ``_total``) without the ``_created`` samples.

Updated on the event loop's thread only; ``/metrics`` renders them in a worker thread
(metrics/export.py) without locks: the series dict is copied before iterating (one C call under
the GIL), and a render may see a request's observation in some buckets and not yet in the sum,
as prometheus_client's own Histogram (a lock per value, none per histogram) may too.

``/metrics`` does not render these through prometheus_client's exposition, which formats every
sample's labels anew (~90 ms of CPU for the ~3,000 samples of a few backends and models, holding
the GIL against the event loop's thread): :meth:`Family.text` keeps each series' text up to its
value and formats only the values. Its output is the exposition's own, line for line (a test
compares them in both formats); prometheus_client renders everything else, and these families
when anything else collects the registry.
"""

from __future__ import annotations

import contextvars
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Set while /metrics renders the rest of the registry with prometheus_client: these families
# render themselves (:meth:`Family.text`), so they yield nothing to it.
RENDERED_APART: contextvars.ContextVar[bool] = contextvars.ContextVar("lean_rendered_apart", default=False)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _braces(labels: list[tuple[str, str]]) -> str:
    """``{a="x",b="y"}`` as the exposition formats write it: names sorted, values escaped."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels)) + "}"


class _One:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


class Bins:
    """One label set of a histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: value <= bound
        self.sum += value

    def observe_many(self, values: Iterable[float], zeros: int = 0) -> None:
        """``values``, plus ``zeros`` observations of 0.0."""
        bounds, counts = self.bounds, self.counts
        total = 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1
            total += v
        if zeros:
            counts[bisect_left(bounds, 0.0)] += zeros
        self.sum += total


class Total:
    """One label set of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


S = TypeVar("S", "Bins", "Total")


class Family(Collector, Generic[S]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        self._headers: dict[bool, str] = {}
        self._prefixes: dict[tuple[str, ...], tuple[str, ...]] = {}  # each series' lines up to the value
        registry.register(self)

    def text(self, openmetrics: bool = False) -> str:
        """The family in the text format (or OpenMetrics, without its ``# EOF``)."""
        header = self._headers.get(openmetrics)
        if header is None:  # HELP and TYPE exactly as prometheus_client writes them
            render = generate_openmetrics if openmetrics else generate_latest
            header = self._headers[openmetrics] = render(_One(self._family())).decode().removesuffix("# EOF\n")
        out = [header]
        prefixes = self._prefixes
        for values, series in list(self._series.items()):
            lines = prefixes.get(values)
            if lines is None:
                lines = prefixes[values] = self._prefix_lines(list(zip(self.labelnames, values)))
            self._render(out, lines, series)
        return "".join(out)

    def _prefix_lines(self, labels: list[tuple[str, str]]) -> tuple[str, ...]:
        raise NotImplementedError

    def _render(self, out: list[str], lines: tuple[str, ...], series: S) -> None:
        raise NotImplementedError

    def labels(self, *values: str) -> S:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
            series = self._series[values] = self._new()
        return series

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _new(self) -> S:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError


class Histogram(Family[Bins]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> Bins:
        return Bins(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _prefix_lines(self, labels: list[tuple[str, str]]) -> tuple[str, ...]:
        buckets = tuple(f"{self.name}_bucket{_braces([*labels, ('le', le)])} " for le in self._le)
        tail = _braces(labels)
        return (*buckets, f"{self.name}_count{tail} ", f"{self.name}_sum{tail} ")

    def _render(self, out: list[str], lines: tuple[str, ...], series: Bins) -> None:
        cumulative = 0
        for prefix, n in zip(lines, series.counts):
            cumulative += n
            out.append(f"{prefix}{floatToGoString(cumulative)}\n")
        out.append(f"{lines[-2]}{floatToGoString(cumulative)}\n")
        out.append(f"{lines[-1]}{floatToGoString(series.sum)}\n")

    def collect(self) -> Iterator[Metric]:
        if RENDERED_APART.get():
            return
        family = self._family()
        for labels, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for le, n in zip(self._le, series.counts):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(labels, buckets, series.sum)
        yield family


class Counter(Family[Total]):
    def _new(self) -> Total:
        return Total()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _prefix_lines(self, labels: list[tuple[str, str]]) -> tuple[str, ...]:
        return (f"{self.name}_total{_braces(labels)} ",)

    def _render(self, out: list[str], lines: tuple[str, ...], series: Total) -> None:
        out.append(f"{lines[0]}{floatToGoString(series.value)}\n")

    def collect(self) -> Iterator[Metric]:
        if RENDERED_APART.get():
            return
        family = self._family()
        for labels, series in list(self._series.items()):
            family.add_metric(labels, series.value)
        yield family
