"""What the page (/ui) costs the proxy: its CPU with 0, 1 and 10 viewers on the event stream
during the benchmark's paced scenario (stream-16-paced-c64: 16-token streams at 50 tokens/s,
64 at once), in rounds with the order rotating, the ratios paired within each round.

    python -m bench.ui_viewers [--viewers 0,1,10] [--rounds 3] [--seconds 10]

Each viewer is an open ``GET /mtproxy/events`` read as it comes, as a browser tab reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

import aiohttp

from bench import procs
from bench.common import CpuClock, median, run_loop
from bench.loadgen import LoadSpec, client_session, run_load
from bench.machine import OtherLoad
from bench.scenarios import default_scenarios


async def viewer(session: aiohttp.ClientSession, url: str, opened: asyncio.Event, got: list[int]) -> None:
    async with session.get(url + "/mtproxy/events") as resp:
        assert resp.status == 200, resp.status
        opened.set()
        async for data in resp.content.iter_any():
            got[0] += len(data)


async def segment(session: aiohttp.ClientSession, proxy: procs.Service, spec: LoadSpec, n: int) -> dict:
    got = [0]
    events = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    tasks, opened = [], []
    for _ in range(n):
        ev = asyncio.Event()
        opened.append(ev)
        tasks.append(asyncio.create_task(viewer(events, proxy.url, ev, got)))
    for ev in opened:
        await ev.wait()
    await asyncio.sleep(1.0)  # the hello events are out: measure the steady state
    clock = CpuClock(proxy.pid)
    before = clock.read()
    result = await run_load(session, spec)
    cpu = CpuClock.delta(before, clock.read())
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await events.close()
    return {"viewers": n, "cpu": cpu, "ok": result.ok, "errors": result.errors, "bytes": got[0],
            "cpu_per_request_us": cpu / max(1, result.ok) * 1e6}


async def measure(args: argparse.Namespace, proxy: procs.Service) -> list[list[dict]]:
    sc = next(s for s in default_scenarios() if s.key == "stream-16-paced-c64")
    spec = LoadSpec((proxy.url + sc.path,), sc.body(), True, sc.concurrency, 10_000_000, args.seconds, sc.grace,
                    sc.ramp, sc.read_pause, sc.end)
    counts = args.viewers
    rounds = []
    async with client_session() as session:
        await run_load(session, LoadSpec(spec.urls, sc.warmup().body(), True, sc.concurrency, sc.concurrency, 1.0))
        for r in range(args.rounds):
            order = counts[r % len(counts):] + counts[:r % len(counts)]
            results = {}
            for n in order:
                results[n] = await segment(session, proxy, spec, n)
                print(f"round {r + 1}: {n:>2} viewers: proxy CPU {results[n]['cpu']:.2f} s, "
                      f"{results[n]['ok']} requests ({results[n]['errors']} errors), "
                      f"{results[n]['cpu_per_request_us']:.0f} µs/request, {results[n]['bytes']} bytes to viewers")
            rounds.append([results[n] for n in counts])
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui_viewers", description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="0,1,10", help="viewer counts to compare (the first is the base)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="each segment starts requests this long")
    args = parser.parse_args(argv)
    args.viewers = [int(v) for v in args.viewers.split(",")]
    with tempfile.TemporaryDirectory(prefix="mtproxy-ui-bench-") as tmp:
        work = Path(tmp)
        fake = procs.start_fake(work, 1)
        proxy = procs.start_mtproxy("mtproxy", fake.urls, work, runtime="vllm", model="bench-model")
        other = OtherLoad()
        try:
            rounds = run_loop(measure(args, proxy))
        finally:
            proxy.stop()
            fake.stop()
        busy = other.cores()
    base = args.viewers[0]
    print(f"\nproxy CPU per request, median of {args.rounds} rounds (ratio to {base} viewers paired by round); "
          f"other load on the machine: {busy:.2f} cores")
    for i, n in enumerate(args.viewers):
        per_request = median([r[i]["cpu_per_request_us"] for r in rounds])
        ratio = median([r[i]["cpu_per_request_us"] / r[0]["cpu_per_request_us"] for r in rounds])
        print(f"  {n:>2} viewers: {per_request:.0f} µs/request, ×{ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
