"""``mtproxy verify``: prove MTP is really on, by its signature.

The same prompt is sent to one backend, over and over, for a window (5 s by default), in several
rounds; the other side (``--against`` another backend, or ``--baseline`` a saved run) gets the
same, interleaved round by round. Each side reports output tokens per second over the window,
the proxy's own tokens per decode step, and the runtime's draft acceptance where it reports one.
MTP is verified when the tokens/s gain reaches the threshold (default ×1.15); with neither
``--against`` nor ``--baseline``, when the runtime reports accepted drafts or more than one token
per step. Exit status: 0 verified, 1 not, 2 error.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import aiohttp

from . import upstream
from .backends import Backend, BackendPool
from .config import Config
from .metrics.meter import RequestMeter
from .router import Router
from .wire import CHAT, from_payload

DEFAULT_PROMPT = ("Repeat the following paragraph exactly, word for word: The quick brown fox jumps over "
                  "the lazy dog. A proxy forwards every request to the runtime that serves the model, "
                  "measures the latency of each streamed chunk, and records the number of prompt and "
                  "completion tokens.")


class VerifyError(Exception):
    """Verification could not run (exit status 2)."""


@dataclass
class Side:
    label: str
    backend: str
    runtime: str
    version: str | None
    model: str
    rounds: list[float] = field(default_factory=list)  # output tokens/s per round
    tokens: int = 0
    requests: int = 0
    steps: float = 0.0  # decode steps: exact from the runtime's accepted drafts, else bursts
    decode_rates: list[float] = field(default_factory=list)
    drafted: int | None = None
    accepted: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return statistics.median(self.rounds) if self.rounds else 0.0

    @property
    def tokens_per_step(self) -> float | None:
        return self.tokens / self.steps if self.steps else None

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted and self.accepted is not None else None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tokens_per_second=self.tokens_per_second, tokens_per_step=self.tokens_per_step,
                   acceptance=self.acceptance,
                   decode_tokens_per_second=statistics.median(self.decode_rates) if self.decode_rates else None)
        return out


@dataclass
class Outcome:
    verified: bool
    message: str
    sides: list[Side]
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"verified": self.verified, "message": self.message, "ratio": self.ratio,
                "sides": [s.summary() for s in self.sides]}


async def _one(session: aiohttp.ClientSession, backend: Backend, payload: dict[str, Any], side: Side,
               timeout: float) -> None:
    req = from_payload(dict(payload), CHAT)
    prepared = backend.runtime.prepare(req)
    meter: RequestMeter[Backend] = RequestMeter(perf_counter(), "chat", stream=True)
    try:
        async with asyncio.timeout(timeout):
            async with await upstream.send(session, backend.url(prepared.path), prepared.body, backend.headers,
                                           backend.name) as resp:
                if resp.status >= 400:
                    err = backend.runtime.upstream_error(resp.status, await resp.read())
                    raise VerifyError(f"{backend.name} answered HTTP {resp.status}: {err.message}")
                decoder = backend.runtime.stream_decoder(req, meter.report)
                async for data in resp.content.iter_any():
                    now = perf_counter()  # the read's own time (the loop's clock is coarse)
                    batch = decoder.feed(data)
                    if batch is not None and batch.content:
                        meter.content(now, batch.content)
                batch = decoder.flush()
                if batch is not None and batch.content:
                    meter.content(perf_counter(), batch.content)
    except upstream.ERRORS as exc:
        raise VerifyError(upstream.failure(exc, backend.name).message) from None
    meter.t_end = perf_counter()
    m = meter.measure()
    report = meter.report
    if m.output_tokens is None:
        raise VerifyError(f"{backend.name} ({backend.runtime.name}) does not report token counts in streams")
    side.requests += 1
    side.tokens += m.output_tokens
    side.steps += m.steps or 0
    if m.decode_rate is not None:
        side.decode_rates.append(m.decode_rate)
    if report.draft_tokens is not None:
        side.drafted = (side.drafted or 0) + report.draft_tokens
    if report.accepted_tokens is not None:
        side.accepted = (side.accepted or 0) + report.accepted_tokens


async def _round(session: aiohttp.ClientSession, backend: Backend, payload: dict[str, Any], side: Side,
                 seconds: float, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    tokens_before = side.tokens
    while loop.time() - start < seconds:
        await _one(session, backend, payload, side, timeout)
    side.rounds.append((side.tokens - tokens_before) / (loop.time() - start))


def _side(label: str, backend: Backend, model: str) -> Side:
    return Side(label, backend.name, backend.runtime.name, backend.version, model)


def _pick(pool: BackendPool, model: str, name: str | None) -> Backend:
    if name is not None:
        for b in pool.backends:
            if b.name == name:
                if model not in b.models:
                    raise VerifyError(f"backend {name} does not serve {model} (it serves: "
                                      f"{', '.join(b.models) or 'nothing known'})")
                if not b.up:
                    raise VerifyError(f"backend {name} is down: {b.detail}")
                return b
        raise VerifyError(f"no backend named {name} in the config")
    router = Router(pool)
    try:
        return router.pick(router.resolve(model))
    except Exception as exc:
        raise VerifyError(str(exc)) from None


def judge(subject: Side, reference: Side | None, threshold: float) -> Outcome:
    tps = subject.tokens_per_step
    per_step = f"{tps:.1f} tokens per step" if tps is not None else "tokens per step unknown"
    acc = subject.acceptance
    acceptance = f", {acc:.0%} of drafts accepted" if acc is not None else ""
    drafting = bool(subject.accepted) or (tps is not None and tps >= threshold)
    if reference is None:
        sides = [subject]
        if drafting:
            return Outcome(True, f"MTP active ({per_step}{acceptance})", sides)
        return Outcome(False, f"no sign of MTP: {per_step}{acceptance or ', no accepted drafts reported'}", sides)
    ratio = subject.tokens_per_second / reference.tokens_per_second if reference.tokens_per_second else None
    sides = [subject, reference]
    if ratio is not None and ratio >= threshold:
        return Outcome(True, f"MTP active (×{ratio:.2f} tokens/s, {per_step}{acceptance})", sides, ratio)
    shown = f"×{ratio:.2f} tokens/s" if ratio is not None else "no reference rate"
    if drafting:
        # drafting works, but it does not pay here: drafts cost as much as they save (a small
        # model on a CPU, a draft model too large, a batch already filling the hardware)
        return Outcome(False, f"no material speed-up ({shown}, {per_step}{acceptance}): drafts are "
                              "accepted but do not pay on this hardware", sides, ratio)
    return Outcome(False, f"no material speed-up ({shown}, {per_step}{acceptance}): "
                          "the runtime is not using MTP", sides, ratio)


async def verify(config: Config, *, model: str, backend: str | None, against: str | None,
                 baseline: dict[str, Any] | None, seconds: float, rounds: int, prompt: str,
                 max_tokens: int, threshold: float,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
    """``progress``, when given, is told of each round as it ends (the page shows it)."""
    pool = BackendPool(config)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect)
    # a fresh connection per request: llama-server closes after a chunked stream although it
    # offers keep-alive, and a measurement must not trip over that
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await pool.probe_all(session)
        model = pool.aliases.get(model, model)
        subject_backend = _pick(pool, model, backend)
        reference_backend = _pick(pool, model, against) if against else None
        if reference_backend is subject_backend:
            raise VerifyError("--backend and --against name the same backend")
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                   "temperature": 0, "max_tokens": max_tokens}
        subject = _side("subject", subject_backend, model)
        reference = _side("reference", reference_backend, model) if reference_backend else None
        per_request = config.timeouts.request
        for i in range(rounds):  # interleaved, so drift on the machine hits both sides alike
            sides = [(subject_backend, subject)]
            if reference is not None and reference_backend is not None:
                sides.append((reference_backend, reference))
            for target, side in sides:
                await _round(session, target, payload, side, seconds, per_request)
                if progress is not None:
                    progress({"side": side.label, "backend": side.backend, "round": i + 1, "rounds": rounds,
                              "tokens_per_second": round(side.rounds[-1], 2), "requests": side.requests})
    if baseline is not None:
        reference = Side("baseline", baseline["backend"], baseline["runtime"], baseline.get("version"),
                         baseline["model"], rounds=list(baseline["rounds"]), tokens=baseline["tokens"],
                         steps=baseline.get("steps", 0), requests=baseline.get("requests", 0))
    return judge(subject, reference, threshold)


def save_baseline(path: Path, side: Side, prompt: str) -> None:
    data = {**asdict(side), "prompt": prompt, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VerifyError(f"cannot read baseline {path}: {exc}") from None
    missing = {"backend", "runtime", "model", "rounds", "tokens"} - set(data)
    if missing:
        raise VerifyError(f"baseline {path} lacks {', '.join(sorted(missing))}")
    return data


def render(outcome: Outcome) -> str:
    lines = []
    for s in outcome.sides:
        tps = s.tokens_per_step
        acc = s.acceptance
        lines.append(
            f"{s.label:<9} {s.backend} ({s.runtime} {s.version or '?'}): {s.tokens_per_second:.1f} tokens/s "
            f"[{', '.join(f'{r:.1f}' for r in s.rounds)}], "
            f"{f'{tps:.2f}' if tps is not None else '?'} tokens/step, "
            f"acceptance {f'{acc:.0%}' if acc is not None else 'not reported'}, {s.requests} requests")
    lines.append(outcome.message)
    return "\n".join(lines)
