"""The benchmark runner: direct, floor and mtproxy side by side, interleaved in rounds.

    python -m bench.run                 # the default run (under 5 minutes on 2 cores)
    python -m bench.run --quick         # a ~1-minute smoke run
    python -m bench.run --memory-only   # RSS at rest and after 100,000 requests
    python -m bench.run --memory        # the default run, then the memory check
    python -m bench.run --baseline HEAD~1 --only stream-16-c16   # this tree against another build

Starts one fake runtime process (eight ports: eight backends), the floor proxy and mtproxy for one
backend and for eight, and LiteLLM as a peer when a Python that imports ``litellm`` is found
(bench/peers.md). ``--baseline REV`` adds mtproxy as of git revision REV as one more target in
every scenario: a change measured against the build before it, side by side. For every scenario
it warms each target up, then measures them round by round in rotating order; figures are
medians over the rounds, ratios between targets medians of the ratios within each round. Proxy
CPU comes from /proc/<pid>/stat, RSS from /proc/<pid>/status. Writes
bench/results/<date>-<host>[-quick].md and prints it.
All traffic stays on 127.0.0.1; every load loop is bounded in requests and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.common import CpuClock, rss_bytes, run_loop
from bench.loadgen import LoadResult, LoadSpec, client_session, request_body, run_load
from bench.machine import OtherLoad, describe, git_commit, wait_quiet
from bench.report import DIRECT, FLOOR, MB, PROXY, Memory, Results, Segment
from bench.scenarios import Scenario, default_scenarios, quick_scenarios

MODEL = "bench-model"
RESULTS = Path(__file__).resolve().parent / "results"
CORE = (DIRECT, FLOOR, PROXY)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    urls: tuple[str, ...]  # base URLs, round robin
    pid: int | None  # the proxy process measured; None on the direct path
    tree: bool = False  # count its child processes too (a peer with workers)
    always: bool = False  # in every scenario (a baseline build), not only where peers run


def baseline_name(rev: str) -> str:
    return f"mtproxy@{rev}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- measuring -------------------------------------------------------------------------------------

def peer_scenario(sc: Scenario) -> bool:
    """Peers (LiteLLM) are two orders of magnitude slower: they run the scenarios with up to 16
    16-token requests at a time, where a segment still ends within seconds."""
    return not sc.long_lived and sc.concurrency <= 16 and sc.tokens <= 16 and sc.kind != "messages"


class Bench:
    def __init__(self, results: Results, targets: dict[int, list[Target]], fake_pid: int, rounds: int,
                 progress: Callable[[str], None] = log) -> None:
        self.results = results
        self.targets = targets
        self.fake = CpuClock(fake_pid)
        self.rounds = rounds
        self.progress = progress

    async def segment(self, session: aiohttp.ClientSession, target: Target, sc: Scenario,
                      body: bytes) -> tuple[LoadResult, float | None, float]:
        clock = CpuClock(target.pid, target.tree) if target.pid else None
        before = clock.read() if clock else None
        fake_before = self.fake.read()
        urls = tuple(u + sc.path for u in target.urls)
        result = await run_load(session, LoadSpec(urls, body, sc.stream, sc.concurrency, sc.requests,
                                                  sc.seconds, sc.grace, sc.ramp, sc.read_pause, sc.end))
        cpu = CpuClock.delta(before, clock.read()) if clock and before else None
        return result, cpu, CpuClock.delta(fake_before, self.fake.read())

    async def scenario(self, session: aiohttp.ClientSession, sc: Scenario) -> None:
        targets = [t for t in self.targets[sc.backends] if t.name in CORE or t.always or peer_scenario(sc)]
        if sc.kind == "messages":  # translated by mtproxy alone: the runtime and the floor speak only OpenAI
            targets = [t for t in targets if t.name == PROXY or t.always]
        warm = sc.warmup()
        warm_body, body = warm.body(), sc.body()
        for rnd in range(1, self.rounds + 1):
            k = (rnd - 1) % len(targets)
            for t in targets[k:] + targets[:k]:  # rotate the order every round
                # Right before each segment: connections that idled past a keep-alive timeout
                # (aiohttp's client pools drop them after 15 s) would be opened inside it.
                await self.segment(session, t, warm, warm_body)
                result, cpu, fake_cpu = await self.segment(session, t, sc, body)
                self.results.add(Segment(sc.key, t.name, rnd, result, cpu, fake_cpu))
                cpu_txt = f", {cpu / result.ok * 1e6:.0f} µs CPU/req" if cpu is not None and result.ok else ""
                ttft = f", TTFT p99 {result.ttft(99) * 1000:.1f} ms" if sc.stream else ""
                self.progress(f"  round {rnd} {t.name:>8}: {result.ok} ok, {result.errors} errors, "
                              f"{result.rps:.0f} req/s, p50 {result.latency(50) * 1000:.2f} ms{ttft}{cpu_txt}")
                await asyncio.sleep(0.05)

    async def run(self, scenarios: list[Scenario]) -> None:
        t0 = time.perf_counter()
        async with client_session() as session:
            for i, sc in enumerate(scenarios, 1):
                self.progress(f"[{i}/{len(scenarios)}, {time.perf_counter() - t0:.0f} s] {sc.label}")
                await self.scenario(session, sc)


async def memory_check(mtproxy: procs.Service, requests: int, progress: Callable[[str], None] = log) -> Memory:
    """A fresh mtproxy: RSS at rest, after a warm-up, then every 10,000 of ``requests`` requests
    (unary and streamed 16-token chat requests alternating by batch, c=64)."""
    await asyncio.sleep(1.0)
    rest = rss_bytes(mtproxy.pid)
    url = (mtproxy.url + "/v1/chat/completions",)
    bodies = {False: request_body("chat", 16, stream=False), True: request_body("chat", 16, stream=True)}
    warmup = 2_000
    t0 = time.perf_counter()
    errors = 0
    async with client_session() as session:
        r = await run_load(session, LoadSpec(url, bodies[False], False, 64, warmup // 2, 60))
        r2 = await run_load(session, LoadSpec(url, bodies[True], True, 64, warmup // 2, 60))
        errors += r.errors + r2.errors
        await asyncio.sleep(0.5)
        warm = rss_bytes(mtproxy.pid)
        progress(f"  memory: {rest / MB:.1f} MB at rest, {warm / MB:.1f} MB after {warmup} warm-up requests")
        samples: list[tuple[int, int]] = []
        done, batch, i = 0, 10_000, 0
        t_batches = time.perf_counter()
        while done < requests:
            n = min(batch, requests - done)
            stream = i % 2 == 1
            res = await run_load(session, LoadSpec(url, bodies[stream], stream, 64, n, 300))
            done += res.ok + res.errors
            errors += res.errors
            i += 1
            samples.append((done, rss_bytes(mtproxy.pid)))
            progress(f"  memory: {done:,} requests, {samples[-1][1] / MB:.1f} MB, "
                     f"{time.perf_counter() - t_batches:.0f} s")
            if res.ok + res.errors == 0:
                break
    return Memory(requests=done, seconds=time.perf_counter() - t0, rest=rest, warm=warm, samples=samples,
                  errors=errors, warmup_requests=warmup)


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    p.add_argument("--memory", action="store_true", help="also run the memory check (100,000 requests)")
    p.add_argument("--memory-only", action="store_true", help="only the memory check")
    p.add_argument("--memory-requests", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario (at least 3 for the targets)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply segment durations")
    p.add_argument("--only", help="comma-separated scenario keys (e.g. stream-512-c16)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--peers", choices=("auto", "yes", "no"), default="auto",
                   help="add LiteLLM when a Python that imports it is found: yes; auto = yes except "
                        "in --quick runs")
    p.add_argument("--litellm-python", help="the Python of a venv with litellm[proxy]")
    p.add_argument("--runtime", default="vllm", help="mtproxy runtime adapter for the fake backends")
    p.add_argument("--baseline", metavar="REV",
                   help="also measure mtproxy as of this git revision (e.g. HEAD~1), in every scenario")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long for other processes to use < 0.3 cores")
    p.add_argument("--out", type=Path, help="report path (default bench/results/<date>-<host>[-mode].md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = quick_scenarios(args.scale) if args.quick else default_scenarios(args.scale)
    if args.only:
        keys = set(args.only.split(","))
        unknown = keys - {s.key for s in scenarios}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; see --list")
        scenarios = [s for s in scenarios if s.key in keys]
    if args.list:
        for s in scenarios:
            print(f"{s.key:24} {s.label}")
        return 0
    if args.memory_only:
        scenarios = []
    if args.wait_quiet > 0:
        before = wait_quiet(args.wait_quiet)
        log(f"other load before starting: {before:.2f} cores")
    started = time.perf_counter()
    started_at = datetime.now()
    other = OtherLoad()
    workdir = Path(tempfile.mkdtemp(prefix="mtproxy-bench-"))
    log(f"work directory (configs, logs): {workdir}")
    services: list[procs.Service] = []
    want_peers = args.peers == "yes" or (args.peers == "auto" and not args.quick)
    peer_python = procs.litellm_python(args.litellm_python) if want_peers and scenarios else None
    eight = any(s.backends == 8 for s in scenarios)
    try:
        fake = procs.start_fake(workdir, 8 if eight else 1)
        services.append(fake)
        fake_urls = fake.urls
        targets: dict[int, list[Target]] = {}
        baseline_src = procs.checkout(args.baseline, workdir) if args.baseline else None
        for n in sorted({s.backends for s in scenarios}):
            floor = procs.start_floor(f"floor-{n}", fake_urls[:n], workdir)
            mt = procs.start_mtproxy(f"mtproxy-{n}", fake_urls[:n], workdir, runtime=args.runtime, model=MODEL)
            services += [floor, mt]
            targets[n] = [Target(DIRECT, tuple(fake_urls[:n]), None), Target(FLOOR, (floor.url,), floor.pid),
                          Target(PROXY, (mt.url,), mt.pid)]
            if baseline_src is not None:
                base = procs.start_mtproxy(f"baseline-{n}", fake_urls[:n], workdir, runtime=args.runtime,
                                           model=MODEL, source=baseline_src)
                services.append(base)
                targets[n].append(Target(baseline_name(args.baseline), (base.url,), base.pid, always=True))
            if n == 1 and peer_python:
                log(f"LiteLLM found ({peer_python}): starting it as a peer")
                try:
                    peer = procs.start_litellm(peer_python, fake_urls[0], workdir, model=MODEL)
                    services.append(peer)
                    targets[n].append(Target("litellm", (peer.url,), peer.pid, tree=True))
                except RuntimeError as exc:
                    log(f"LiteLLM did not start, measuring without it: {exc}")
        names = list(dict.fromkeys(t.name for ts in targets.values() for t in ts))
        results = Results(scenarios, names)
        time.sleep(1.0)  # let the proxies settle before reading RSS at rest
        for n, ts in sorted(targets.items()):
            if n == 1:
                for t in ts:
                    if t.pid:
                        results.rss_rest[t.name] = rss_bytes(t.pid, t.tree)
        if scenarios:
            rounds = max(1, args.rounds)
            run_loop(Bench(results, targets, fake.pid, rounds).run(scenarios))
            for t in targets.get(1, []):
                if t.pid:
                    results.rss_after[t.name] = rss_bytes(t.pid, t.tree)
        if args.memory or args.memory_only:
            mem_proxy = procs.start_mtproxy("mtproxy-memory", fake_urls[:1], workdir, runtime=args.runtime,
                                            model=MODEL)
            services.append(mem_proxy)
            log(f"memory check: {args.memory_requests:,} requests through a fresh mtproxy")
            results.memory = run_loop(memory_check(mem_proxy, args.memory_requests))
        for s in services:
            s.check()
    finally:
        for s in reversed(services):
            s.stop()
    wall = time.perf_counter() - started
    foreign = other.cores()  # the children's CPU counts once they are waited for (stopped above)
    mode = "memory" if args.memory_only else ("quick" if args.quick else "default")
    suffix = "" if mode == "default" else f"-{mode}"
    if args.only and not args.memory_only:
        mode += " (partial: " + ",".join(s.key for s in scenarios) + ")"
        suffix += "-partial"
    header = [
        f"# mtproxy benchmark, {started_at:%Y-%m-%d %H:%M} on {socket.gethostname()}",
        "",
        f"- mode: {mode}; "
        + (f"{args.rounds} rounds per scenario, figures are medians; " if scenarios else "")
        + f"wall time {wall:.0f} s ({wall / 60:.1f} min)",
        f"- mtproxy commit: {git_commit()}"
        + (f" (and {baseline_name(args.baseline)}, {_rev(args.baseline)})" if args.baseline else "")
        + f"; runtime adapter for the fake backends: `{args.runtime}`",
        *describe(more=f"; litellm {_litellm_version(peer_python)}" if peer_python else ""),
        f"- other load on the machine during the run: {foreign:.2f} cores on average "
        f"(load average {other.loadavg0:.2f} before, {os.getloadavg()[0]:.2f} after)"
        + (" — **too busy: these numbers are not reliable; rerun on a quiet machine "
           "(`--wait-quiet 300`)**" if foreign > 0.3 and scenarios else ""),
        "- direct: client → fake runtime; floor: client → bench/floor_proxy.py (aiohttp pass-through, "
        "no parsing) → fake; mtproxy: client → `python -m mtproxy serve` → fake. The fake answers at "
        "once or paces tokens per stream; chat completions; the client does not ask for the usage chunk.",
    ]
    report = results.markdown(header)
    out = args.out or RESULTS / f"{started_at:%Y-%m-%d}-{socket.gethostname()}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    log(f"written to {out} ({wall:.0f} s)")
    return 0


def _rev(rev: str) -> str:
    r = subprocess.run(["git", "-C", str(procs.ROOT), "rev-parse", "--short", rev], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def _litellm_version(python: str | None) -> str:
    if not python:
        return "not installed"
    r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                       capture_output=True, text=True, env=procs.child_env(), timeout=60)
    return r.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
