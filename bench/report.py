"""Medians over rounds, the issue's targets, and the markdown report.

Ratios between two targets (mtproxy / floor, mtproxy / direct) are medians of the ratios within
each round, where the two segments ran seconds apart: this shared VM's speed drifts by ±15 % over
minutes, and a ratio of two medians can pair a slow round of one target with a fast round of the
other (unary c=1 in one 5-round run: 1.59× as a ratio of medians, 1.34× paired, rounds 1.21-2.09×).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bench.common import median
from bench.loadgen import LoadResult
from bench.scenarios import Scenario

# The targets of issue 8.
CPU_RATIO_MAX = 1.3  # CPU per request, mtproxy / floor, every scenario
RPS_RATIO_MIN = 0.85  # requests/s, mtproxy / floor, every scenario
ADDED_P50_MAX_MS = 1.0  # p50 latency, mtproxy - direct, at concurrency 1
CHUNK_RATIO_MAX = 1.3  # CPU per relayed chunk of a 512-token stream, mtproxy / floor
# /v1/messages translated vs the OpenAI relay, same fake stream: CPU per 16-token stream, per chunk at 512
MESSAGES_RATIO_MAX = {16: 1.5, 512: 2.0}
TTFT_RATIO_MAX = 1.5  # TTFT p99 with 256 paced streams, mtproxy / direct
RSS_REST_MAX_MB = 80.0
RSS_GROWTH_MAX = 0.10  # after 100,000 requests

MB = 1024 * 1024
PROXY = "mtproxy"
FLOOR = "floor"
DIRECT = "direct"


@dataclass(slots=True)
class Segment:
    scenario: str
    target: str
    round: int
    result: LoadResult
    cpu: float | None  # seconds the proxy process spent on CPU during the segment
    fake_cpu: float  # … and the fake runtime


def _per_request(cpu: float | None, r: LoadResult) -> float:
    return cpu / r.ok * 1e6 if cpu is not None and r.ok else math.nan


def cpu_us(s: Segment) -> float:
    """The proxy's CPU per completed request in a segment, µs (NaN for direct)."""
    return _per_request(s.cpu, s.result)


def rps(s: Segment) -> float:
    return s.result.rps


def p50(s: Segment) -> float:
    return s.result.latency(50)


def ttft99(s: Segment) -> float:
    return s.result.ttft(99)


@dataclass(slots=True)
class Summary:
    """One target in one scenario: medians over rounds (errors and requests summed)."""

    rps: float
    cpu_us: float  # proxy CPU per completed request, µs (NaN for direct)
    fake_us: float
    p50: float  # seconds
    p90: float
    p99: float
    ttft50: float
    ttft99: float
    ok: int
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, segments: Sequence[Segment]) -> Summary:
        kinds: dict[str, int] = {}
        for s in segments:
            for k, v in s.result.error_kinds.items():
                kinds[k] = kinds.get(k, 0) + v
        return cls(
            rps=median([rps(s) for s in segments]),
            cpu_us=median([cpu_us(s) for s in segments]),
            fake_us=median([_per_request(s.fake_cpu, s.result) for s in segments]),
            p50=median([p50(s) for s in segments]),
            p90=median([s.result.latency(90) for s in segments]),
            p99=median([s.result.latency(99) for s in segments]),
            ttft50=median([s.result.ttft(50) for s in segments]),
            ttft99=median([ttft99(s) for s in segments]),
            ok=sum(s.result.ok for s in segments),
            errors=sum(s.result.errors for s in segments),
            error_kinds=kinds,
        )


@dataclass(slots=True)
class Check:
    what: str
    measured: str
    limit: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "—" if self.passed is None else ("PASS" if self.passed else "**FAIL**")


@dataclass(slots=True)
class Memory:
    requests: int
    seconds: float
    rest: int
    warm: int
    samples: list[tuple[int, int]]  # (requests so far, RSS bytes)
    errors: int
    warmup_requests: int

    @property
    def final(self) -> int:
        return self.samples[-1][1] if self.samples else self.warm


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def mark(ok: bool) -> str:
    return "" if ok else " ✗"


