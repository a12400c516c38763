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
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


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


class _Family(Collector, Generic[S]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        registry.register(self)

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


class Histogram(_Family[Bins]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> Bins:
        return Bins(self.bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for le, n in zip(self._le, series.counts):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(labels, buckets, series.sum)
        yield family


class Counter(_Family[Total]):
    def _new(self) -> Total:
        return Total()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in list(self._series.items()):
            family.add_metric(labels, series.value)
        yield family
