"""The translated paths' cost beside the OpenAI relay's, on the same fake runtime.

    python -m bench.responses [--api responses,messages] [--rounds 5] [--requests 400]
                              [--baseline REV] [--instructions]

One mtproxy in front of the bench's fake runtime (vLLM's wire format). In each round, at
concurrency 16, the same number of 16-token and of 512-token streams go through
``/v1/chat/completions`` (the relay of the runtime's own bytes), through ``/v1/responses`` (OpenAI
Responses: translated to chat completions and written back as the typed Responses events) and
through ``/v1/messages`` (Anthropic Messages, likewise); the proxy's own CPU time per request is
read from /proc around each segment. Reported: CPU per 16-token stream, and the cost per chunk
(the 512-token stream's CPU minus the 16-token one's, over the 496 chunks between them), for each
path and as the median of the rounds' paired ratios to the relay (the issue's bounds: 1.5x and
2x). ``--baseline REV``: mtproxy as of that git revision measured too, in the same rounds (its
own proxy process). ``--instructions``: the same figures as instructions per request under
callgrind (bench/instructions.py; each a fresh process, a minute or two each).
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
APIS = ("responses", "messages")


def scenarios(requests: int, apis: tuple[str, ...] = APIS) -> dict[tuple[str, int], Scenario]:
    """(kind, tokens) -> the scenario: the translated ones and their chat twins."""
    out = {}
    for sc in responses_scenarios():
        sc = replace(sc, requests=requests, seconds=600.0)
        out[("chat", sc.tokens)] = replace(sc, key=sc.key.removeprefix("responses-"), kind="chat")
        for api in apis:
            out[(api, sc.tokens)] = replace(sc, key=sc.key.replace("responses", api), kind=api)
    return out


async def _segment(url: str, sc: Scenario, pid: int) -> float:
    """CPU seconds of the proxy per request, for one scenario's requests."""
    clock = CpuClock(pid)
    async with client_session() as session:
        spec = LoadSpec((url + sc.path,), sc.body(), sc.stream, sc.concurrency, sc.requests,
                        sc.seconds, sc.grace, end=sc.end)
        before = clock.read()
        result = await run_load(session, spec)
        cpu = CpuClock.delta(before, clock.read())
    if result.errors or not result.ok:
        raise SystemExit(f"{sc.key}: {result.errors} errors ({dict(result.error_kinds)})")
    return cpu / result.ok


def per_chunk(short: float, long: float) -> float:
    return (long - short) / (512 - 16)


def report(label: str, unit: str, figures: dict[tuple[str, int], list[float]], scale: float,
           apis: tuple[str, ...]) -> None:
    rounds = len(figures[("chat", 16)])
    print(f"\n{label} ({rounds} round{'s' * (rounds > 1)}, medians):")
    chunk = {k: [per_chunk(figures[(k, 16)][i], figures[(k, 512)][i]) for i in range(rounds)]
             for k in ("chat", *apis)}
    chat16 = figures[("chat", 16)]
    print(f"  {'':10} {'16-token stream':>16} {'ratio':>7}   {'per chunk (512)':>16} {'ratio':>7}")
    for kind in ("chat", *apis):
        s16 = figures[(kind, 16)]
        r16 = median([r / c for r, c in zip(s16, chat16)])
        rch = median([r / c for r, c in zip(chunk[kind], chunk["chat"])])
        print(f"  {kind:10} {median(s16) * scale:9.1f} {unit:6} {r16:6.2f}x   "
              f"{median(chunk[kind]) * scale:9.2f} {unit:6} {rch:6.2f}x")
    print("  (bounds for the translated paths: 1.5x per 16-token stream, 2x per chunk)")


def _instructions(apis: tuple[str, ...], source: Path, name: str, fake_urls: list[str], workdir: Path,
                  requests: int) -> dict[tuple[str, int], list[float]]:
    from bench.instructions import measure

    counts: dict[tuple[str, int], list[float]] = {}
    config = workdir / "instructions.yaml"
    config.write_text(procs.mtproxy_config(fake_urls, "vllm", MODEL))
    for key, sc in scenarios(requests, apis).items():
        port = free_port()
        argv_ = [sys.executable, "-m", "mtproxy", "serve", "--config", str(config), "--host", LOCALHOST,
                 "--port", str(port)]
        tag = f"{name}-{key[0]}-{key[1]}".replace("@", "-").replace("/", "_")
        per, _, _ = measure(tag, argv_, source, f"http://{LOCALHOST}:{port}/ready", sc, requests, workdir)
        counts[key] = [per]
        print(f"{name} {key[0]}-{key[1]}: {per:,.0f} instructions per request", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responses", description=__doc__.split("\n")[0])
    p.add_argument("--api", default=",".join(APIS), help="translated APIs to measure (responses,messages)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=400, help="requests per path and length in a round")
    p.add_argument("--baseline", metavar="REV", help="also measure mtproxy as of this git revision")
    p.add_argument("--instructions", action="store_true", help="also count instructions under callgrind")
    p.add_argument("--instructions-only", action="store_true", help="only count instructions")
    args = p.parse_args(argv)
    apis = tuple(a for a in args.api.split(",") if a)
    if not apis or set(apis) - set(APIS):
        p.error(f"--api: some of {','.join(APIS)}")
    workdir = Path(tempfile.mkdtemp(prefix="mtproxy-responses-bench-"))
    sources = [("mtproxy", procs.ROOT)]
    if args.baseline:
        sources.append((f"mtproxy@{args.baseline}", procs.checkout(args.baseline, workdir)))
    fake = procs.start_fake(workdir, 1)
    try:
        if not args.instructions_only:
            config = procs.mtproxy_config(fake.urls, "vllm", MODEL)
            proxies = [procs.start_mtproxy_with(name.replace("@", "-").replace("/", "_"), config, workdir, source)
                       for name, source in sources]
            try:
                cases = scenarios(args.requests, apis)
                for proxy in proxies:
                    for sc in cases.values():  # warm: connections open, code paths taken once
                        run_loop(_segment(proxy.url, replace(sc, requests=64), proxy.pid))
                cpu = [{k: [] for k in cases} for _ in proxies]  # type: list[dict[tuple[str, int], list[float]]]
                for rnd in range(args.rounds):
                    for i in range(len(proxies)):
                        j = (i + rnd) % len(proxies)  # the order rotating from round to round
                        for key, sc in cases.items():
                            cpu[j][key].append(run_loop(_segment(proxies[j].url, sc, proxies[j].pid)))
                    for (name, _), fig in zip(sources, cpu):
                        print(f"round {rnd + 1} {name}: "
                              + ", ".join(f"{k[0]}-{k[1]} {v[-1] * 1e6:.0f} µs" for k, v in fig.items()), flush=True)
            finally:
                for proxy in proxies:
                    proxy.stop()
            for (name, _), fig in zip(sources, cpu):
                report(f"{name}: CPU of the proxy per request", "µs", fig, 1e6, apis)
        if args.instructions or args.instructions_only:
            counts = [_instructions(apis, source, name, fake.urls, workdir, 300) for name, source in sources]
            for (name, _), fig in zip(sources, counts):
                report(f"{name}: instructions per request under callgrind", "k", fig, 1e-3, apis)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
