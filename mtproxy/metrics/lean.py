"""The request families: histograms and counters on plain Python numbers, in a registry of their
own (:class:`LeanRegistry`) whose text ``/metrics`` appends to prometheus_client's exposition.

prometheus_client's ``Histogram.observe`` walks the buckets in Python and takes two locks per
value; a streamed request makes a dozen observations and a 512-token stream has 511
inter-token gaps, which made metrics a quarter of the proxy's CPU for such a stream. Here a
label set's series is a plain list of bucket counts (``bisect``) and a sum, and a request's gaps
are binned in one call. prometheus_client's exposition, for its part, formats every sample's
labels anew (~90 ms of CPU for the ~3,000 samples of a few backends and models, holding the GIL
against the event loop's thread): :meth:`Family.text` keeps each series' text up to its value and
formats only the values. The text is prometheus_client's own for its ``Histogram`` and
``Counter``, line for line (``_bucket`` with ``le``, ``_count``, ``_sum``; ``_total``; a test
compares them in both formats), without the ``_created`` samples. :meth:`LeanRegistry.collect`
gives the same families as prometheus_client's metric objects, for such comparisons; nothing
registers them with prometheus_client, so nothing renders them twice.

A series exists from its label set's first request but is exported from its first observation
(an ``inc(0)`` included): a figure a runtime never reports has no series at all. A series may
have a twin (:class:`Twin`): the same figure under another family's name and labels (the
OpenTelemetry ones), recorded by the same ``observe`` or ``inc``.

Updated on the event loop's thread only; ``/metrics`` renders them in a worker thread
(metrics/export.py) without locks: the series dict is copied before iterating (one C call under
the GIL), and a render may see a request's observation in some buckets and not yet in the sum,
as prometheus_client's own Histogram (a lock per value, none per histogram) may too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString


class _Unset(float):
    """The sum or value of a series never observed: 0.0, and no addition returns it (a float
    plus a number is a plain float), so the first observation marks the series exported without
    a flag to set on every observation."""


UNSET = _Unset(0.0)


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
        self.sum: float = UNSET

    @property
    def observed(self) -> bool:
        return self.sum is not UNSET

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le is inclusive: value <= bound
        self.sum += value

    def observe_with(self, value: float, other: Bins) -> None:
        """``value`` here and in ``other``, a series with these very bounds (binned once)."""
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value
        other.counts[i] += 1
        other.sum += value

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


class TwinBins(Bins):
    """A histogram series whose values its twin records too: a plain series (a twin has no twin
    of its own), written to here without a call, a value's bucket found once where both have
    the same bounds."""

    __slots__ = ("twin", "shared")

    def __init__(self, bounds: tuple[float, ...], twin: Bins) -> None:
        super().__init__(bounds)
        self.twin = _plain(twin)
        self.shared = twin.bounds == bounds

    def observe(self, value: float) -> None:
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value
        twin = self.twin
        twin.counts[i if self.shared else bisect_left(twin.bounds, value)] += 1
        twin.sum += value

    def observe_with(self, value: float, other: Bins) -> None:
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value
        other.counts[i] += 1
        other.sum += value
        twin = self.twin
        twin.counts[i if self.shared else bisect_left(twin.bounds, value)] += 1
        twin.sum += value

    def observe_many(self, values: Iterable[float], zeros: int = 0) -> None:
        values = list(values)
        super().observe_many(values, zeros)
        self.twin.observe_many(values, zeros)


class Total:
    """One label set of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = UNSET

    @property
    def observed(self) -> bool:
        return self.value is not UNSET

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class TwinTotal(Total):
    """A counter series whose increments its twin (a histogram: one observation per increment)
    records too."""

    __slots__ = ("twin",)

    def __init__(self, twin: Bins) -> None:
        super().__init__()
        self.twin = _plain(twin)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        twin = self.twin
        twin.counts[bisect_left(twin.bounds, amount)] += 1
        twin.sum += amount


def _plain(twin: Bins) -> Bins:
    """A twin series, which the series it twins writes to directly: a plain one."""
    if twin.__class__ is not Bins:
        raise TypeError(f"a twin series records for no other: {twin.__class__.__name__}")
    return twin


