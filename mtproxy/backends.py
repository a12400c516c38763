"""Live backend state and the background probes that keep it current: health, version, models,
and for each model whether it is MTP-trained and whether the backend runs MTP for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

import aiohttp
from yarl import URL

from .config import BackendConfig, Config
from .launcher import ManagedProcess
from .metrics.meter import ANSWERED, Measurement, RequestMeter
from .mtp import detect
from .mtp.detect import UNKNOWN, Trained
from .mtp.state import LIVE_WINDOW, NO_EVIDENCE, Evidence, MtpStatus, decide, live_evidence
from .runtimes import BackendHTTP, Probe, Report, Runtime, runtime_for
from .runtimes.base import native_kinds
from .speed import Speed
from .swap import Events, Member, Swapper
from .wire import ApiRequest

log = logging.getLogger("mtproxy.backends")

# A backend × model whose runtime has not yet said whether it runs MTP is probed again this soon
# after a request to it finishes (the evidence appears once the runtime has drafted: vLLM's
# spec_decode counters, llama.cpp's /slots types), rather than at the next `health.mtp_interval`:
# at most once in this many seconds per backend, one probe at a time.
EARLY_MTP_PROBE_SECONDS = 2.0


class Backend:
    """One configured backend: its adapter and what the proxy currently knows of it."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.runtime: Runtime = runtime_for(config.runtime)
        url = URL(config.url)
        if url.path.rstrip("/").endswith("/v1"):  # a common slip: the root is wanted
            url = url.with_path(url.path.rstrip("/")[: -len("/v1")] or "/")
        self.base_url = url
        self._urls: dict[str, URL] = {}
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if config.api_key is not None:
            self.headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.up = True  # optimistic until the first probe; a refused request marks it down
        self.detail = "not probed yet"
        self.models: tuple[str, ...] = tuple(config.models or ())
        self.version: str | None = None
        # the client APIs it serves itself (Runtime.native_apis, as far as its version shows; a
        # route that answers 404/405 takes its API off: proxy._lacks_route)
        self.native = native_kinds(self.runtime.native_apis, None)
        self.outstanding = 0
        # MTP, per served model
        self.reported: dict[str, Trained] = {}  # the runtime's word on "MTP-trained"
        self.evidence: dict[str, Evidence] = {}  # the runtime's word on "MTP drafting on"
        self.live: dict[str, Evidence] = {}  # what its responses showed
        self.recent: dict[str, deque[tuple[float | None, int | None]]] = {}  # (tokens/step, accepted)
        self.mtp: dict[str, MtpStatus] = {}
        self.mtp_probed_at = 0.0
        # early MTP probes after requests (BackendPool.finished): the last one's time, the task that
        # runs them, and whether a request finished since that task last probed
        self.mtp_early_at = 0.0
        self.mtp_early: asyncio.Task | None = None
        self.mtp_early_wanted = False
        self.speed: dict[str, Speed] = {}  # measured, per served model (speed.py)
        self.process: ManagedProcess | None = None  # for a backend with `launch`
        self.member: Member | None = None  # a backend mtproxy starts and stops (swap.py)
        self.cap = config.max_concurrent or 0  # 0: no cap
        # passive outlier detection (Envoy-style): consecutive 5xx answers eject the backend
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:  # a handful of endpoint paths: joined once each
            url = self._urls[path] = self.base_url.join(URL(path))
        return url

    def mark_down(self, reason: str) -> None:
        if self.up:
            log.warning("backend %s marked down: %s", self.name, reason)
        self.up = False
        self.detail = reason

    def relays(self, req: ApiRequest) -> bool:
        """Whether ``req`` goes to this backend in its client's own API (and its answer comes
        back as the runtime wrote it), rather than translated to chat completions."""
        native = req.native
        return native is not None and native.kind in self.native and self.runtime.relays(native)

    @property
    def warm(self) -> bool:
        """Serving now: not a member of a swap group that is stopped, starting or leaving."""
        member = self.member
        return member is None or member.state == "ready"

    @property
    def full(self) -> bool:
        return self.cap > 0 and self.outstanding >= self.cap

    def mtp_on(self, model: str) -> bool:
        status = self.mtp.get(model)
        return status is not None and status.on

    def __repr__(self) -> str:
        return f"<Backend {self.name} up={self.up} outstanding={self.outstanding}>"


