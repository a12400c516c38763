"""The runtimes' own metrics on mtproxy's ``/metrics`` (``metrics.runtime_metrics: true``).

Each backend whose runtime has metrics of its own (``Runtime.metrics_path``: vLLM, SGLang,
llama.cpp, TensorRT-LLM's JSON converted; not Ollama, MLX-LM, llama-cpp-python) is read at most
once per ``runtime_metrics_cache_seconds``, all at once, each read cut at
``runtime_metrics_timeout``: a scrape of mtproxy never waits longer for a slow or dead backend, and
a read that failed is not tried again before the cache expires. A read is parsed once, off the
event loop, with prometheus_client's own parser; every sample gains ``backend`` and ``runtime``
(the proxy's values); a label of the runtime's own by either name keeps its value as
``exported_backend`` / ``exported_runtime``, as Prometheus renames a target's clashing labels.

Handled, not passed through (each counted in ``mtproxy_runtime_metrics_errors_total{backend,
reason}`` and logged at most once a minute per backend and reason): a read that timed out
(``timeout``), could not connect (``unreachable``), answered another status than 200
(``status``, e.g. llama-server without ``--metrics``), was larger than 16 MiB (``too_large``),
or did not parse or repeats a series (``malformed``): that backend's families are left out of
that scrape, the rest of the page is intact. A family named like one of mtproxy's own request
families or under its ``mtproxy_`` prefix, or of another type than the same-named family of a
backend listed before it (or of the proxy's own registry, e.g. ``process_*``), is left out
(``clash``). Families of one name and type from several backends are merged into one, the
first one's help text kept; those named like a family of the proxy's registry (a Python
runtime's ``process_*``) join that family, beside the proxy's own series.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from yarl import URL

log = logging.getLogger("mtproxy.metrics")

MAX_BYTES = 16 * 2**20  # a runtime's page larger than this is not read on
RESERVED_PREFIX = "mtproxy_"
EXPORTED = "exported_"  # Prometheus' prefix for a scraped label the target's own labels clash with
ACCEPT = "text/plain;version=0.0.4"  # the format parsed here (a prometheus_client server could answer OpenMetrics)
LOG_EVERY = 60.0  # seconds between two log lines of one backend's same failure
ADDED = ("backend", "runtime")
_SEQ = itertools.count()


class ScrapeFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- what it reads of the backends -------------------------------------------------------------

class _RuntimeSide(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def metrics_path(self) -> str | None: ...

    def exposition(self, body: bytes) -> str: ...


class Source(Protocol):
    """What is read of a backend (``backends.Backend``)."""

    @property
    def name(self) -> str: ...

    @property
    def runtime(self) -> _RuntimeSide: ...

    @property
    def up(self) -> bool: ...

    @property
    def headers(self) -> dict[str, str]: ...

    def url(self, path: str) -> URL: ...


class Settings(Protocol):
    @property
    def runtime_metrics(self) -> bool: ...

    @property
    def runtime_metrics_cache_seconds(self) -> float: ...

    @property
    def runtime_metrics_timeout(self) -> float: ...


class _Config(Protocol):
    @property
    def metrics(self) -> Settings: ...


class Sources(Protocol):
    """The backend pool as it is at scrape time (``backends.BackendPool``; a reload replaces
    both its backends and its config)."""

    @property
    def backends(self) -> Sequence[Source]: ...

    @property
    def config(self) -> _Config: ...


class Errors(Protocol):
    def labels(self, backend: str, reason: str) -> _Inc: ...


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


# --- one backend's read ------------------------------------------------------------------------

@dataclass(slots=True)
class Read:
    """One read of a backend: its families relabelled, or why there are none."""

    at: float
    families: list[Metric] = field(default_factory=list)
    failed: str | None = None  # the reason
    seq: int = field(default_factory=lambda: next(_SEQ))  # which page it makes, with the others


def names(metric: Metric) -> tuple[str, str]:
    """The family's name and the name its ``# TYPE`` line shows in the text format (a counter's
    with ``_total``): two families on one page may share neither."""
    return metric.name, metric.name + "_total" if metric.type == "counter" else metric.name


_HAS_CREATED = ("counter", "histogram", "summary")


def relabel(text: str, backend: str, runtime: str) -> list[Metric]:
    """``text`` parsed, every sample labelled ``backend`` and ``runtime`` (the runtime's own
    labels of those names kept as ``exported_…``); families of one name merged, and the
    ``<name>_created`` gauges the text format splits off a counter, histogram or summary put
    back as its ``_created`` samples (OpenMetrics has them inside). Raises ``ValueError`` on a
    malformed exposition or a series given twice."""
    families: dict[str, Metric] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for parsed in text_string_to_metric_families(text):
        family = families.get(parsed.name)
        if family is None:
            family = families[parsed.name] = Metric(parsed.name, parsed.documentation, parsed.type, parsed.unit)
        elif family.type != parsed.type:
            raise ValueError(f"{parsed.name}: two types ({family.type}, {parsed.type})")
        for s in parsed.samples:
            labels = dict(s.labels)
            for name in ADDED:
                if name in labels:
                    key = EXPORTED + name
                    while key in labels:
                        key = EXPORTED + key
                    labels[key] = labels.pop(name)
            labels["backend"], labels["runtime"] = backend, runtime
            key_ = (s.name, tuple(sorted(labels.items())))
            if key_ in seen:
                raise ValueError(f"{s.name}: the series {dict(s.labels)} twice")
            seen.add(key_)
            family.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
    for name in [n for n, f in families.items() if f.type == "gauge" and n.endswith("_created")]:
        base = families.get(name.removesuffix("_created"))
        if base is not None and base.type in _HAS_CREATED:
            base.samples.extend(families.pop(name).samples)
    return list(families.values())


def merge(reads: Iterable[tuple[str, list[Metric]]], reserved: frozenset[str]) -> tuple[list[Metric], list[str]]:
    """Every backend's families (in the backends' order) as one list, same-named families of one
    type merged; a family named like a ``reserved`` one or under ``mtproxy_``, or like a family
    of another type listed before it, left out: returned as the backends that had such a clash."""
    merged: dict[str, Metric] = {}
    taken: dict[str, Metric] = {}  # by both of its names
    clashed: list[str] = []
    for backend, families in reads:
        clash = False
        for family in families:
            both = names(family)
            if reserved.intersection(both) or family.name.startswith(RESERVED_PREFIX):
                clash = True
                continue
            into = merged.get(family.name)
            if into is None:
                if any(n in taken for n in both):  # e.g. a gauge `x_total` beside a counter `x`
                    clash = True
                    continue
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                taken.update(dict.fromkeys(both, into))
            elif into.type != family.type:
                clash = True
                continue
            into.samples.extend(family.samples)
        if clash:
            clashed.append(backend)
    return list(merged.values()), clashed


# --- the page's part ---------------------------------------------------------------------------

class _Families:
    """A fixed list of families where prometheus_client's exposition wants a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Page:
    """The runtimes' families for one render (metrics/export.py, in its worker thread): those
    named like a family of the proxy's registry join it (:meth:`own`), the rest are rendered
    after the proxy's own (:meth:`text`), once per format until the next read of any backend."""

    def __init__(self, families: list[Metric], up: Metric, clash: Callable[[str], None]) -> None:
        self.families = families
        self.up = up
        self._clash = clash  # counts and logs a backend's clash, once per page
        self._reported = False
        self._text: dict[tuple[bool, frozenset[str]], bytes] = {}

    def own(self, registry: CollectorRegistry) -> tuple[list[Metric], frozenset[str], list[str]]:
        """The registry's families with the runtimes' samples of the same name and type added;
        the names taken; the names of runtime families left out for another type."""
        own = list(registry.collect())
        ours = {n: i for i, m in enumerate(own) for n in names(m)}
        clashed: list[str] = []
        for family in self.families:
            found = {ours[n] for n in names(family) if n in ours}
            if not found:
                continue
            index = found.pop()
            mine = own[index]
            if found or mine.name != family.name or mine.type != family.type:
                clashed.append(family.name)
                continue
            own[index] = joined = Metric(mine.name, mine.documentation, mine.type, mine.unit)
            joined.samples = [*mine.samples, *family.samples]
        if clashed and not self._reported:
            self._reported = True
            for backend in sorted({s.labels["backend"] for f in self.families if f.name in clashed
                                   for s in f.samples}):
                self._clash(backend)
        return own, frozenset(ours), clashed

    def text(self, openmetrics: bool, taken: frozenset[str]) -> bytes:
        key = (openmetrics, taken)
        body = self._text.get(key)
        if body is None:
            rest = [f for f in self.families if not taken.intersection(names(f))]
            body = _render([self.up, *rest], openmetrics)
            self._text[key] = body
        return body