@dataclass(frozen=True)
class Twin:
    """The histogram that records a family's figures again, under its own name and labels:
    ``labels`` maps the family's label values to the twin's."""

    family: Histogram
    labels: Callable[[tuple[str, ...]], tuple[str, ...]]

    def series(self, values: tuple[str, ...]) -> Bins:
        return self.family.labels(*self.labels(values))


S = TypeVar("S", Bins, Total)


class Family(Generic[S]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], twin: Twin | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.twin = twin
        self._series: dict[tuple[str, ...], S] = {}
        self._headers: dict[bool, str] = {}
        self._prefixes: dict[tuple[str, ...], tuple[str, ...]] = {}  # each series' lines up to the value

    def labels(self, *values: str) -> S:
        """The series of these label values (and its twin's), made on first use; exported once
        observed."""
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
            series = self._series[values] = self._new(None if self.twin is None else self.twin.series(values))
        return series

    def text(self, openmetrics: bool = False) -> str:
        """The family in the text format (or OpenMetrics, without its ``# EOF``)."""
        header = self._headers.get(openmetrics)
        if header is None:  # HELP and TYPE exactly as prometheus_client writes them
            render = generate_openmetrics if openmetrics else generate_latest
            header = self._headers[openmetrics] = render(_One(self._family())).decode().removesuffix("# EOF\n")
        out = [header]
        prefixes = self._prefixes
        for values, series in list(self._series.items()):
            if not series.observed:
                continue
            lines = prefixes.get(values)
            if lines is None:
                lines = prefixes[values] = self._prefix_lines(list(zip(self.labelnames, values)))
            self._render(out, lines, series)
        return "".join(out)

    def metric(self) -> Metric:
        """The family as prometheus_client's metric object (its observed series)."""
        family = self._family()
        for values, series in list(self._series.items()):
            if series.observed:
                self._add(family, values, series)
        return family

    def _new(self, twin: Bins | None) -> S:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, values: tuple[str, ...], series: S) -> None:
        raise NotImplementedError

    def _prefix_lines(self, labels: list[tuple[str, str]]) -> tuple[str, ...]:
        raise NotImplementedError

    def _render(self, out: list[str], lines: tuple[str, ...], series: S) -> None:
        raise NotImplementedError


class Histogram(Family[Bins]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 twin: Twin | None = None) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, twin)

    def _new(self, twin: Bins | None) -> Bins:
        return Bins(self.bounds) if twin is None else TwinBins(self.bounds, twin)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], series: Bins) -> None:
        cumulative, buckets = 0, []
        for le, n in zip(self._le, series.counts):
            cumulative += n
            buckets.append((le, float(cumulative)))
        assert isinstance(family, HistogramMetricFamily)
        family.add_metric(values, buckets, series.sum)

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


class Counter(Family[Total]):
    def _new(self, twin: Bins | None) -> Total:
        return Total() if twin is None else TwinTotal(twin)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, values: tuple[str, ...], series: Total) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(values, series.value)

    def _prefix_lines(self, labels: list[tuple[str, str]]) -> tuple[str, ...]:
        return (f"{self.name}_total{_braces(labels)} ",)

    def _render(self, out: list[str], lines: tuple[str, ...], series: Total) -> None:
        out.append(f"{lines[0]}{floatToGoString(series.value)}\n")


F = TypeVar("F", Histogram, Counter)


class LeanRegistry:
    """The request families, in the order they render. Not a prometheus_client registry:
    ``/metrics`` appends :meth:`text` to that registry's exposition (metrics/export.py)."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                  twin: Twin | None = None) -> Histogram:
        return self.add(Histogram(name, documentation, labelnames, buckets, twin))

    def counter(self, name: str, documentation: str, labelnames: Sequence[str], twin: Twin | None = None) -> Counter:
        return self.add(Counter(name, documentation, labelnames, twin))

    def add(self, family: F) -> F:
        if any(f.name == family.name for f in self.families):
            raise ValueError(f"duplicate metric family: {family.name}")
        self.families.append(family)
        return family

    def text(self, openmetrics: bool = False) -> str:
        """Every family in the text format (or OpenMetrics, without its ``# EOF``)."""
        return "".join(f.text(openmetrics) for f in self.families)

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus_client's metric objects: what its exposition of them would
        write (the ``_created`` samples aside), for a comparison."""
        for family in self.families:
            yield family.metric()

    def describe(self) -> Iterator[Metric]:
        """Their names, for a prometheus_client registry that checks for clashes."""
        for family in self.families:
            yield family._family()

