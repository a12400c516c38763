"""The machine a run measured on, as every report's header states it: CPU model and cores, kernel,
versions, the commit measured, and how much of the machine other work used meanwhile."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CLK_TCK

ROOT = Path(__file__).resolve().parent.parent


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The commit of this checkout, and whether mtproxy/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        dirty = git("status", "--porcelain", "--", "mtproxy", "pyproject.toml")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" + uncommitted changes in mtproxy/" if dirty else "")


def describe(*dists: str, more: str = "") -> list[str]:
    """The header lines on the machine and the versions: aiohttp, uvloop, orjson and ``dists``;
    ``more`` after them (a peer's version)."""
    versions = ", ".join(f"{d} {version(d)}" for d in ("aiohttp", "uvloop", "orjson", *dists))
    return [f"- machine: {cpu_model()}, {os.cpu_count()} cores; Linux {platform.release()}",
            f"- Python {platform.python_version()}, {versions} (event loop in the bench processes: {loop_name()})"
            + more]


# --- the machine's other work ------------------------------------------------------------------

def busy_ticks() -> int:
    """CPU ticks spent busy on the whole machine (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def own_cpu() -> float:
    """CPU seconds of this process and of its children waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """The cores other processes kept busy from its creation on: the machine's busy time less this
    process's and its children's. Read :meth:`cores` once the children were waited for (their CPU
    counts from then on)."""

    def __init__(self) -> None:
        self.busy0, self.own0, self.t0 = busy_ticks(), own_cpu(), time.monotonic()
        self.loadavg0 = os.getloadavg()[0]

    def cores(self) -> float:
        ours = own_cpu() - self.own0
        return max(0.0, (busy_ticks() - self.busy0) / CLK_TCK - ours) / (time.monotonic() - self.t0)


def wait_quiet(max_wait: float, cores: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until the machine's other load is below ``cores``; returns the
    load last seen. Nothing of the bench runs yet, so all busy time is someone else's."""
    start = time.monotonic()
    told = -30.0
    while True:
        b0, t0 = busy_ticks(), time.monotonic()
        time.sleep(2.0)
        load = (busy_ticks() - b0) / CLK_TCK / (time.monotonic() - t0)
        waited = time.monotonic() - start
        if load < cores or waited >= max_wait:
            return load
        if waited - told >= 30:
            told = waited
            print(f"machine busy ({load:.2f} cores used by other processes); waiting up to "
                  f"{max_wait - waited:.0f} s more for it to calm down", file=sys.stderr, flush=True)