class Results:
    def __init__(self, scenarios: Sequence[Scenario], targets: Sequence[str]) -> None:
        self.scenarios = list(scenarios)
        self.targets = list(targets)
        self.segments: list[Segment] = []
        self.rss_rest: dict[str, int] = {}
        self.rss_after: dict[str, int] = {}
        self.memory: Memory | None = None

    def add(self, segment: Segment) -> None:
        self.segments.append(segment)

    def summary(self, scenario: str, target: str) -> Summary | None:
        segs = [s for s in self.segments if s.scenario == scenario and s.target == target]
        return Summary.of(segs) if segs else None

    def paired(self, scenario: str, target: str, base: str, value: Callable[[Segment], float],
               op: Callable[[float, float], float] = operator.truediv) -> float:
        """Median over rounds of op(value of target's segment, value of base's segment in the
        same round); NaN when no round has both. Ratios to two decimals, as printed and as judged
        (so 0.849 shows and passes as 0.85)."""
        segs = {(s.target, s.round): s for s in self.segments if s.scenario == scenario}
        vals = []
        for (t, rnd), s in segs.items():
            b = segs.get((base, rnd))
            if t != target or b is None:
                continue
            x, y = value(s), value(b)
            if not (math.isnan(x) or math.isnan(y) or (op is operator.truediv and not y)):
                vals.append(op(x, y))
        m = median(vals)
        return round(m, 2) if op is operator.truediv and not math.isnan(m) else m

    def served(self, target: str) -> int:
        return sum(s.result.ok + s.result.errors for s in self.segments if s.target == target)

    # --- the targets of the issue --------------------------------------------------------------

    def checks(self) -> list[Check]:
        out: list[Check] = []
        cpu_ratios, rps_ratios = [], []
        for sc in self.scenarios:
            if self.summary(sc.key, FLOOR) and self.summary(sc.key, PROXY):
                cpu_ratios.append((self.paired(sc.key, PROXY, FLOOR, cpu_us), sc))
                rps_ratios.append((self.paired(sc.key, PROXY, FLOOR, rps), sc))
        if cpu_ratios:
            out.append(self._worst("CPU per request, mtproxy / floor, every scenario", cpu_ratios, max,
                                   lambda r: r <= CPU_RATIO_MAX, f"≤ {CPU_RATIO_MAX}×"))
            out.append(self._worst("requests/s, mtproxy / floor, every scenario", rps_ratios, min,
                                   lambda r: r >= RPS_RATIO_MIN, f"≥ {RPS_RATIO_MIN}×"))
        for sc in self.scenarios:
            if sc.concurrency != 1:
                continue
            d, m, f = self.summary(sc.key, DIRECT), self.summary(sc.key, PROXY), self.summary(sc.key, FLOOR)
            if d and m:
                added = self.paired(sc.key, PROXY, DIRECT, p50, operator.sub) * 1000
                floor = ""
                if f:
                    floor = f"; the floor adds {self.paired(sc.key, FLOOR, DIRECT, p50, operator.sub) * 1000:+.3f}"
                out.append(Check(f"added p50 latency at c=1: {sc.label}", f"{added:+.3f} ms paired "
                                 f"(medians {fmt_ms(m.p50)} vs {fmt_ms(d.p50)} direct{floor})",
                                 f"≤ {ADDED_P50_MAX_MS:g} ms", added <= ADDED_P50_MAX_MS))
        for sc in self.scenarios:
            if not sc.stream or sc.tokens < 512 or sc.chunks is None:
                continue
            f, m = self.summary(sc.key, FLOOR), self.summary(sc.key, PROXY)
            if f and m:
                fc, mc = f.cpu_us / sc.chunks, m.cpu_us / sc.chunks
                r = self.paired(sc.key, PROXY, FLOOR, cpu_us)
                out.append(Check(f"CPU per relayed chunk, {sc.label} ({sc.chunks} chunks)",
                                 f"{fmt(r)}× paired (medians {mc:.2f} vs {fc:.2f} µs)", f"≤ {CHUNK_RATIO_MAX}×",
                                 not math.isnan(r) and r <= CHUNK_RATIO_MAX))
        for sc in self.scenarios:  # the translated Anthropic stream beside the OpenAI relay
            openai_key = sc.key.removeprefix("messages-")
            limit = MESSAGES_RATIO_MAX.get(sc.tokens)
            if sc.kind != "messages" or limit is None or not self.summary(openai_key, PROXY):
                continue
            m, o = self.summary(sc.key, PROXY), self.summary(openai_key, PROXY)
            r = round(m.cpu_us / o.cpu_us, 2) if m and o.cpu_us else math.nan
            what = "CPU per stream" if sc.tokens < 512 else f"CPU per chunk ({sc.chunks} chunks)"
            out.append(Check(f"{what}, /v1/messages translated / OpenAI relay, {sc.label}",
                             f"{fmt(r)}× (medians {m.cpu_us:.0f} vs {o.cpu_us:.0f} µs per request)",
                             f"≤ {limit:g}×", not math.isnan(r) and r <= limit))
        for sc in self.scenarios:
            if not sc.long_lived:
                continue
            d, m, f = self.summary(sc.key, DIRECT), self.summary(sc.key, PROXY), self.summary(sc.key, FLOOR)
            if d and m:
                out.append(Check(f"{sc.concurrency} paced streams: errors", f"{m.errors} of {m.ok + m.errors}",
                                 "0", m.errors == 0))
                r = self.paired(sc.key, PROXY, DIRECT, ttft99)
                floor = f"; the floor: {fmt(self.paired(sc.key, FLOOR, DIRECT, ttft99))}×" if f else ""
                out.append(Check(f"{sc.concurrency} paced streams: TTFT p99, mtproxy / direct",
                                 f"{fmt(r)}× paired (medians {fmt_ms(m.ttft99)} vs {fmt_ms(d.ttft99)} ms{floor})",
                                 f"≤ {TTFT_RATIO_MAX}×", not math.isnan(r) and r <= TTFT_RATIO_MAX))
        rest = self.rss_rest.get(PROXY)
        if rest is not None:
            out.append(Check("RSS at rest", f"{rest / MB:.1f} MB", f"≤ {RSS_REST_MAX_MB:g} MB",
                             rest / MB <= RSS_REST_MAX_MB))
        mem = self.memory
        if mem is None:
            out.append(Check("RSS after 100,000 requests", "not measured (run with --memory)",
                             f"≤ +{RSS_GROWTH_MAX:.0%}", None))
        else:
            growth = mem.final / mem.warm - 1
            out.append(Check(f"RSS after {mem.requests:,} requests, vs after {mem.warmup_requests:,} warm-up requests",
                             f"{mem.warm / MB:.1f} → {mem.final / MB:.1f} MB ({growth:+.1%}; "
                             f"{mem.final / mem.rest - 1:+.1%} over the {mem.rest / MB:.1f} MB at rest)",
                             f"≤ +{RSS_GROWTH_MAX:.0%}", growth <= RSS_GROWTH_MAX))
            out.append(Check("RSS at rest, fresh process (memory check)", f"{mem.rest / MB:.1f} MB",
                             f"≤ {RSS_REST_MAX_MB:g} MB", mem.rest / MB <= RSS_REST_MAX_MB))
        return out

    @staticmethod
    def _worst(what: str, values: list[tuple[float, Scenario]], pick, ok, limit: str) -> Check:
        values = [(v, sc) for v, sc in values if not math.isnan(v)]
        if not values:
            return Check(what, "not measured", limit, None)
        worst, sc = pick(values, key=lambda p: p[0])
        failing = [s.key for v, s in values if not ok(v)]
        detail = f"worst {worst:.2f}× ({sc.label})"
        if failing:
            detail += f"; {len(failing)} of {len(values)} scenarios miss it"
        return Check(what, detail, limit, not failing)

    # --- markdown --------------------------------------------------------------------------------

    def markdown(self, header: Iterable[str]) -> str:
        lines = list(header)
        lines += ["", "## Targets (issue 8)", "", "| target | measured | limit | result |", "|---|---|---|---|"]
        lines += [f"| {c.what} | {c.measured} | {c.limit} | {c.verdict} |" for c in self.checks()]
        if self.segments:
            lines += self._throughput()
            lines += self._latency()
        lines += self._memory()
        if self.segments:
            lines += self._rounds()
        return "\n".join(lines) + "\n"

    def _throughput(self) -> list[str]:
        peers = [t for t in self.targets if t not in (DIRECT, FLOOR, PROXY)]
        head = ["scenario", "RPS direct", "RPS floor", "RPS mtproxy", "RPS m/f",
                "CPU µs/req floor", "CPU µs/req mtproxy", "CPU m/f", "µs/chunk floor", "µs/chunk mtproxy"]
        for p in peers:
            head += [f"RPS {p}", f"CPU µs/req {p}", f"CPU {p}/f"]
        head += ["fake µs/req", "errors d/f/m"]
        lines = ["", "## Throughput and proxy CPU (medians of the rounds)", "",
                 "RPS: completed requests/s. CPU: the proxy process's CPU time (user+system) per completed "
                 "request (medians of the rounds). m/f: median over rounds of mtproxy / floor in the same round "
                 "(✗: misses the target). µs/chunk: CPU per request / SSE "
                 "events relayed. fake: the fake runtime's CPU per request on the direct path.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for sc in self.scenarios:
            s = {t: self.summary(sc.key, t) for t in self.targets}
            d, f, m = s.get(DIRECT), s.get(FLOOR), s.get(PROXY)
            if not (d and f and m):
                continue
            rr, cr = self.paired(sc.key, PROXY, FLOOR, rps), self.paired(sc.key, PROXY, FLOOR, cpu_us)
            row = [sc.label, fmt(d.rps, 0), fmt(f.rps, 0), fmt(m.rps, 0),
                   fmt(rr) + mark(math.isnan(rr) or rr >= RPS_RATIO_MIN),
                   fmt(f.cpu_us, 0), fmt(m.cpu_us, 0), fmt(cr) + mark(math.isnan(cr) or cr <= CPU_RATIO_MAX),
                   fmt(f.cpu_us / sc.chunks) if sc.chunks else "", fmt(m.cpu_us / sc.chunks) if sc.chunks else ""]
            for p in peers:
                ps = s.get(p)
                row += ([fmt(ps.rps, 0), fmt(ps.cpu_us, 0), fmt(self.paired(sc.key, p, FLOOR, cpu_us))]
                        if ps else ["", "", ""])
            errs = "/".join(str(x.errors) for x in (d, f, m))
            if peers:
                errs += "".join(f" ({p} {s[p].errors})" for p in peers if s.get(p))
            row += [fmt(d.fake_us, 0), errs]
            lines.append("| " + " | ".join(row) + " |")
        kinds = {(sc.key, t): x.error_kinds for sc in self.scenarios for t in self.targets
                 if (x := self.summary(sc.key, t)) and x.error_kinds}
        if kinds:
            lines += ["", "Errors: " + "; ".join(f"{k[1]} in {k[0]}: {v}" for k, v in kinds.items())]
        return lines

    def _latency(self) -> list[str]:
        names = list(self.targets)
        short = "/".join(t[0] if t in (DIRECT, FLOOR, PROXY) else t for t in names)
        head = ["scenario", f"p50 {short}", f"p90 {short}", f"p99 {short}", f"TTFT p50 {short}",
                f"TTFT p99 {short}", "added p50 m−d", "TTFT p99 m/d"]
        lines = ["", "## Latency, ms (medians of the rounds)", "",
                 "d = direct (client → fake), f = floor, m = mtproxy. Latency: request sent → last byte; "
                 "TTFT: request sent → first chunk carrying content (streams). added p50 and TTFT p99 m/d: "
                 "medians over rounds of the difference and the ratio within each round.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for sc in self.scenarios:
            s = [self.summary(sc.key, t) for t in names]  # None: a peer that skips this scenario
            d, m = self.summary(sc.key, DIRECT), self.summary(sc.key, PROXY)
            if not (d and m):
                continue
            row = [sc.label]
            for attr in ("p50", "p90", "p99", "ttft50", "ttft99"):
                row.append(" / ".join(fmt_ms(getattr(x, attr)) if x else "–" for x in s))
            row.append(f"{self.paired(sc.key, PROXY, DIRECT, p50, operator.sub) * 1000:+.2f}")
            row.append(fmt(self.paired(sc.key, PROXY, DIRECT, ttft99)) if sc.stream else "")
            lines.append("| " + " | ".join(row) + " |")
        return lines

    def _memory(self) -> list[str]:
        lines = ["", "## Memory (VmRSS)", ""]
        for t in self.targets:
            if t in self.rss_rest:
                after = self.rss_after.get(t)
                lines.append(f"- {t}: {self.rss_rest[t] / MB:.1f} MB at rest"
                             + (f", {after / MB:.1f} MB after this run's {self.served(t):,} requests"
                                if after else ""))
        mem = self.memory
        if mem is not None:
            trail = ", ".join(f"{n // 1000}k: {rss / MB:.1f}" for n, rss in mem.samples)
            lines += ["", f"Memory check (a fresh mtproxy, unary and streamed 16-token requests alternating "
                      f"in batches, c=64): {mem.rest / MB:.1f} MB at rest, {mem.warm / MB:.1f} MB after "
                      f"{mem.warmup_requests:,} warm-up requests, then MB after each batch: {trail}. "
                      f"{mem.requests:,} requests in {mem.seconds:.0f} s, {mem.errors} errors."]
        return lines

    def _rounds(self) -> list[str]:
        lines = ["", "<details><summary>Every segment (round by round)</summary>", "",
                 "| scenario | round | target | requests | errors | RPS | CPU µs/req | p50 ms | p99 ms | TTFT p99 ms |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for s in self.segments:
            r = s.result
            cpu = fmt(s.cpu / r.ok * 1e6, 0) if s.cpu is not None and r.ok else ""
            lines.append(f"| {s.scenario} | {s.round} | {s.target} | {r.ok} | {r.errors} | {r.rps:.0f} | {cpu} | "
                         f"{fmt_ms(r.latency(50))} | {fmt_ms(r.latency(99))} | {fmt_ms(r.ttft(99))} |")
        lines += ["", "</details>"]
        return lines
