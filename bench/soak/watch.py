"""What the soak watches in the proxy from outside: its sockets and file descriptors (/proc),
and the figures of its ``/metrics``."""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import CLK_TCK, cpu_seconds, rss_bytes
from bench.machine import busy_ticks

# /proc/net/tcp states (include/net/tcp_states.h)
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


@dataclass(frozen=True, slots=True)
class Sockets:
    """The TCP sockets a process holds open (through its file descriptors), by side and state."""

    client: Counter[str]  # local port = the proxy's port: connections of the proxy's clients
    upstream: Counter[str]  # remote port = a backend's port
    other: Counter[str]
    fds: int  # all open file descriptors
    upstream_ports: tuple[int, ...]  # local ports of the established upstream connections

    @property
    def client_open(self) -> int:
        return sum(n for state, n in self.client.items() if state != "LISTEN")

    @property
    def upstream_established(self) -> int:
        return self.upstream["ESTABLISHED"]

    @property
    def close_wait(self) -> int:
        return self.client["CLOSE_WAIT"] + self.upstream["CLOSE_WAIT"] + self.other["CLOSE_WAIT"]

    def describe(self) -> str:
        def fmt(c: Counter[str]) -> str:
            return ", ".join(f"{n} {s}" for s, n in sorted(c.items())) or "none"

        return f"clients: {fmt(self.client)}; upstream: {fmt(self.upstream)}; fds: {self.fds}"


def _socket_inodes(pid: int) -> tuple[set[int], int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes, len(names)


def _tcp_rows(pid: int) -> Iterable[tuple[int, int, int, int]]:
    """(local port, remote port, state, inode) of every TCP socket in the process's namespace."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            yield int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), int(state, 16), int(inode)


def sockets(pid: int, proxy_port: int, backend_ports: Iterable[int]) -> Sockets:
    inodes, fds = _socket_inodes(pid)
    backends = set(backend_ports)
    client: Counter[str] = Counter()
    upstream: Counter[str] = Counter()
    other: Counter[str] = Counter()
    ports: list[int] = []
    for local, remote, state, inode in _tcp_rows(pid):
        if inode not in inodes:
            continue
        name = TCP_STATES.get(state, str(state))
        if local == proxy_port:
            client[name] += 1
        elif remote in backends:
            upstream[name] += 1
            if name == "ESTABLISHED":
                ports.append(local)
        else:
            other[name] += 1
    return Sockets(client, upstream, other, fds, tuple(ports))


@dataclass(slots=True)
class ProxyMetrics:
    """The figures the soak reads from mtproxy's /metrics."""

    tasks: int | None = None  # mtproxy_event_loop_tasks
    in_flight: dict[str, float] = field(default_factory=dict)  # per backend
    backend_up: dict[str, float] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)  # mtproxy_requests_total by status
    retries: float = 0.0
    # the backends mtproxy starts and stops (swap.py): the swap scenario reads these
    swaps: dict[str, float] = field(default_factory=dict)  # mtproxy_group_swaps_total by group
    starts: Counter[str] = field(default_factory=Counter)  # mtproxy_backend_starts_total by reason
    stops: Counter[str] = field(default_factory=Counter)  # mtproxy_backend_stops_total by reason
    state: dict[str, str] = field(default_factory=dict)  # mtproxy_backend_state: backend -> its state
    queue_depth: dict[str, float] = field(default_factory=dict)  # mtproxy_backend_queue_depth
    start_seconds: tuple[float, float] = (0.0, 0.0)  # mtproxy_backend_start_duration_seconds: (sum, count)
    queue_wait: Counter[float] = field(default_factory=Counter)  # its cumulative buckets, all backends

    @classmethod
    def parse(cls, text: str) -> ProxyMetrics:
        """Only the lines of these few series are parsed (with prometheus_client's parser): the
        whole exposition is some 200 kB, and parsing all of it would hold up the soak's own event
        loop for a good part of a second."""
        wanted = "\n".join(line for line in text.splitlines() if line.startswith(_SERIES))
        out = cls()
        for family in text_string_to_metric_families(wanted):
            for s in family.samples:
                if s.name == "mtproxy_event_loop_tasks":
                    out.tasks = int(s.value)
                elif s.name == "mtproxy_requests_in_flight":
                    out.in_flight[s.labels["backend"]] = s.value
                elif s.name == "mtproxy_backend_up":
                    out.backend_up[s.labels["backend"]] = s.value
                elif s.name == "mtproxy_requests_total":
                    out.requests[s.labels["status"]] += int(s.value)
                elif s.name == "mtproxy_upstream_retries_total":
                    out.retries += s.value
                else:
                    out._swap_sample(s.name, s.labels, s.value)
        return out

    def _swap_sample(self, name: str, labels: dict[str, str], value: float) -> None:
        if name == "mtproxy_group_swaps_total":
            self.swaps[labels["group"]] = value
        elif name == "mtproxy_backend_starts_total":
            self.starts[labels["reason"]] += int(value)
        elif name == "mtproxy_backend_stops_total":
            self.stops[labels["reason"]] += int(value)
        elif name == "mtproxy_backend_state" and value == 1:
            self.state[labels["backend"]] = labels["state"]
        elif name == "mtproxy_backend_queue_depth":
            self.queue_depth[labels["backend"]] = value
        elif name == "mtproxy_backend_start_duration_seconds_sum":
            self.start_seconds = (self.start_seconds[0] + value, self.start_seconds[1])
        elif name == "mtproxy_backend_start_duration_seconds_count":
            self.start_seconds = (self.start_seconds[0], self.start_seconds[1] + value)
        elif name == "mtproxy_backend_queue_wait_seconds_bucket":
            self.queue_wait[float(labels["le"])] += value


