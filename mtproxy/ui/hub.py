"""What the page shows, kept cheap: the activity ring, the 15-minute chart series and markers,
and the one SSE stream every viewer reads.

On the request path the proxy's observer hook calls :meth:`Hub.record`: one tuple appended to a
bounded deque (and to the history's batch when it is on). Nothing is serialised there. While at
least one viewer is connected a broadcaster wakes twice a second, serialises what is new once
and hands the same bytes to every viewer; each viewer has a bounded backlog and is dropped when
it falls behind (a viewer that stops reading never slows the relay). With no viewer there is no
broadcaster: only a once-a-second sampler that reads the pool and the token window for the
charts and markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from time import perf_counter
from time import time as _time
from typing import Any

import orjson
from yarl import URL

from ..backends import BackendPool
from ..config import ConfigError, UiConfig
from ..metrics.instruments import Metrics
from ..metrics.meter import ANSWERED, Measurement, RequestMeter
from ..status import pool_status
from .activity import COLUMNS, Record, as_dict, format_name
from .history import History

log = logging.getLogger("mtproxy.ui")

TICK = 0.5  # seconds between broadcasts while someone watches
SAMPLE = 5.0  # seconds per chart point
SPAN = 15 * 60.0  # seconds of chart history
HELLO_RECORDS = 200  # records a new viewer gets at once
MAX_BACKLOG = 1 << 20  # bytes a viewer may have unsent before it is dropped
WRITE_TIMEOUT = 10.0  # seconds one write to a viewer may take before it is dropped
KEEPALIVE = 15.0


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Viewer:
    """One open event stream: a bounded backlog of bytes waiting for its writer."""

    def __init__(self, max_backlog: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.max_backlog = max_backlog
        self.dropped = False
        self.wake = asyncio.Event()

    def push(self, data: bytes) -> None:
        if self.dropped:
            return
        if self.size + len(data) > self.max_backlog:
            self.dropped = True  # fell behind: its writer ends the stream
        else:
            self.chunks.append(data)
            self.size += len(data)
        self.wake.set()

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        self.wake.clear()
        return data


class _Names(dict[type, str]):
    """Client format class -> its name in a record, named when first seen (one subscript per
    record, no call)."""

    def __missing__(self, kind: type) -> str:
        name = self[kind] = format_name(kind)
        return name


class Hub:
    def __init__(self, config: UiConfig, pool: BackendPool, metrics: Metrics,
                 proxy_state: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.proxy_state = proxy_state
        self.ring: deque[Record] = deque(maxlen=config.ring)
        self.seq = 0  # records ever added to the ring
        self.history = History(config.history, config.history_max_rows, config.history_max_age_seconds) \
            if config.history else None
        self.pending: list[Record] = []  # for the history's next batch
        self.points: deque[dict[str, Any]] = deque(maxlen=int(SPAN / SAMPLE))
        self.markers: deque[dict[str, Any]] = deque(maxlen=500)
        self.viewers: set[Viewer] = set()
        self.dropped = 0  # viewers dropped for falling behind
        self.max_backlog = MAX_BACKLOG
        self.verify: dict[str, Any] | None = None  # the last verify run (views.py)
        self._broadcaster: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtproxy-ui-history")
        self._sent_seq = 0
        self._sent_overview = b""
        self._new_points: list[dict[str, Any]] = []
        self._new_markers: list[dict[str, Any]] = []
        self._last: dict[str, Any] = {}  # the state the sampler saw last (markers are its changes)
        self._point_seq = 0
        self._formats = _Names()  # client format class -> its name in a record

    # --- the request path ------------------------------------------------------------------
    def record(self, meter: RequestMeter, m: Measurement, fmt: object) -> None:
        """The proxy's observer: the record of one finished request, in :data:`COLUMNS`' order
        (activity.py), without a call it can do without (the labels unpacked at once)."""
        backend, _, model, mtp, endpoint, stream = meter.labels
        report = meter.report
        attempts = meter.attempts
        rec = (_time(), self._formats[fmt.__class__], endpoint, stream, model, backend,
               mtp == "on", meter.http_status if meter.outcome is ANSWERED else meter.outcome.value, m.ttft,
               m.decode_rate, m.tokens_per_step, report.draft_tokens, report.accepted_tokens, report.prompt_tokens,
               m.output_tokens, m.duration, attempts - 1 if attempts > 1 else 0)
        self.ring.append(rec)
        self.seq += 1
        if self.history is not None:
            self.pending.append(rec)

    # --- reading ---------------------------------------------------------------------------
    def latest(self, n: int) -> list[Record]:
        """The newest ``n`` records in the ring, oldest first."""
        n = min(n, len(self.ring))
        return list(islice(reversed(self.ring), n))[::-1]

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def overview(self) -> dict[str, Any]:
        status = pool_status(self.pool)
        rates: dict[str, float] = {}
        for (backend, _model), rate in self.metrics.window.rates(perf_counter()):
            rates[backend] = rates.get(backend, 0.0) + rate
        for b in status["backends"]:
            b["url"] = _no_secret(b["url"])
            b["tokens_per_second"] = round(rates.get(b["name"], 0.0), 2)
            b["health_interval"] = self.pool.config.health.interval
        status["proxy"] = self.proxy_state()
        status["window_seconds"] = self.metrics.window.seconds
        status["history"] = self.history is not None
        return status

    def hello(self) -> bytes:
        return sse("hello", {"columns": COLUMNS, "overview": self.overview(),
                             "requests": [as_dict(r) for r in self.latest(HELLO_RECORDS)],
                             "points": list(self.points), "markers": list(self.markers),
                             "verify": self.verify, "sample_seconds": SAMPLE, "span_seconds": SPAN})

    # --- viewers ---------------------------------------------------------------------------
    def join(self) -> Viewer:
        viewer = Viewer(self.max_backlog)
        if not self.viewers:
            self._sent_seq = self.seq
            self._sent_overview = b""
        self.viewers.add(viewer)
        if self._broadcaster is None or self._broadcaster.done():
            self._broadcaster = asyncio.create_task(self._broadcast(), name="mtproxy-ui-broadcast")
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if viewer.dropped:
            self.dropped += 1
            log.info("page viewer dropped: it fell %d bytes behind", viewer.max_backlog)

    def publish(self, event: str, data: Any) -> None:
        """One event to every viewer now (rare events: a verify run's progress)."""
        if self.viewers:
            chunk = sse(event, data)
            for v in list(self.viewers):
                v.push(chunk)

    async def _broadcast(self) -> None:
        while self.viewers:
            out = []
            if self.seq != self._sent_seq:
                out.append(self._unsent())
            overview = sse("overview", self.overview())
            if overview != self._sent_overview:
                self._sent_overview = overview
                out.append(overview)
            if self._new_points or self._new_markers:
                out.append(sse("series", {"points": self._new_points, "markers": self._new_markers}))
            self._new_points, self._new_markers = [], []
            if out:
                chunk = b"".join(out)
                for v in list(self.viewers):
                    v.push(chunk)
            await asyncio.sleep(TICK)
        self._new_points, self._new_markers = [], []

    def _unsent(self) -> bytes:
        """The ``requests`` event of the records viewers have not had yet (the newest
        ``seq - _sent_seq`` in the ring), marked sent."""
        new, self._sent_seq = self.seq - self._sent_seq, self.seq
        return sse("requests", [as_dict(r) for r in self.latest(new)])

    # --- background work: the sampler and the history writer -------------------------------
    async def run(self) -> None:
        """Once a second: markers from the pool's changes, a chart point every SAMPLE seconds,
        the history's batch written in the worker thread."""
        ticks = 0
        self._point_seq = self.seq
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            self._watch()
            if ticks % int(SAMPLE) == 0:
                self._sample()
            await self.flush()

    async def flush(self) -> None:
        """Write the history's batch, in the worker thread."""
        history = self.history  # (a reload may switch it off or move it while this one writes)
        if self.pending and history is not None:
            batch, self.pending = self.pending, []
            await self.in_thread(_write, history, batch)

    def track(self, task: asyncio.Task) -> None:
        """A task of the page's (a verify run), cancelled when the app stops."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        if self.history is not None:
            await self.in_thread(self.history.open)
            self.ring.extend(await self.in_thread(self.history.latest, self.config.ring))

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._broadcaster] if self._broadcaster is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for v in list(self.viewers):
            v.dropped = True
            v.wake.set()
        if self.history is not None:
            await self.flush()
            await self.in_thread(self.history.close)
        self._thread.shutdown(wait=False)

    # --- a reloaded ``ui:`` section (reload.py) ---------------------------------------------
    async def reopen(self, config: UiConfig) -> History | None:
        """The history a reloaded ``ui:`` section needs, opened on the worker thread before
        anything changes (a ConfigError naming ``ui.history`` when it cannot be); None when there
        is none to open (the path unchanged, or unset)."""
        if not config.history or config.history == self.config.history:
            return None
        history = History(config.history, config.history_max_rows, config.history_max_age_seconds)
        try:
            await self.in_thread(history.open)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"ui.history: {config.history!r} cannot be opened as an SQLite file: {exc}") from None
        return history

    async def replace(self, config: UiConfig, history: History | None) -> None:
        """Take a reloaded ``ui:`` section with the history :meth:`reopen` gave for it.

        A resized ring keeps its newest records; viewers get the records not sent to them yet
        first, so a shrink takes none of theirs (``seq`` counts on across the resize). A history
        whose path stays takes the new limits (at its next trim). One moved or switched off gets
        the records pending for it, then is closed, on the worker thread after any write queued
        before; records from the switch on go to the new one."""
        old_config, self.config = self.config, config
        if config.ring != self.ring.maxlen:
            if self.viewers and self.seq != self._sent_seq:
                chunk = self._unsent()
                for v in list(self.viewers):
                    v.push(chunk)
            self.ring = deque(self.ring, maxlen=config.ring)
        old = self.history
        if (config.history or None) == (old_config.history or None):
            if old is not None:
                old.max_rows, old.max_age = config.history_max_rows, config.history_max_age_seconds
            return
        assert (history is not None) == bool(config.history), "Hub.reopen() gives the new history"
        batch, self.pending = self.pending, []
        self.history = history  # with the batch taken in the same step: no record is left between
        if old is not None:
            await self.in_thread(_retire, old, batch)

    def marker(self, kind: str, backend: str | None, detail: str = "") -> None:
        m = {"t": time.time(), "kind": kind, "backend": backend, "detail": detail}
        self.markers.append(m)
        if self.viewers:
            self._new_markers.append(m)

    def _watch(self) -> None:
        last = self._last
        pool = self.pool
        if last.get("config") is not None and last["config"] is not pool.config:
            self.marker("reload", None, "config reloaded")
        last["config"] = pool.config
        for b in pool.backends:
            key = "up:" + b.name
            if key in last and last[key] != b.up:
                self.marker("up" if b.up else "down", b.name, "" if b.up else b.detail)
            last[key] = b.up
            if b.member is not None:
                key = "state:" + b.name
                state = b.member.state
                if key in last and last[key] != state and state in ("ready", "stopped"):
                    self.marker("started" if state == "ready" else "stopped", b.name)
                last[key] = state
        if pool.swapper is not None:
            for g in pool.swapper.groups.values():
                key = "swaps:" + g.name
                if key in last and g.swaps > last[key]:
                    self.marker("swap", None, f"group {g.name}")
                last[key] = g.swaps

    def _sample(self) -> None:
        new = self.seq - self._point_seq
        self._point_seq = self.seq
        recs = self.latest(new) if new else []
        tps: dict[str, float] = {}
        for (backend, _model), rate in self.metrics.window.rates(perf_counter()):
            tps[backend] = round(tps.get(backend, 0.0) + rate, 2)
        ttfts = sorted(r[8] for r in recs if r[8] is not None)
        steps: dict[str, list[float]] = {}
        drafts: dict[str, list[int]] = {}
        for r in recs:
            if r[10] is not None:
                steps.setdefault(r[5], []).append(r[10])
            if r[11]:
                d = drafts.setdefault(r[5], [0, 0])
                d[0] += r[11]
                d[1] += r[12] or 0
        point = {"t": time.time(), "tps": tps,
                 "ttft_p50": _pct(ttfts, 0.5), "ttft_p95": _pct(ttfts, 0.95),
                 "tokens_per_step": {b: round(sum(v) / len(v), 3) for b, v in steps.items()},
                 "acceptance": {b: round(a / d, 3) for b, (d, a) in drafts.items() if d}}
        self.points.append(point)
        if self.viewers:
            self._new_points.append(point)


def _write(history: History, batch: list[Record]) -> None:
    """``batch`` written to ``history`` (on the worker thread); a failure logged: a full disk must
    not stop the page or a reload."""
    try:
        history.write(batch)
    except Exception as exc:
        log.warning("ui history %s: writing %d rows failed: %s", history.path, len(batch), exc)


def _retire(history: History, batch: list[Record]) -> None:
    """A history a reload moved or switched off: its pending records written, then closed (on the
    worker thread)."""
    try:
        if batch:
            _write(history, batch)
    finally:
        history.close()


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def _no_secret(url: str) -> str:
    """A backend's URL as shown: no user, password or query (a token may hide there)."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return ""
