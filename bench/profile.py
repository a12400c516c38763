"""Where mtproxy spends its CPU in one scenario: py-spy samples, functions ranked by own time.

    pip install py-spy            # into the venv that runs this
    python -m bench.profile --scenario stream-512-c16 [--seconds 10] [--native]
    python -m bench.profile --target floor --scenario unary-16-c16

Starts the fake runtime and the target (mtproxy by default, or the floor), drives the scenario's
load at it for ``--seconds`` (in bounded segments), records it with ``py-spy record --format raw``
and prints the functions with the most samples on top of the stack ("own") and anywhere in it
("total"), as shares of the samples in which the process was busy. The raw stacks it keeps load as they
are into speedscope or inferno; ``py-spy record --format flamegraph --pid P`` draws an SVG.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # `python bench/profile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.common import run_loop
from bench.loadgen import LoadSpec, client_session, run_load
from bench.scenarios import Scenario, default_scenarios


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (to/module.py:12)``."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    short = "/".join(Path(path).parts[-2:]) if path else "?"
    return f"{name} ({short}:{line})"


def rank(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """Samples, own counts and total (inclusive) counts per function from py-spy's raw output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]  # py-spy's thread/process header
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return samples, own, total


async def drive(target: procs.Service, sc: Scenario, seconds: float) -> int:
    url = (target.url + "/v1/chat/completions",)
    body = sc.body()
    done = 0
    deadline = time.perf_counter() + seconds
    async with client_session() as session:
        while time.perf_counter() < deadline:
            left = deadline - time.perf_counter()
            spec = LoadSpec(url, body, sc.stream, sc.concurrency, sc.requests, min(sc.seconds, max(left, 0.1)),
                            sc.grace)
            result = await run_load(session, spec)
            done += result.ok
    return done


def main(argv: list[str] | None = None) -> int:
    scenarios = {s.key: s for s in default_scenarios()}
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="stream-512-c16", choices=sorted(scenarios))
    p.add_argument("--target", choices=("mtproxy", "floor"), default="mtproxy")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="include C frames (uvloop, orjson, …)")
    p.add_argument("--lines", action="store_true", help="rank lines instead of functions")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--runtime", default="vllm")
    args = p.parse_args(argv)
    sc = scenarios[args.scenario]
    if sc.backends != 1:
        sc = replace(sc, backends=1)
    spy = py_spy()
    workdir = Path(tempfile.mkdtemp(prefix="mtproxy-profile-"))
    services: list[procs.Service] = []
    try:
        fake = procs.start_fake(workdir, 1)
        services.append(fake)
        if args.target == "mtproxy":
            target = procs.start_mtproxy("mtproxy", fake.urls, workdir, runtime=args.runtime, model="bench-model")
        else:
            target = procs.start_floor("floor", fake.urls, workdir)
        services.append(target)
        run_loop(drive(target, sc.warmup(), 1.0))
        raw = workdir / "profile.txt"
        cmd = [spy, "record", "--pid", str(target.pid), "--duration", str(int(args.seconds)), "--rate",
               str(args.rate), "--nonblocking", "--format", "raw", "--output", str(raw)]
        if not args.lines:
            cmd.append("--function")
        if args.native:
            cmd.append("--native")
        recorder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        requests = run_loop(drive(target, sc, args.seconds))
        _, err = recorder.communicate(timeout=args.seconds + 60)
        if recorder.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
    finally:
        for s in reversed(services):
            s.stop()
    samples, own, total = rank(raw.read_text())
    print(f"{args.target}, {sc.label}: {requests} requests in {args.seconds:g} s, {samples} busy samples "
          f"at {args.rate}/s (raw stacks: {raw})")
    print(f"{'own %':>6} {'total %':>7}  function")
    for name, n in own.most_common(args.top):
        print(f"{100 * n / samples:6.1f} {100 * total[name] / samples:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