def _unshown(backend: Backend, model: str) -> bool:
    """MTP for ``model`` may run on ``backend`` but its runtime's own probe has not said whether
    it does: evidence that may yet appear. (Drafts in its answers make it `active` before that,
    but some other speculation drafts too: llama.cpp's ngram types, which /slots tells apart.)"""
    status = backend.mtp.get(model)
    return status is not None and status.state != "off" and backend.evidence.get(model, NO_EVIDENCE).mtp is None


class _NoEvents:
    def started(self, backend: str, reason: str, seconds: float) -> None: ...
    def stopped(self, backend: str, reason: str) -> None: ...
    def swapped(self, group: str) -> None: ...
    def waited(self, backend: str, seconds: float) -> None: ...


class BackendPool:
    """All backends, the model → backends index, MTP knowledge, and the probe loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.decay = config.routing.decay_seconds  # read once per finished request: not off the model
        self.backends = [Backend(b) for b in config.backends]
        self.aliases = {a: m for m, cfg in config.models.items() for a in cfg.aliases}
        self.by_model: dict[str, list[Backend]] = {}
        self.trained: dict[str, Trained] = {}
        self.tokens: dict[str, float] = {}  # per model: a running mean of output tokens per request
        self._files: dict[str, Trained | None] = {}  # model_path → what the file says
        # background work on managed backends (starting them), owned here and cancelled by
        # stop_managed; their starts, stops and swaps are the swapper's
        self.tasks: set[asyncio.Task] = set()
        self.swapper: Swapper | None = None
        self.session: aiohttp.ClientSession | None = None  # the probes' (probe_all), for early MTP probes
        self._reindex()

    def update(self, config: Config) -> list[Backend]:
        """Take a reloaded config: unchanged backends keep their state (health, MTP evidence,
        processes); changed and new ones start fresh. Returns the backends that left, for the
        caller to retire once their requests are done."""
        old = {b.name: b for b in self.backends}
        backends, retired = [], []
        for cfg in config.backends:
            kept = old.pop(cfg.name, None)
            if kept is not None and kept.config == cfg:
                backends.append(kept)
            else:
                backends.append(Backend(cfg))
                if kept is not None:
                    retired.append(kept)
        retired.extend(old.values())
        self.config = config
        self.decay = config.routing.decay_seconds
        self.backends = backends
        self.aliases = {a: m for m, cfg in config.models.items() for a in cfg.aliases}
        self._files = {}
        self._reindex()
        return retired

    def _reindex(self) -> None:
        index: dict[str, list[Backend]] = {}
        for backend in self.backends:
            for model in backend.models:
                index.setdefault(model, []).append(backend)
        self.by_model = index
        self.trained = {model: self._trained(model, backends) for model, backends in index.items()}
        for backend in self.backends:
            self._decide(backend)

    def answered(self, backend: Backend, status: int) -> None:
        """Passive outlier detection: a backend answering 5xx this many times in a row is ejected
        for a while (doubling with each ejection); health checks bring it back afterwards."""
        if status < 500:
            backend.failures = 0
            if backend.ejected_until and backend.up:
                backend.ejections = 0
                backend.ejected_until = 0.0
            return
        backend.failures += 1
        cfg = self.config.outlier
        if backend.failures >= cfg.consecutive_failures:
            seconds = min(cfg.ejection_seconds * 2 ** backend.ejections, cfg.max_ejection_seconds)
            backend.ejections += 1
            backend.failures = 0
            backend.ejected_until = time.monotonic() + seconds
            backend.mark_down(f"ejected for {seconds:g} s after {cfg.consecutive_failures} failures in a row")

    def model_names(self) -> Iterable[str]:
        """Every model a client may ask for: served names, then configured aliases."""
        yield from self.by_model
        yield from (a for a, m in self.aliases.items() if m in self.by_model and a not in self.by_model)

    # --- MTP -----------------------------------------------------------------------------------

    def _trained(self, model: str, backends: list[Backend]) -> Trained:
        """config flag → the runtime's own report → a local model file → the family name."""
        cfg = self.config.models.get(model)
        if cfg is not None and cfg.mtp is not None:
            return Trained(cfg.mtp, "config", f"models.{model}.mtp = {str(cfg.mtp).lower()}")
        for backend in backends:
            reported = backend.reported.get(model)
            if reported is not None and reported.mtp is not None:
                return reported
        for backend in backends:
            path = backend.config.model_path
            if path:
                found = self._files.get(path)  # read in the probe round, off the event loop
                if found is not None and found.mtp is not None:
                    return found
        return detect.from_family(model) or UNKNOWN

    def _decide(self, backend: Backend) -> None:
        for model in backend.models:
            status = decide(backend.runtime.mtp_support, backend.version, model, self.trained[model].mtp,
                            backend.evidence.get(model, NO_EVIDENCE), backend.live.get(model, NO_EVIDENCE),
                            backend.config.mtp)
            before = backend.mtp.get(model)
            if before is None or (before.state, before.mismatch) != (status.state, status.mismatch):
                level = logging.WARNING if status.mismatch else logging.INFO
                log.log(level, "backend %s, model %s: MTP %s (%s)", backend.name, model, status.state, status.why)
            backend.mtp[model] = status

    def drafting(self, backend: Backend, model: str, report: Report) -> bool:
        """Whether a request for ``model`` answered with ``report`` ran MTP on ``backend``, its own
        drafts counted at once: a backend not yet shown `active` whose answer carries accepted
        drafts (or several tokens per iteration) is re-decided with it, so the first request that
        drafts is labelled with MTP on (metrics, and the header of a non-streaming answer)."""
        trained = self.trained.get(model)
        if trained is None or not trained.mtp:  # as the router's Route.mtp_model
            return False
        evidence = live_evidence(report, ())  # with no history: drafts shown, or None
        if evidence is None or evidence.mtp is not True:
            return False
        if not backend.mtp_on(model):
            backend.live[model] = evidence
            self._decide(backend)
        return backend.mtp_on(model)

    def _probe_mtp_soon(self, backend: Backend) -> None:
        """Probe ``backend`` for MTP in the background: at once, or when EARLY_MTP_PROBE_SECONDS
        have passed since its last early probe; one task per backend, never on the request path."""
        backend.mtp_early_wanted = True
        if backend.mtp_early is None and self.session is not None:
            task = asyncio.create_task(self._early_mtp_probes(self.session, backend), name=f"mtp-probe-{backend.name}")
            backend.mtp_early = task
            self.track(task)  # cancelled by stop_managed

    async def _early_mtp_probes(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        try:
            while backend.mtp_early_wanted:  # a request finished since the last probe
                backend.mtp_early_wanted = False
                wait = backend.mtp_early_at + EARLY_MTP_PROBE_SECONDS - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                models = [m for m in backend.models if _unshown(backend, m)]
                if not models or not backend.up or backend not in self.backends:
                    continue
                backend.mtp_early_at = time.monotonic()
                http = BackendHTTP(session, backend.base_url, backend.headers, self.config.health.timeout)
                try:
                    await self._probe_mtp(http, backend, models)
                except Exception:  # an adapter bug: logged, and the next round tries again
                    log.exception("early MTP probe of backend %s failed", backend.name)
                    continue
                self._reindex()
        finally:
            backend.mtp_early = None

    @staticmethod
    async def _probe_mtp(http: BackendHTTP, backend: Backend, models: Iterable[str]) -> None:
        for model in models:
            reported, evidence = await backend.runtime.mtp_probe(http, model)
            if reported is not None:
                backend.reported[model] = reported
            backend.evidence[model] = evidence

    def finished(self, backend: Backend, meter: RequestMeter, m: Measurement) -> None:
        """A request routed to ``backend`` finished (``m``: its measurement), written out as one
        call, once per request:
        - answered in full, its speed updates the backend's estimate for the model (speed.py),
          and its output tokens the model's mean. A stream gives its TTFT from the moment it was
          sent upstream (the proxy's own queueing is not the backend's) and its time per output
          token; a non-streaming answer its time per output token, prefill included;
        - the runtime's report and the proxy's own tokens per step are live evidence of drafting
          (or of none); and the runtime's own evidence, where it shows once the runtime has
          served, is read again soon (:meth:`_probe_mtp_soon`)."""
        model = meter.labels.model
        sent = meter.t_sent
        if sent is not None and meter.outcome is ANSWERED and meter.http_status == 200:
            n = m.output_tokens
            times = meter.times
            if times:
                speed = backend.speed.get(model) or backend.speed.setdefault(model, Speed())
                speed.stream(meter.t_end or sent, self.decay, times[0] - sent, m.time_per_output_token,
                             m.tokens_per_step)
            elif n and meter.t_in is not None:
                speed = backend.speed.get(model) or backend.speed.setdefault(model, Speed())
                speed.unary_answer(meter.t_end or sent, self.decay, (meter.t_in - sent) / n, m.tokens_per_step)
            else:
                n = 0
            if n:
                tokens = self.tokens
                mean = tokens.get(model)
                tokens[model] = n if mean is None else mean + (n - mean) * 0.1
        if backend.runtime.reprobe_mtp:  # _unshown(backend, model), written out
            status = backend.mtp.get(model)
            if status is not None and status.state != "off" and backend.evidence.get(model, NO_EVIDENCE).mtp is None:
                self._probe_mtp_soon(backend)
        report = meter.report
        tokens_per_step = m.tokens_per_step
        if tokens_per_step is None and not report.accepted_tokens and report.tokens_per_step is None:
            return  # nothing new (a non-streaming request, a stream without usage): the verdict stands
        recent = backend.recent.get(model)
        if recent is None:
            recent = backend.recent[model] = deque(maxlen=LIVE_WINDOW)
        if tokens_per_step is not None and (report.completion_tokens or 0) >= 8:  # enough to tell
            recent.append((tokens_per_step, report.accepted_tokens))
        evidence = live_evidence(report, recent)
        if evidence is None:
            return
        before = backend.live.get(model, NO_EVIDENCE)
        backend.live[model] = evidence
        if (before.mtp, before.speculating) != (evidence.mtp, evidence.speculating) and model in self.trained:
            if evidence.mtp is False:
                log.warning("backend %s, model %s: %s", backend.name, model, evidence.why)
            self._decide(backend)

    # --- managed backends ----------------------------------------------------------------------

    def track(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_managed(self, session: aiohttp.ClientSession, events: Events | None = None) -> None:
        """Members for the backends mtproxy starts and stops (swap.py), at start-up and after a
        reload; the `start: startup` ones are started in the background."""
        swapper = self.swapper
        if swapper is None:
            swapper = self.swapper = Swapper(session, events or _NoEvents(), self._member_ready,
                                             lambda b: self._process(session, b))
        fresh = swapper.sync(self.config, self.backends, self.config.health.timeout)
        for backend in self.backends:
            member = swapper.members.get(backend.name)
            backend.member = member
            backend.process = member.process if member is not None else None
            if member is not None and member.state == "stopped" and member.failure is None and member.process:
                backend.detail = "not started; starts on the first request"
        for member in fresh:
            self.track(asyncio.create_task(self._start_quietly(swapper, member.name), name=f"start-{member.name}"))

    def _process(self, session: aiohttp.ClientSession, backend: Backend) -> ManagedProcess:
        cfg = backend.config
        assert cfg.launch is not None
        return ManagedProcess(backend.name, cfg.launch, cfg.env, self._ready_check(session, backend), cfg.ready_timeout)

    def _member_ready(self, member: Member) -> None:
        backend = member.backend
        assert isinstance(backend, Backend)
        if not backend.up:
            log.info("backend %s is up", backend.name)
        backend.up = True
        backend.detail = "ready"

    @staticmethod
    async def _start_quietly(swapper: Swapper, name: str) -> None:
        try:
            await swapper.start(name, "startup")
        except Exception:  # logged by the swapper; the backend shows as down
            pass

    def _ready_check(self, session: aiohttp.ClientSession, backend: Backend):
        async def ready() -> bool:
            http = BackendHTTP(session, backend.base_url, backend.headers, self.config.health.timeout)
            if backend.config.ready is not None:
                try:
                    status, _ = await http.get(backend.config.ready)
                except (TimeoutError, OSError, aiohttp.ClientError):
                    return False
                return status == 200
            probe = await backend.runtime.probe(http, discover=False)
            if probe.up and self._apply(backend, probe):  # its version now, not a probe round later
                self._reindex()
            return probe.up

        return ready

    async def stop_managed(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.swapper is not None:
            await self.swapper.close()

    # --- probes --------------------------------------------------------------------------------

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        """One probe round; with it, the swapper learns what the runtimes it did not launch have
        loaded (Swapper.reconcile: a model loaded or unloaded behind its back)."""
        self.session = session
        swapper = self.swapper
        await asyncio.gather(*(self._probe(session, b) for b in self.backends),
                             *(() if swapper is None else (swapper.reconcile(),)))
        for path in {b.config.model_path for b in self.backends if b.config.model_path} - set(self._files):
            self._files[path] = await detect.from_path_async(path)
        self._reindex()

    async def _probe(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        member = backend.member
        if member is not None and member.process is not None and member.state != "ready":
            # a launched backend not running now: nothing to probe
            if member.failure is not None:
                backend.mark_down(f"launch failed: {member.failure}")
                member.failure = None  # routable again next round: the next request retries
            else:
                backend.up = True
                backend.detail = f"{member.state}; starts on the first request" if member.state == "stopped" \
                    else member.state
            return
        http = BackendHTTP(session, backend.base_url, backend.headers, self.config.health.timeout)
        # discovery: every round, unless the runtime asks for it only when it (re)appears
        discover = backend.config.models is None and (
            backend.runtime.rediscover or not backend.models or not backend.up)
        try:
            probe = await backend.runtime.probe(http, discover=discover)
            changed = self._apply(backend, probe)
            now = time.monotonic()
            if backend.up and (changed or now - backend.mtp_probed_at >= self.config.health.mtp_interval):
                backend.mtp_probed_at = now
                await self._probe_mtp(http, backend, backend.models)
        except Exception as exc:  # an adapter bug must not stop the probe loop
            log.exception("probe of backend %s failed", backend.name)
            self._apply(backend, Probe(False, f"probe failed: {type(exc).__name__}"))

    def _apply(self, backend: Backend, probe: Probe) -> bool:
        """Take in a probe; True when the backend came up, restarted or changed models."""
        if probe.up and time.monotonic() < backend.ejected_until:
            return False  # still serving its ejection
        changed = False
        if probe.up and not backend.up:
            log.info("backend %s is up", backend.name)
            changed = True
        elif not probe.up:
            backend.mark_down(probe.detail)
        backend.up = probe.up
        backend.detail = probe.detail
        if probe.version is not None and probe.version != backend.version:
            if backend.version is not None:
                log.info("backend %s now reports version %s (was %s)", backend.name, probe.version, backend.version)
            backend.version = probe.version
            backend.native = native_kinds(backend.runtime.native_apis, probe.version)
            changed = True
        if probe.models is not None and probe.models != backend.models:
            log.info("backend %s serves %s", backend.name, ", ".join(probe.models) or "no models")
            backend.models = probe.models
            changed = True
        return changed

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe every backend every ``health.interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.config.health.interval)
            try:
                await self.probe_all(session)
            except Exception:  # a bug must not end the health loop for good (backends never again up or down)
                log.exception("health probe round failed; the next one runs in %g s", self.config.health.interval)