_SERIES = ("mtproxy_event_loop_tasks ", "mtproxy_requests_in_flight{", "mtproxy_backend_up{",
           "mtproxy_requests_total{", "mtproxy_upstream_retries_total{", "mtproxy_group_swaps_total{",
           "mtproxy_backend_starts_total{", "mtproxy_backend_stops_total{", "mtproxy_backend_state{",
           "mtproxy_backend_queue_depth{", "mtproxy_backend_start_duration_seconds_",
           "mtproxy_backend_queue_wait_seconds_bucket{")


async def get_metrics(base_url: str) -> str:
    """One GET /metrics on a connection of its own, closed afterwards: every scrape costs the
    proxy the same (one connection, one handler task), so task counts compare like with like.
    Asks for gzip, as Prometheus does."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as s:
        async with s.get(base_url + "/metrics", headers={"Accept-Encoding": "gzip"}) as resp:
            resp.raise_for_status()
            return await resp.text()


async def scrape(base_url: str) -> ProxyMetrics:
    return ProxyMetrics.parse(await get_metrics(base_url))


async def least_tasks(base_url: str, scrapes: int = 5, gap: float = 0.3) -> int:
    """The fewest event-loop tasks over a few scrapes: background probes come and go, a leak stays."""
    counts = []
    for i in range(scrapes):
        if i:
            await asyncio.sleep(gap)
        m = await scrape(base_url)
        if m.tasks is None:
            raise RuntimeError("mtproxy's /metrics has no mtproxy_event_loop_tasks")
        counts.append(m.tasks)
    return min(counts)


class HealthProbe:
    """The proxy's responsiveness: ``GET /health`` every ``every`` s on one keep-alive connection,
    each round trip kept as (start, seconds). /health does no work, so a slow one means the
    proxy's event loop was busy with something else (or this process's was: see its LoopLag).
    Run :meth:`watch` as a task."""

    def __init__(self, base_url: str, every: float = 0.1) -> None:
        self.url = base_url + "/health"
        self.every = every
        self.trips: list[tuple[float, float]] = []

    async def watch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as s:
            while True:
                t = time.monotonic()
                try:
                    async with s.get(self.url) as resp:
                        await resp.read()
                    self.trips.append((t, time.monotonic() - t))
                except (aiohttp.ClientError, OSError, TimeoutError):
                    self.trips.append((t, math.inf))
                await asyncio.sleep(max(0.0, t + self.every - time.monotonic()))

    def worst(self, start: float, end: float) -> float:
        """The slowest round trip that overlapped [start, end]; NaN when none did."""
        return max((rtt for t, rtt in self.trips if t <= end and t + rtt >= start), default=math.nan)


class SchedWatch:
    """Where a process's main thread (its event loop) spent its time, read every ``every`` s from
    /proc/<pid>/schedstat: on a CPU, or runnable but waiting for one. Over a stretch in which the
    process did not serve, much time on a CPU means it was busy with something else; much time
    waiting, that the machine was busy; neither, that it had nothing to do. Run :meth:`watch`."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.path = f"/proc/{pid}/schedstat"
        self.every = every
        self.points: list[tuple[float, int, int]] = []  # (time, ns on a CPU, ns waiting for one)

    async def watch(self) -> None:
        while True:
            try:
                with open(self.path) as f:
                    run, wait = f.read().split()[:2]
            except OSError:  # the process is gone
                return
            self.points.append((time.monotonic(), int(run), int(wait)))
            await asyncio.sleep(self.every)

    def between(self, start: float, end: float) -> tuple[float, float] | None:
        """(seconds on a CPU, seconds waiting for one) from the last reading before ``start`` to
        the first after ``end``; None without readings around both."""
        i = bisect.bisect_right(self.points, (start, math.inf, math.inf)) - 1
        j = bisect.bisect_left(self.points, (end, -1, -1))
        if i < 0 or j >= len(self.points):
            return None
        a, b = self.points[i], self.points[j]
        return (b[1] - a[1]) / 1e9, (b[2] - a[2]) / 1e9

    def waiting(self) -> tuple[float, float]:
        """(share of the time spent waiting for a CPU, the most waited between two readings in s)."""
        if len(self.points) < 2:
            return math.nan, math.nan
        first, last = self.points[0], self.points[-1]
        share = (last[2] - first[2]) / 1e9 / (last[0] - first[0])
        return share, max((b[2] - a[2]) / 1e9 for a, b in zip(self.points, self.points[1:]))


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the proxy during the soak."""

    t: float  # seconds since traffic started
    scrape: tuple[float, float]  # GET /metrics: (start, seconds), time.monotonic()
    rss: int
    cpu: float  # the proxy's CPU seconds so far
    busy: float  # the machine's CPU seconds so far, all cores (/proc/stat)
    tasks: int | None
    in_flight: float
    fds: int
    client_conns: int
    upstream_conns: int
    requests: int  # the soak's requests finished so far


async def sample(t0: float, pid: int, base_url: str, proxy_port: int, backend_ports: list[int],
                 finished: int) -> Sample:
    """Sockets first: the scrape's own connection is not counted."""
    s = sockets(pid, proxy_port, backend_ports)
    start = time.monotonic()
    text = await get_metrics(base_url)
    took = time.monotonic() - start
    m = ProxyMetrics.parse(text)
    return Sample(start - t0, (start, took), rss_bytes(pid), cpu_seconds(pid), busy_ticks() / CLK_TCK, m.tasks,
                  sum(m.in_flight.values()), s.fds, s.client_open, s.upstream_established, finished)
