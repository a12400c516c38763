"""Instructions per request under callgrind: a change's cost without this VM's ±15 % noise.

    python -m bench.instructions --scenario stream-16-c16 [--requests 300] [--baseline HEAD~1]

Starts the fake runtime, then each target in turn under ``valgrind --tool=callgrind`` with
instrumentation off: the floor, mtproxy from this tree, and mtproxy as of ``--baseline REV``
(optional). After a warm-up it switches instrumentation on (``callgrind_control -i on``), drives
``--requests`` requests of the scenario, switches it off, and reports the instructions the
process executed per request, and the ratio to the floor. Counts repeat within ~0.1 % from run
to run. They are not time: a pass of ``bytes.translate`` executes ~12 instructions per byte and
one of ``bytes.find`` ~1.5, for about the same time; the bench (``bench.run``) stays the
measure of the targets, this one tells whether a change removed work. Needs valgrind; each
target takes a minute or two (50x slower under callgrind).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/instructions.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.common import LOCALHOST, free_port, run_loop
from bench.loadgen import LoadSpec, client_session, run_load
from bench.scenarios import Scenario, default_scenarios

MODEL = "bench-model"


async def _load(url: str, sc: Scenario, requests: int) -> tuple[int, int]:
    async with client_session() as session:
        r = await run_load(session, LoadSpec((url + sc.path,), sc.body(), sc.stream, sc.concurrency, requests,
                                             900, 60, end=sc.end))
    return r.ok, r.errors


def measure(name: str, argv: list[str], cwd: Path, ready: str, sc: Scenario, requests: int,
            workdir: Path) -> tuple[float, int, int]:
    """(instructions per request, ok, errors) of one target started with ``argv``."""
    out = workdir / f"callgrind-{name}.out"
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    log = workdir / f"{name}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(vg + argv, cwd=cwd, env=procs.child_env(), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf)
    try:
        procs.wait_http(ready, proc, name, log, timeout=600)
        url = ready.rsplit("/", 1)[0]
        run_loop(_load(url, sc.warmup(), 100))
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        time.sleep(0.5)
        ok, errors = run_loop(_load(url, sc, requests))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(120)
    totals = re.findall(r"^totals: (\d+)", out.read_text(errors="replace"), re.M)
    if not totals or not ok:
        raise SystemExit(f"{name}: no count (ok={ok}); see {log}")
    return int(totals[0]) / ok, ok, errors


def main(argv: list[str] | None = None) -> int:
    scenarios = {s.key: s for s in default_scenarios()}
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="stream-16-c16", choices=sorted(scenarios))
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--baseline", metavar="REV", help="also measure mtproxy as of this git revision")
    p.add_argument("--runtime", default="vllm")
    p.add_argument("--balance", default="least_outstanding", choices=("least_outstanding", "fastest"),
                   help="routing.balance of mtproxy from this tree (a --baseline keeps its default)")
    args = p.parse_args(argv)
    sc = scenarios[args.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="mtproxy-instructions-"))
    fake = procs.start_fake(workdir, 1)
    config = workdir / "mtproxy.yaml"
    config.write_text(procs.mtproxy_config(fake.urls, args.runtime, MODEL))
    tree_config = config
    if args.balance != "least_outstanding":
        tree_config = workdir / "mtproxy-tree.yaml"
        tree_config.write_text(config.read_text() + f"routing: {{balance: {args.balance}}}\n")
    targets: list[tuple[str, list[str], Path, str]] = []
    port = free_port()
    if sc.kind != "messages":  # the floor relays; it does not translate Anthropic's API
        targets.append(("floor", [sys.executable, "-m", "bench.floor_proxy", "--port", str(port),
                                  "--upstream", fake.urls[0]], procs.ROOT, f"http://{LOCALHOST}:{port}/health"))
    sources = [("mtproxy", procs.ROOT)]
    if args.baseline:
        sources.append((f"mtproxy@{args.baseline}", procs.checkout(args.baseline, workdir)))
    for name, source in sources:
        port = free_port()
        cfg = tree_config if source == procs.ROOT else config
        targets.append((name, [sys.executable, "-m", "mtproxy", "serve", "--config", str(cfg), "--host",
                               LOCALHOST, "--port", str(port)], source, f"http://{LOCALHOST}:{port}/ready"))
    print(f"{sc.label}, {args.requests} requests per target (work directory {workdir})")
    floor = None
    try:
        for name, cmd, cwd, ready in targets:
            per, ok, errors = measure(name.replace("@", "-").replace("/", "_"), cmd, cwd, ready, sc,
                                      args.requests, workdir)
            floor = floor or per
            print(f"{name:>24}: {per:12,.0f} instructions per request  {per / floor:5.2f}x the floor"
                  f"  ({ok} ok, {errors} errors)", flush=True)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
