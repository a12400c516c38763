"""Reading the fake runtime's records against the soak's: how soon the proxy closed an upstream
request after its client left, and how soon its timeouts cut a stalled one.

Both sides take ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for all processes of a Linux
machine), the client right before closing its connection, the fake when its handler is cancelled
because the connection from the proxy closed. Both instants are taken a little late (the close
call and the cancellation each take a turn of their event loop), so a latency is an upper bound
of the proxy's share, give or take the loops' scheduling.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentile
from bench.soak.traffic import PHASES, Disconnect

STALLS = ("stall_first", "stall_mid")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One request the fake runtime received (a record of bench/soak/faulty_runtime.py)."""

    rid: str
    port: int
    fault: str
    stream: bool
    t_start: float
    t_fault: float | None
    t_end: float
    end: str  # done | fault | closed | expired

    @classmethod
    def of(cls, row: Sequence[Any]) -> Upstream:
        return cls(*row)


@dataclass(slots=True)
class Closes:
    """The upstream requests still open when their client left, and what became of them."""

    latency: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})  # closed by the proxy
    by_how: dict[str, list[float]] = field(default_factory=lambda: {"fin": [], "rst": []})  # the same, by close
    closed: list[tuple[float, Disconnect, Upstream]] = field(default_factory=list)  # the same, with both records
    finished: list[float] = field(default_factory=list)  # the fake finished its answer first
    expired: list[float] = field(default_factory=list)  # nobody closed them: a stall ran out
    never_sent: Counter[str] = field(default_factory=Counter)  # disconnects that never reached a backend
    already_done: Counter[str] = field(default_factory=Counter)  # … whose upstream request had ended
    cut_by_fault: int = 0  # the fake cut the upstream request itself after the client left
    sent_late: int = 0  # upstream requests started after their client had left
    sent_late_max: float = 0.0  # … at most this long after
    incomplete_forwarded: int = 0  # before_routing requests that reached a backend: must be 0

    def measured(self) -> list[float]:
        return sorted(x for values in self.latency.values() for x in values)

    def slowest(self, n: int) -> list[tuple[float, Disconnect, Upstream]]:
        return sorted(self.closed, key=lambda x: -x[0])[:n]

    def over(self, limit: float) -> int:
        """Upstream requests that outlived their client by more than ``limit``, however they ended."""
        return sum(x > limit for x in (*self.measured(), *self.finished, *self.expired))


def analyse_closes(disconnects: Iterable[Disconnect], records: Iterable[Upstream]) -> Closes:
    by_rid: dict[str, list[Upstream]] = defaultdict(list)
    for r in records:
        by_rid[r.rid].append(r)
    out = Closes()
    for d in disconnects:
        attempts = by_rid.get(d.rid, [])
        if d.phase == "before_routing" and attempts:
            out.incomplete_forwarded += 1
        if not attempts:
            out.never_sent[d.phase] += 1
            continue
        still_open = [a for a in attempts if a.t_end >= d.t_close]
        if not still_open:
            out.already_done[d.phase] += 1
        for a in still_open:
            if a.t_start > d.t_close:
                out.sent_late += 1
                out.sent_late_max = max(out.sent_late_max, a.t_start - d.t_close)
            after = a.t_end - d.t_close
            if a.end == "closed":
                out.latency[d.phase].append(after)
                out.by_how[d.how].append(after)
                out.closed.append((after, d, a))
            elif a.end == "done":
                out.finished.append(after)
            elif a.end == "expired":
                out.expired.append(after)
            else:
                out.cut_by_fault += 1
    return out


@dataclass(slots=True)
class Cuts:
    """Stalls injected by the fake and how long the proxy let each run before closing it."""

    seconds: dict[str, list[float]] = field(default_factory=dict)  # by the timeout that applies
    limit: dict[str, float] = field(default_factory=dict)
    expired: int = 0  # ran their full length: no timeout cut them
    client_left: int = 0  # ended because the client left first
    unexplained: list[Upstream] = field(default_factory=list)  # closed without stall nor client leaving


def analyse_stalls(records: Iterable[Upstream], disconnects: Iterable[Disconnect],
                   first_token: float, idle: float, request: float) -> Cuts:
    left = {d.rid: d.t_close for d in disconnects}
    out = Cuts(limit={"first token (streams)": first_token, "idle (streams)": idle,
                      "request (unary)": request})
    for name in out.limit:
        out.seconds[name] = []
    for r in records:
        if r.end not in ("closed", "expired"):
            continue
        if r.rid in left and r.t_end >= left[r.rid]:
            out.client_left += r.fault in STALLS
            continue
        if r.fault not in STALLS:
            out.unexplained.append(r)
            continue
        if r.end == "expired":
            out.expired += 1
            continue
        if not r.stream:
            out.seconds["request (unary)"].append(r.t_end - r.t_start)
        elif r.fault == "stall_first":
            out.seconds["first token (streams)"].append(r.t_end - r.t_start)
        else:
            out.seconds["idle (streams)"].append(r.t_end - (r.t_fault or r.t_start))
    return out


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of ``values``; NaN when empty."""
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 99), percentile(ordered, 100)


def stale_connections(local_ports: Iterable[int], last_request: dict[int, float], now: float,
                      max_idle: float) -> list[tuple[int, float | None]]:
    """Upstream connections of the proxy that carried no request for over ``max_idle`` s (or
    none at all): not in its pool's rotation, so held by nothing that will use them again."""
    out: list[tuple[int, float | None]] = []
    for port in local_ports:
        seen = last_request.get(port)
        idle = None if seen is None else now - seen
        if idle is None or idle > max_idle:
            out.append((port, idle))
    return out
