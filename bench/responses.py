"""The OpenAI Responses path's cost beside the OpenAI relay's, on the same fake runtime.

    python -m bench.responses [--rounds 5] [--requests 400] [--instructions]

One mtproxy in front of the bench's fake runtime (vLLM's wire format). In each round, at
concurrency 16, the same number of 16-token and of 512-token streams go through
``/v1/chat/completions`` (the relay of the runtime's own bytes) and through ``/v1/responses``
(translated to chat completions and written back as the typed Responses events); the proxy's
own CPU time per request is read from /proc around each segment. Reported: CPU per 16-token
stream, and the cost per chunk (the 512-token stream's CPU minus the 16-token one's, over the
496 chunks between them), for each path and as the median of the rounds' paired ratios (the
issue's bounds: 1.5x and 2x). ``--instructions``: the same four figures as instructions per
request under callgrind (bench/instructions.py; each a fresh process, a minute or two each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # `python bench/responses.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.common import LOCALHOST, CpuClock, free_port, median, run_loop
from bench.loadgen import LoadSpec, client_session, run_load
from bench.scenarios import Scenario, responses_scenarios

MODEL = "bench-model"
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}


def scenarios(requests: int) -> dict[tuple[str, int], Scenario]:
    """(kind, tokens) -> the scenario: the Responses ones and their chat twins."""
    out = {}
    for sc in responses_scenarios():
        sc = replace(sc, requests=requests, seconds=600.0)
        out[("responses", sc.tokens)] = sc
        out[("chat", sc.tokens)] = replace(sc, key=sc.key.removeprefix("responses-"), kind="chat")
    return out


async def _segment(url: str, sc: Scenario, pid: int) -> float:
    """CPU seconds of the proxy per request, for one scenario's requests."""
    clock = CpuClock(pid)
    async with client_session() as session:
        spec = LoadSpec((url + PATHS[sc.kind],), sc.body(), sc.stream, sc.concurrency, sc.requests,
                        sc.seconds, sc.grace)
        before = clock.read()
        result = await run_load(session, spec)
        cpu = CpuClock.delta(before, clock.read())
    if result.errors or not result.ok:
        raise SystemExit(f"{sc.key}: {result.errors} errors ({dict(result.error_kinds)})")
    return cpu / result.ok


def per_chunk(short: float, long: float) -> float:
    return (long - short) / (512 - 16)


def report(label: str, unit: str, figures: dict[tuple[str, int], list[float]], scale: float) -> None:
    rounds = len(figures[("chat", 16)])
    chat16, resp16 = figures[("chat", 16)], figures[("responses", 16)]
    chunk = {k: [per_chunk(figures[(k, 16)][i], figures[(k, 512)][i]) for i in range(rounds)]
             for k in ("chat", "responses")}
    print(f"\n{label} ({rounds} round{'s' * (rounds > 1)}, medians):")
    print(f"  16-token stream:   chat {median(chat16) * scale:10.1f} {unit}   responses "
          f"{median(resp16) * scale:10.1f} {unit}   ratio {median([r / c for r, c in zip(resp16, chat16)]):.2f}x"
          "  (bound 1.5x)")
    print(f"  per chunk (512):   chat {median(chunk['chat']) * scale:10.2f} {unit}   responses "
          f"{median(chunk['responses']) * scale:10.2f} {unit}   ratio "
          f"{median([r / c for r, c in zip(chunk['responses'], chunk['chat'])]):.2f}x  (bound 2x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responses", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=400, help="requests per path and length in a round")
    p.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mtproxy-responses-bench-"))
    fake = procs.start_fake(workdir, 1)
    try:
        proxy = procs.start_mtproxy("mtproxy", fake.urls, workdir, runtime="vllm", model=MODEL)
        try:
            cases = scenarios(args.requests)
            for sc in cases.values():  # warm: connections open, code paths taken once
                run_loop(_segment(proxy.url, replace(sc, requests=64), proxy.pid))
            cpu: dict[tuple[str, int], list[float]] = {k: [] for k in cases}
            for rnd in range(args.rounds):
                for key, sc in cases.items():
                    cpu[key].append(run_loop(_segment(proxy.url, sc, proxy.pid)))
                print(f"round {rnd + 1}: " + ", ".join(f"{k[0]}-{k[1]} {v[-1] * 1e6:.0f} µs" for k, v in cpu.items()),
                      flush=True)
        finally:
            proxy.stop()
        report("CPU of the proxy per request", "µs", cpu, 1e6)
        if args.instructions:
            from bench.instructions import measure

            counts: dict[tuple[str, int], list[float]] = {}
            for key, sc in scenarios(300).items():
                config = workdir / "instructions.yaml"
                config.write_text(procs.mtproxy_config(fake.urls, "vllm", MODEL))
                port = free_port()
                argv_ = [sys.executable, "-m", "mtproxy", "serve", "--config", str(config), "--host", LOCALHOST,
                         "--port", str(port)]
                per, _, _ = measure(f"{key[0]}-{key[1]}", argv_, procs.ROOT, f"http://{LOCALHOST}:{port}/ready",
                                    sc, 300, workdir)
                counts[key] = [per]
                print(f"{key[0]}-{key[1]}: {per:,.0f} instructions per request", flush=True)
            report("Instructions per request under callgrind", "k instr.", counts, 1e-3)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
