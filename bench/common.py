"""Small helpers shared by the bench processes: event loop, /proc readings, ports, percentiles."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOCALHOST = "127.0.0.1"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (as mtproxy does), else on asyncio's loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


class LoopLag:
    """Watches this process's event loop: a timer every ``every`` s; each time it fires more than
    ``over`` s late, (when it was due, how late) is kept. Run :meth:`watch` as a task; ``late``
    takes what another process watched."""

    def __init__(self, every: float = 0.01, over: float = 0.02,
                 late: list[tuple[float, float]] | None = None) -> None:
        self.every, self.over = every, over
        self.late: list[tuple[float, float]] = list(late or [])

    async def watch(self) -> None:
        while True:
            due = time.monotonic() + self.every
            await asyncio.sleep(self.every)
            lag = time.monotonic() - due
            if lag > self.over:
                self.late.append((due, lag))

    def worst(self, start: float, end: float) -> float:
        """The longest lag that overlapped [start, end]; 0 when none."""
        return max((lag for due, lag in self.late if due <= end and due + lag >= start), default=0.0)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


# --- /proc ---------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """``pid`` and all its descendants (a peer like LiteLLM may fork workers)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        parent[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU time of ``pid`` (all its threads) from /proc/<pid>/stat, in seconds.

    utime and stime are counted in clock ticks (1/CLK_TCK s, usually 10 ms): a measured segment
    must burn well over a second of CPU in total for a 1 % reading, which the runner's segment
    lengths ensure. ``tree``: add the descendants too.
    """
    total = 0
    for p in children(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat(5))
    return total / CLK_TCK


def task_cpu_ns(pid: int, tree: bool = False) -> int:
    """The same CPU time at nanosecond resolution: the sum over the process's live threads of
    /proc/<pid>/task/<tid>/schedstat (time on CPU). Threads that already exited are missing, so
    this is checked against :func:`cpu_seconds`, never used alone."""
    total = 0
    for p in children(pid) if tree else [pid]:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


class CpuClock:
    """CPU time of a process: ns-resolution schedstat where it agrees with /proc/<pid>/stat
    (within 2 ticks + 5 %), else /proc/<pid>/stat."""

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.pid, self.tree = pid, tree

    def read(self) -> tuple[float, float]:
        return cpu_seconds(self.pid, self.tree), task_cpu_ns(self.pid, self.tree) / 1e9

    @staticmethod
    def delta(before: tuple[float, float], after: tuple[float, float]) -> float:
        stat = after[0] - before[0]
        sched = after[1] - before[1]
        if sched > 0 and abs(sched - stat) <= 2 / CLK_TCK + 0.05 * stat:
            return sched
        return stat


def rss_bytes(pid: int, tree: bool = False) -> int:
    """Resident set size (VmRSS of /proc/<pid>/status), summed over descendants with ``tree``."""
    total = 0
    for p in children(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --- statistics ----------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Sequence[float]) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