def _render(families: Sequence[Metric], openmetrics: bool) -> bytes:
    if not openmetrics:
        return generate_latest(_Families(families))
    # "allow-utf-8": the default escaping writes the samples of `vllm:x` as `vllm_x` under a
    # `# TYPE vllm:x` line (prometheus_client 0.26); legacy names are written as they are
    body = generate_openmetrics(_Families(families), escaping=ALLOWUTF8)
    return body.removesuffix(b"# EOF\n")


def render_own(registry: CollectorRegistry, page: Page | None, openmetrics: bool) -> tuple[bytes, bytes]:
    """The proxy's registry (with the runtimes' same-named families joined) and the runtimes'
    remaining families, each in the format asked for (OpenMetrics without ``# EOF``)."""
    if page is None:
        return _render(list(registry.collect()), openmetrics), b""
    own, taken, _ = page.own(registry)
    return _render(own, openmetrics), page.text(openmetrics, taken)


# --- the reader ---------------------------------------------------------------------------------

class RuntimeMetrics:
    """Reads the backends' own metrics on the event loop, bounded in time and by a cache; owns
    the reads in flight (:meth:`close` cancels them). ``session`` is the app's client session,
    set once it exists (app.py's cleanup context)."""

    def __init__(self, pool: Sources, errors: Errors, reserved: Iterable[str]) -> None:
        self.pool = pool
        self.errors = errors
        self.reserved = frozenset(reserved)
        self.session: aiohttp.ClientSession | None = None
        self._reads: dict[int, tuple[Source, Read]] = {}  # by id(backend): a reload's new backend reads afresh
        self._inflight: dict[int, asyncio.Task[Read]] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._page: tuple[tuple[int, ...], Page] | None = None  # by its reads' seq

    @property
    def enabled(self) -> bool:
        return self.pool.config.metrics.runtime_metrics and self.session is not None

    async def page(self) -> Page | None:
        """The runtimes' families for this scrape (None when the option is off): fresh reads
        where the cache has expired, all at once, each within the timeout."""
        if not self.enabled:
            return None
        settings = self.pool.config.metrics
        now = time.monotonic()
        backends = [b for b in self.pool.backends if b.runtime.metrics_path is not None]
        live = {id(b) for b in backends}
        for key in [k for k in self._reads if k not in live]:
            del self._reads[key]
        waiting = []
        for b in backends:
            if not b.up:  # known down (its health check says why): not read, not an error
                known = self._reads.get(id(b))
                if known is None or known[1].failed != "down":
                    self._reads[id(b)] = (b, Read(now, failed="down"))
                continue
            known = self._reads.get(id(b))
            if known is not None and now - known[1].at < settings.runtime_metrics_cache_seconds:
                continue
            task = self._inflight.get(id(b))
            if task is None:
                task = self._inflight[id(b)] = asyncio.create_task(
                    self._read(b, settings.runtime_metrics_timeout), name=f"mtproxy-runtime-metrics-{b.name}")
            waiting.append(task)
        if waiting:
            await asyncio.wait(waiting)  # each read ends within the timeout on its own
        return self._assemble(backends)

    def _assemble(self, backends: list[Source]) -> Page:
        reads = [(b, self._reads[id(b)][1]) for b in backends if id(b) in self._reads]
        generation = tuple(r.seq for _, r in reads)
        if self._page is not None and self._page[0] == generation:
            return self._page[1]
        up = GaugeMetricFamily("mtproxy_runtime_metrics_up",
                               "1 when the backend's own metrics were read and are on this page.",
                               labels=ADDED)
        for b, r in reads:
            up.add_metric((b.name, b.runtime.name), 0.0 if r.failed else 1.0)
        families, clashed = merge(((b.name, r.families) for b, r in reads if not r.failed), self.reserved)
        for name in clashed:
            self._clashed(name)
        page = Page(families, up, self._clashed)
        self._page = (generation, page)
        return page

    async def _read(self, backend: Source, timeout: float) -> Read:
        try:
            try:
                async with asyncio.timeout(timeout):
                    body = await self._get(backend)
                runtime = backend.runtime
                families = await asyncio.get_running_loop().run_in_executor(
                    None, _parse, runtime, body, backend.name)
                read = Read(time.monotonic(), families)
            except ScrapeFailed as exc:
                read = self._failed_read(backend, exc.reason, str(exc))
            except TimeoutError:
                read = self._failed_read(backend, "timeout", f"no answer within {timeout:g} s")
            except (OSError, aiohttp.ClientError) as exc:
                read = self._failed_read(backend, "unreachable", str(exc) or type(exc).__name__)
            self._reads[id(backend)] = (backend, read)
            return read
        finally:
            self._inflight.pop(id(backend), None)

    async def _get(self, backend: Source) -> bytes:
        assert self.session is not None and backend.runtime.metrics_path is not None
        path = backend.runtime.metrics_path
        async with self.session.get(backend.url(path), headers={**backend.headers, "Accept": ACCEPT}) as resp:
            if resp.status != 200:
                raise ScrapeFailed("status", f"{path} answered HTTP {resp.status}")
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise ScrapeFailed("too_large", f"{path} is larger than {MAX_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    def _clashed(self, backend: str) -> None:
        self._failed(backend, "clash", "families named like mtproxy's own, or like another backend's "
                     "of another type, left out")

    def _failed_read(self, backend: Source, reason: str, detail: str) -> Read:
        self._failed(backend.name, reason, detail)
        return Read(time.monotonic(), failed=reason)

    def _failed(self, backend: str, reason: str, detail: str) -> None:
        self.errors.labels(backend, reason).inc()
        now = time.monotonic()
        last = self._logged.get((backend, reason))
        if last is None or now - last >= LOG_EVERY:
            self._logged[(backend, reason)] = now
            log.warning("backend %s: its own metrics left out of /metrics (%s): %s", backend, reason, detail)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _parse(runtime: _RuntimeSide, body: bytes, backend: str) -> list[Metric]:
    """In a worker thread: the runtime's page as relabelled families; a malformed one is a
    ScrapeFailed("malformed")."""
    try:
        return relabel(runtime.exposition(body), backend, runtime.name)
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # what the parser raises on bad input
        raise ScrapeFailed("malformed", str(exc)[:200]) from None


__all__ = ["Page", "RuntimeMetrics", "merge", "relabel", "render_own"]
