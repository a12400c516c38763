"""The soak's verdicts and its markdown report."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bench.common import LoopLag
from bench.report import MB
from bench.soak.analysis import Closes, Cuts, Upstream, quantiles
from bench.soak.traffic import BUG, CATEGORIES, DISCONNECT, OK, PHASES, SOAK, Tally
from bench.soak.watch import HealthProbe, ProxyMetrics, Sample, SchedWatch, Sockets

CLOSE_LIMIT = 0.100  # seconds: a client's disconnect closes its upstream request within this (issue 9)
RSS_GROWTH_MAX = 0.10  # RSS at the end over RSS after the warm-up (issue 8's bound for 100,000 requests)

# Kinds of check: a failed "crash" or "leak" check fails the run (exit 1); a failed "soak" check
# means the run itself is not valid (exit 2); "latency" is reported, not part of the exit status.
CRASH, LEAK, LATENCY, VALIDITY = "crash", "leak", "latency", "soak"


@dataclass(frozen=True, slots=True)
class Check:
    kind: str
    what: str
    measured: str
    limit: str
    ok: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"


@dataclass(slots=True)
class Start:
    """The proxy at rest: sockets before any traffic, tasks and RSS after the warm-up."""

    sockets: Sockets
    tasks: int
    rss: int
    metrics: ProxyMetrics  # after the warm-up: the soak counts from there


@dataclass(slots=True)
class End:
    """The proxy after the traffic stopped and things settled."""

    sockets: Sockets
    tasks: int | None
    in_flight: dict[str, float]
    backend_up: dict[str, float]
    rss: int
    settle_seconds: float
    fake_live: int  # upstream requests the fake still serves
    stale: list[tuple[int, float | None]]  # upstream connections out of the pool's rotation
    max_idle: float  # … idle longer than this
    alive: bool
    health: bool
    capacity: Tally  # the final burst of max_concurrent requests
    proxy_requests: Counter[str]  # mtproxy_requests_total by status, counted during the soak
    retries: float  # counted during the soak
    log_problems: list[str]


@dataclass(slots=True)
class FakeView:
    """What the faulty runtime counted."""

    records: list[Upstream]
    lag: LoopLag  # when the fake's own event loop ran late
    injected: Counter[str]
    flaps: int
    flap_seconds: float
    flap_refusals: Counter[str]


@dataclass(slots=True)
class Soak:
    """Everything one soak saw; its verdicts and its report."""

    header: list[str]
    config_text: str
    concurrency: int
    max_concurrent: int
    traffic_seconds: float
    traffic_t0: float  # time.monotonic() when the traffic began
    tally: Tally
    start: Start
    end: End
    fake: FakeView
    closes: Closes
    cuts: Cuts
    samples: list[Sample] = field(default_factory=list)
    health: HealthProbe | None = None  # /health round trips during the traffic
    client_lag: LoopLag = field(default_factory=LoopLag)  # the soak client's own event loop
    sched: SchedWatch | None = None  # mtproxy's event-loop thread: on a CPU or waiting for one
    workers_cancelled: int = 0
    scrape_failures: int = 0  # GET /metrics during the run that failed

    # --- verdicts --------------------------------------------------------------------------------

    def checks(self) -> list[Check]:
        return [*self._crash(), *self._leaks(), *self._latency(), *self._validity()]

    def exit_status(self) -> int:
        return exit_status(self.checks())

    def _crash(self) -> Iterable[Check]:
        e, t = self.end, self.tally
        yield alive_check(e.alive, e.health)
        cap = e.capacity
        served = cap.by_category()[OK]
        yield Check(CRASH, f"{self.max_concurrent} requests at once (= limits.max_concurrent) at the end, "
                    "no fault injected", f"{served} of {cap.finished} served",
                    "all: no slot lost", served == cap.finished == self.max_concurrent)
        yield from failure_checks("proxy failures: its own 5xx, dropped connections, broken streams, hangs",
                                  t, self.scrape_failures, e.log_problems)
        yield Check(CRASH, "requests whose body never completed, forwarded anyway",
                    str(self.closes.incomplete_forwarded), "0", self.closes.incomplete_forwarded == 0)

    def _leaks(self) -> Iterable[Check]:
        s, e = self.start, self.end
        busy = {b: v for b, v in e.in_flight.items() if v}
        yield Check(LEAK, "mtproxy_requests_in_flight, every backend", _counts(busy) or "0", "0",
                    bool(e.in_flight) and not busy)
        yield Check(LEAK, "event-loop tasks (mtproxy_event_loop_tasks, fewest of 5 scrapes)",
                    f"{s.tasks} at rest → {e.tasks if e.tasks is not None else '?'} at the end",
                    "≤ at rest", e.tasks is not None and e.tasks <= s.tasks)
        yield Check(LEAK, "client connections still open in mtproxy", str(e.sockets.client_open), "0",
                    e.sockets.client_open == 0)
        yield Check(LEAK, "sockets in CLOSE_WAIT (peer gone, never closed)", str(e.sockets.close_wait), "0",
                    e.sockets.close_wait == 0)
        bound = self.max_concurrent + len(e.in_flight)
        n_up = e.sockets.upstream_established
        yield Check(LEAK, "upstream connections: all idle in the keep-alive pool, in rotation "
                    f"(a request within {e.max_idle:g} s), at most limits.max_concurrent + 1 per backend",
                    f"{n_up} open ({s.sockets.upstream_established} at rest), {len(e.stale)} out of rotation",
                    f"0 out of rotation, ≤ {bound}", not e.stale and n_up <= bound)
        other_start = s.sockets.fds - s.sockets.upstream_established
        other_end = e.sockets.fds - n_up
        yield Check(LEAK, "file descriptors other than upstream connections", f"{other_start} → {other_end}",
                    "≤ at rest", other_end <= other_start)
        open_upstream = e.fake_live + len(self.closes.expired) + self.cuts.expired
        yield Check(LEAK, "upstream requests left open (the fake still serving, or a stall nobody cut)",
                    str(open_upstream), "0", open_upstream == 0)
        growth = e.rss / s.rss - 1
        yield Check(LEAK, "RSS, end vs after the warm-up", f"{s.rss / MB:.1f} → {e.rss / MB:.1f} MB ({growth:+.1%})",
                    f"≤ +{RSS_GROWTH_MAX:.0%}", growth <= RSS_GROWTH_MAX)

    def _latency(self) -> Iterable[Check]:
        c = self.closes
        measured = c.measured()
        n = len(measured) + len(c.finished) + len(c.expired)
        _, p99, worst = quantiles(measured)
        yield Check(LATENCY, "upstream request closed after its client disconnected",
                    f"{c.over(CLOSE_LIMIT)} of {n} over {CLOSE_LIMIT * 1000:g} ms; p99 {_ms(p99)}, max {_ms(worst)} ms",
                    f"all ≤ {CLOSE_LIMIT * 1000:g} ms", n > 0 and c.over(CLOSE_LIMIT) == 0)

    def _validity(self) -> Iterable[Check]:
        t, f = self.tally, self.fake
        soak = {cause: n for (cat, cause), n in t.outcomes.items() if cat == SOAK}
        yield Check(VALIDITY, "errors of the soak itself (or of the fake)", _counts(soak) or "0", "0", not soak)
        yield Check(VALIDITY, "workers that had to be cancelled at the end", str(self.workers_cancelled), "0",
                    self.workers_cancelled == 0)
        missing = [k for k in ("error_503", "reset_before", "stall_first", "stall_mid", "reset_mid")
                   if not f.injected.get(k)] + ([] if f.flaps else ["flap"])
        yield Check(VALIDITY, "every kind of fault injected", ", ".join(missing) + " missing" if missing else "yes",
                    "yes", not missing)
        phases = Counter(d.phase for d in t.disconnects)
        measured = {p: len(v) for p, v in self.closes.latency.items()}
        gaps = [p for p in PHASES if not phases[p]] + [p for p in PHASES[1:] if not measured[p]]
        yield Check(VALIDITY, "disconnects at every phase; close latency measured after first_token, mid_stream",
                    "missing: " + ", ".join(gaps) if gaps else "yes", "yes", not gaps)

    # --- markdown --------------------------------------------------------------------------------

    def markdown(self) -> str:
        lines = list(self.header)
        status = self.exit_status()
        lines += ["", f"**Verdict: {'PASS' if status == 0 else 'FAIL'}** (exit status {status}: 0 pass, "
                  "1 a crash or leak check failed, 2 the soak itself was not valid; the latency check is "
                  "reported, not part of the exit status)", "",
                  "| check | kind | measured | limit | result |", "|---|---|---|---|---|"]
        lines += [f"| {c.what} | {c.kind} | {c.measured} | {c.limit} | {c.verdict} |" for c in self.checks()]
        lines += self._traffic() + self._faults() + self._close_table() + self._responsiveness() + self._timeouts()
        lines += self._rest() + self._samples()
        lines += ["", "## Configuration of mtproxy", "", "```yaml", self.config_text.rstrip(), "```"]
        return "\n".join(lines) + "\n"

    def _traffic(self) -> list[str]:
        t = self.tally
        total = t.finished
        cats = t.by_category()
        lines = ["", "## Requests", "",
                 f"{total:,} requests in {self.traffic_seconds:.0f} s ({total / self.traffic_seconds:.1f}/s) "
                 f"from {self.concurrency} clients; {cats[OK]:,} served in full "
                 f"({cats[OK] / self.traffic_seconds:.1f}/s). Mix: "
                 + ", ".join(f"{k} {n:,}" for k, n in sorted(t.kinds.items())) + ".", "",
                 "| outcome | cause | requests | share |", "|---|---|---|---|"]
        for cat in CATEGORIES:
            rows = sorted(((cause, n) for (c, cause), n in t.outcomes.items() if c == cat), key=lambda r: -r[1])
            for cause, n in rows:
                lines.append(f"| {cat} | {cause} | {n:,} | {n / total:.2%} |")
        planned = ", ".join(f"{p} {t.planned[p]:,}" for p in PHASES)
        overtaken = ", ".join(f"{p} {t.overtaken[p]:,}" for p in PHASES if t.overtaken[p]) or "none"
        lines += ["", f"Disconnects planned: {planned}; the answer (or an error) came before the planned moment "
                  f"in: {overtaken} (counted by what happened; a first_token plan whose stream had begun "
                  "disconnects mid_stream)."]
        if t.examples:
            lines += ["", "Request ids of failures (grep the fake's records or mtproxy's log):"]
            lines += [f"- {cause}: {', '.join(ids)}" for cause, ids in t.examples.items()]
        return lines

    def _faults(self) -> list[str]:
        f = self.fake
        upstream = len(f.records)
        rids = len({r.rid for r in f.records})
        return ["", "## Faults injected by the fake runtime", "",
                f"{upstream:,} upstream requests for {rids:,} client requests; faults: "
                + ", ".join(f"{k} {n:,}" for k, n in sorted(f.injected.items())) + "; "
                f"{f.flaps} flaps ({f.flap_seconds:.0f} s of a backend answering 503 to everything), "
                f"refusing {sum(f.flap_refusals.values()):,} requests ("
                + ", ".join(f"{k} {n:,}" for k, n in sorted(f.flap_refusals.items())) + "). "
                f"mtproxy retried {self.end.retries:,.0f} requests on another backend."]

    def _close_table(self) -> list[str]:
        c = self.closes
        lines = ["", "## Upstream close after a client disconnect", "",
                 "From the client closing its connection (`time.monotonic()` right before the close) to the "
                 "fake runtime's handler for that request being cancelled because mtproxy closed the "
                 "upstream connection (`time.monotonic()` in its `except CancelledError`).", "",
                 "| phase | disconnects | upstream closes measured | p50 ms | p99 ms | max ms | over 100 ms | "
                 "never reached a backend | upstream already finished |", "|---|---|---|---|---|---|---|---|---|"]
        phases = Counter(d.phase for d in self.tally.disconnects)
        for p in PHASES:
            v = c.latency[p]
            p50, p99, worst = quantiles(v)
            lines.append(f"| {p} | {phases[p]:,} | {len(v):,} | {_ms(p50)} | {_ms(p99)} | {_ms(worst)} | "
                         f"{sum(x > CLOSE_LIMIT for x in v)} | {c.never_sent[p]:,} | {c.already_done[p]:,} |")
        allv = c.measured()
        p50, p99, worst = quantiles(allv)
        lines.append(f"| all | {len(self.tally.disconnects):,} | {len(allv):,} | {_ms(p50)} | {_ms(p99)} | "
                     f"{_ms(worst)} | {sum(x > CLOSE_LIMIT for x in allv)} | {sum(c.never_sent.values()):,} | "
                     f"{sum(c.already_done.values()):,} |")
        fin = f", the latest {_ms(max(c.finished))} ms after the client left" if c.finished else ""
        how = "; ".join(f"{k.upper()}: {len(v):,} measured, p50 {_ms(quantiles(v)[0])}, p99 {_ms(quantiles(v)[1])}, "
                        f"max {_ms(quantiles(v)[2])} ms" for k, v in c.by_how.items())
        lines += ["", f"By the client's way of closing: {how}.", "",
                  "The slowest closes, and what else happened meanwhile: the slowest /health round trip (a slow one "
                  "means mtproxy's event loop was busy), whether the soak was scraping /metrics, how much of the "
                  "time mtproxy's event-loop thread was on a CPU or waiting for one (/proc/<pid>/schedstat: much on "
                  "a CPU, it was busy with other work; much waiting, the machine was busy), and how late the fake's "
                  "own event loop ran (its time of the close is late as much):", ""]
        for after, d, a in c.slowest(5):
            health = self.health.worst(d.t_close, a.t_end) if self.health else math.nan
            scraping = any(t <= a.t_end and t + took >= d.t_close for t, took in (s.scrape for s in self.samples))
            lines.append(f"- {_ms(after)} ms: {d.rid}, {d.phase}, {d.how.upper()}, "
                         f"{d.t_close - self.traffic_t0:.0f} s into the traffic; "
                         + ("no /health meanwhile" if math.isnan(health) else f"/health {_ms(health)} ms")
                         + f"; {'during a /metrics scrape' if scraping else 'no scrape'}; "
                         + self._sched(d.t_close, a.t_end)
                         + f"the fake late {self.fake.lag.worst(d.t_close, a.t_end) * 1000:.0f} ms")
        lines += ["", f"Besides: {len(c.finished)} upstream answers the fake finished on its own after the client "
                  f"had left, before mtproxy closed them{fin}; {c.cut_by_fault} cut by an injected fault first; "
                  f"{len(c.expired)} never closed; {c.sent_late} upstream requests started after their client "
                  f"had left, at most {_ms(c.sent_late_max)} ms after (included above). "
                  "Before routing the body is incomplete: nothing may reach a backend."]
        return lines

    def _sched(self, start: float, end: float) -> str:
        spent = self.sched.between(start, end) if self.sched else None
        if spent is None:
            return ""
        return f"mtproxy {spent[0] * 1000:.0f} ms on a CPU, {spent[1] * 1000:.0f} ms waiting for one; "

    def _responsiveness(self) -> list[str]:
        if self.health is None:
            return []
        trips = [rtt for _, rtt in self.health.trips]
        p50, p99, worst = quantiles(trips)
        scrapes = [s.scrape[1] for s in self.samples]
        s50, _, s_max = quantiles(scrapes)
        cl, fk = self.client_lag.late, self.fake.lag.late
        return ["", "## Responsiveness during the traffic", "",
                f"- `GET /health` every {self.health.every * 1000:g} ms on one connection: {len(trips):,} round trips, "
                f"p50 {_ms(p50)}, p99 {_ms(p99)}, max {_ms(worst)} ms, {sum(x > CLOSE_LIMIT for x in trips)} over "
                f"{CLOSE_LIMIT * 1000:g} ms. /health does no work: its round trip is how long mtproxy's event loop "
                "took to get to it, plus the soak's own lateness (next lines).",
                f"- `GET /metrics` (the soak's samples; {len(scrapes)} scrapes): p50 {_ms(s50)}, max {_ms(s_max)} ms; "
                "mtproxy renders it in a worker thread (mtproxy/metrics/export.py), sharing the GIL with its "
                "event loop.",
                f"- event loops running over 20 ms late: the soak's client {len(cl)} times, at most "
                f"{max((x for _, x in cl), default=0) * 1000:.0f} ms; the fake {len(fk)} times, at most "
                f"{max((x for _, x in fk), default=0) * 1000:.0f} ms.",
                *self._waiting()]

    def _waiting(self) -> list[str]:
        if self.sched is None:
            return []
        share, most = self.sched.waiting()
        return [f"- mtproxy's event-loop thread, runnable but waiting for a CPU: {share:.1%} of the traffic's "
                f"time; at most {_ms(most)} ms between two readings (every "
                f"{self.sched.every * 1000:g} ms, {len(self.sched.points):,} readings)."]

    def _timeouts(self) -> list[str]:
        cuts = self.cuts
        lines = ["", "## Stalls cut by mtproxy's timeouts", "",
                 "From the start of an injected stall to mtproxy closing the upstream request.", "",
                 "| timeout | configured s | stalls cut | median s | max s |", "|---|---|---|---|---|"]
        for name, limit in cuts.limit.items():
            v = cuts.seconds[name]
            p50, _, worst = quantiles(v)
            lines.append(f"| {name} | {limit:g} | {len(v)} | {_s(p50)} | {_s(worst)} |")
        lines += ["", f"{cuts.expired} stalls ran their full length uncut; {cuts.client_left} ended by their client "
                  f"leaving first; {len(cuts.unexplained)} upstream requests closed by mtproxy with neither a stall "
                  "nor a client leaving"
                  + (": " + ", ".join(f"{u.rid} ({u.fault}, {u.end})" for u in cuts.unexplained[:10])
                     if cuts.unexplained else "") + "."]
        return lines

    def _rest(self) -> list[str]:
        s, e = self.start, self.end
        stale = ", ".join(f"port {p} ({'never used' if i is None else f'idle {i:.0f} s'})" for p, i in e.stale[:10])
        return ["", "## At rest, before and after", "",
                f"- settled {e.settle_seconds:.0f} s after the traffic stopped (the soak waits for the in-flight "
                "gauges, the tasks, the client connections and the backends to come back)",
                f"- sockets before the warm-up: {s.sockets.describe()}",
                f"- sockets at the end: {e.sockets.describe()}" + (f"; out of rotation: {stale}" if stale else ""),
                f"- event-loop tasks: {s.tasks} at rest after the warm-up, {e.tasks} at the end",
                f"- RSS: {s.rss / MB:.1f} MB after the warm-up, {e.rss / MB:.1f} MB at the end "
                f"({e.rss / s.rss - 1:+.1%})",
                "- backends up at the end: " + ", ".join(f"{b} {v:g}" for b, v in sorted(e.backend_up.items())),
                "- mtproxy_requests_total by status, counted during the soak: " + _statuses(e.proxy_requests)
                + "; the clients' outcomes counted the same way: " + _statuses(as_statuses(self.tally))
                + (" (the same)" if e.proxy_requests == as_statuses(self.tally) else
                   " (a difference of a few is an answer and a deliberate disconnect crossing: the proxy "
                   "finished the answer as the client left)"),
                f"- mtproxy's log: {len(e.log_problems)} tracebacks / unhandled errors"
                + ("".join(f"\n  - `{p}`" for p in e.log_problems[:5]))]

    def _samples(self) -> list[str]:
        lines = ["", "## During the run", "",
                 f"CPU since the previous sample: mtproxy's, as a share of one core; the machine's, as a share of "
                 f"all its {os.cpu_count()} cores (every process: the soak's client, the fake, mtproxy, other work).",
                 "", "| t s | requests done | mtproxy CPU | machine CPU | RSS MB | tasks | in flight | fds | "
                 "client conns | upstream conns |", "|---|---|---|---|---|---|---|---|---|---|"]
        prev: Sample | None = None
        cores = os.cpu_count() or 1
        for x in self.samples:
            dt = x.t - prev.t if prev else 0.0
            cpu = f"{(x.cpu - prev.cpu) / dt:.0%}" if prev and dt > 0 else ""
            busy = f"{(x.busy - prev.busy) / dt / cores:.0%}" if prev and dt > 0 else ""
            lines.append(f"| {x.t:.0f} | {x.requests:,} | {cpu} | {busy} | {x.rss / MB:.1f} | {x.tasks} | "
                         f"{x.in_flight:g} | {x.fds} | {x.client_conns} | {x.upstream_conns} |")
            prev = x
        return lines


def exit_status(checks: list[Check]) -> int:
    """0 pass, 1 a crash or leak check failed, 2 the soak itself was not valid."""
    if any(not c.ok for c in checks if c.kind == VALIDITY):
        return 2
    return 1 if any(not c.ok for c in checks if c.kind in (CRASH, LEAK)) else 0


def alive_check(alive: bool, health: bool) -> Check:
    return Check(CRASH, "mtproxy still running and answering /health at the end",
                 "yes" if alive and health else ("running, /health failed" if alive else "exited"),
                 "yes", alive and health)


def failure_checks(what: str, tally: Tally, scrape_failures: int, log_problems: list[str]) -> Iterable[Check]:
    """The proxy's own failures as the clients counted them (``what`` names them), the samples'
    scrapes of /metrics that failed, and the problems in its log: crash checks of both scenarios."""
    bugs = {cause: n for (cat, cause), n in tally.outcomes.items() if cat == BUG}
    yield Check(CRASH, what, _counts(bugs) or "0", "0", not bugs)
    yield Check(CRASH, "GET /metrics during the run that failed", str(scrape_failures), "0", scrape_failures == 0)
    yield Check(CRASH, "tracebacks / unhandled errors in mtproxy's log", str(len(log_problems)), "0",
                not log_problems)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def as_statuses(tally: Tally) -> Counter[str]:
    """The clients' outcomes under the status labels of mtproxy_requests_total."""
    out: Counter[str] = Counter()
    for (category, cause), n in tally.outcomes.items():
        if category == OK:
            out["200"] += n
        elif category == DISCONNECT:
            out["client_closed"] += n
        elif cause.startswith("HTTP "):
            out[cause.split()[1]] += n
        elif cause.startswith("stream error event"):
            out["stream_error"] += n
        else:
            out[cause] += n
    return out


def _statuses(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _s(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds:.2f}"


def _counts(counts: Mapping[str, float]) -> str:
    return "; ".join(f"{k}: {v:g}" for k, v in sorted(counts.items()))
