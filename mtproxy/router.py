"""Model name or alias → the backends serving it → the one to use now.

For an MTP-trained model, ``routing.mtp`` orders the candidates in tiers: ``prefer`` tries
backends where MTP is active and pays, then capable ones (and active ones where it is measured
not to pay), then the rest; ``require`` takes only active ones; ``ignore`` does not look.
MTP *pays* on a backend unless its fresh speed estimate (speed.py) shows otherwise: its tokens
per step is at most ``PAYS_TOKENS_PER_STEP`` (1.05: it drafts nothing that is accepted), or its
decode rate (streams) is below ``PAYS_RATE_SHARE`` (0.9) of the fastest fresh decode rate among
the candidates without MTP active. Unmeasured or stale, it is given the benefit of the doubt
(and so the traffic that measures it).

Within a tier, a backend serving now beats one that would have to be started or swapped in
(swap.py); then ``routing.balance`` decides:
- ``least_outstanding``: the fewest outstanding requests; ties rotate;
- ``fastest``: the lowest expected time to finish this request, from the backend's measured
  speed for the model, weighed by the work it already has:
  ``(TTFT + expected tokens × seconds per token) × (outstanding + 1)``, expected tokens being the
  request's ``max_tokens`` or else the model's mean. A backend without a fresh estimate (none
  yet, or older than ``routing.max_age_seconds``) gets a probe: one real request when it has none
  outstanding, at most once per ``max_age_seconds``, whatever its tier (a stopped member of a
  swap group is not started for it); so a backend that answered slowly once, and was left
  alone since, is measured again and wins its traffic back once it is fast. Otherwise it ranks
  after every measured one (by outstanding requests among themselves).
Each pick is one pass over the candidates (two for an MTP-trained model under ``prefer``) and
allocates nothing beyond its sort key and the list of ties.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from time import perf_counter

from .backends import Backend, BackendPool
from .config import Config
from .errors import ModelNotFound, NoBackendAvailable
from .speed import PAYS_RATE_SHARE, PAYS_TOKENS_PER_STEP, Speed

_TIER = {"active": 0, "capable": 1, "off": 2}
_UNKNOWN = float("inf")  # the cost of a backend without a fresh estimate, not probed now


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the served model name, sent upstream
    candidates: tuple[Backend, ...]
    mtp_model: bool  # the model is MTP-trained


class Busy(Exception):
    """Internal: every healthy candidate is at its `max_concurrent`."""


class Router:
    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self._turn = 0
        # routes by requested name, for the pool's index they were made from (a reload or a
        # rediscovery makes a new one)
        self._index: dict[str, list[Backend]] | None = None
        self._routes: dict[str, Route] = {}
        # routing settings, for the pool's config they were read from (a reload makes a new one)
        self._config: Config | None = None
        self._routing = pool.config.routing
        self._fastest = False
        self._tiers = False  # routing.mtp is not `ignore`

    def resolve(self, requested: str) -> Route:
        pool = self.pool
        if self._index is not pool.by_model:
            self._index, self._routes = pool.by_model, {}
        route = self._routes.get(requested)
        if route is None:  # a name no backend serves raises: only served names are kept
            route = self._routes[requested] = self._route(requested)
        return route

    def _route(self, requested: str) -> Route:
        model = self.pool.aliases.get(requested, requested)
        candidates = self.pool.by_model.get(model)
        if not candidates:
            raise ModelNotFound(f"The model `{requested}` does not exist or no backend serves it.",
                                param="model")
        trained = self.pool.trained.get(model)
        return Route(model, tuple(candidates), bool(trained and trained.mtp))

    @staticmethod
    def _tier(route: Route, backend: Backend, policy: str, floor: float, now: float, max_age: float) -> int:
        """The candidate's MTP tier (for an MTP-trained model under ``prefer`` or ``require``)."""
        status = backend.mtp.get(route.model)
        if status is None:
            return 2
        tier = _TIER[status.state]
        if tier == 0 and policy == "prefer" and not pays(backend.speed.get(route.model), floor, now, max_age):
            return 1
        return tier

    def pick(self, route: Route, tried: Collection[Backend] = (), tokens: int = 0) -> Backend:
        """The healthy, untried candidate in the best MTP tier, warm first, then by
        ``routing.balance``; ``tokens``: the output tokens the request asks for (0: unknown)."""
        config = self.pool.config
        if config is not self._config:
            self._config, self._routing = config, config.routing
            self._fastest = config.routing.balance == "fastest"
            self._tiers = config.routing.mtp != "ignore"
        if self._fastest or (route.mtp_model and self._tiers):
            return self._ranked(route, tried, tokens)
        # least outstanding without MTP tiers (the usual case): warm first, nothing else read
        best: list[Backend] = []
        low: tuple[bool, int] | None = None
        busy = False
        for backend in route.candidates:
            if not backend.up or backend in tried:
                continue
            if backend.full:
                busy = True
                continue
            member = backend.member  # Backend.warm, read without a property call per candidate
            key = (member is not None and member.state != "ready", backend.outstanding)
            if low is None or key < low:
                best, low = [backend], key
            elif key == low:
                best.append(backend)
        if not best:
            if busy:
                raise Busy()
            raise NoBackendAvailable(self._why_none(route, tried, False))
        self._turn += 1
        return best[self._turn % len(best)]

    def _ranked(self, route: Route, tried: Collection[Backend], tokens: int) -> Backend:
        """:meth:`pick` for an MTP-trained model under ``prefer`` or ``require`` (tiers), or
        under ``balance: fastest`` (by expected time, probing an unmeasured candidate)."""
        routing = self._routing
        fastest = self._fastest
        tiered = route.mtp_model and self._tiers
        policy, max_age = routing.mtp, routing.max_age_seconds
        now = perf_counter()
        floor = plain_floor(route.candidates, route.model, now, max_age) if tiered and policy == "prefer" \
            else _UNKNOWN
        require = tiered and policy == "require"
        model = route.model
        expected = (tokens or self.pool.tokens.get(model, 1.0)) if fastest else 0.0
        best: list[Backend] = []
        low: tuple[int, bool, float, int] | None = None
        probe: Backend | None = None
        busy = False
        for backend in route.candidates:
            if not backend.up or backend in tried:
                continue
            tier = self._tier(route, backend, policy, floor, now, max_age) if tiered else 0
            if require and tier != 0:
                continue
            if backend.full:
                busy = True
                continue
            warm = backend.warm
            outstanding = backend.outstanding
            cost = 0.0  # least outstanding: by tier, warmth and outstanding requests alone
            if fastest:
                speed = backend.speed.get(model)
                if speed is not None and speed.count and now - speed.at <= max_age:  # fresh
                    cost = speed.seconds(expected) * (outstanding + 1)
                else:
                    cost = _UNKNOWN
                    if probe is None and warm and not outstanding and (speed is None or now - speed.probed > max_age):
                        probe = backend
            key = (tier, not warm, cost, outstanding)
            if low is None or key < low:
                best, low = [backend], key
            elif key == low:
                best.append(backend)
        if probe is not None:
            speed = probe.speed.get(model)
            if speed is None:
                speed = probe.speed[model] = Speed()
            speed.probed = now
            return probe
        if not best:
            if busy:
                raise Busy()
            raise NoBackendAvailable(self._why_none(route, tried, require))
        self._turn += 1
        return best[self._turn % len(best)]

    def _why_none(self, route: Route, tried: Collection[Backend], require: bool) -> str:
        reasons = []
        for b in route.candidates:
            if b in tried:
                reasons.append(f"{b.name}: tried")
            elif not b.up:
                reasons.append(f"{b.name}: down ({b.detail})")
            else:
                status = b.mtp.get(route.model)
                reasons.append(f"{b.name}: MTP {status.state} ({status.why})" if status else f"{b.name}: MTP unknown")
        if require:
            return (f"routing.mtp is `require` and no backend runs MTP for `{route.model}` now: "
                    + "; ".join(reasons) + ".")
        return f"No healthy backend for model `{route.model}` ({'; '.join(reasons)})."

    @staticmethod
    def mtp_on(route: Route, backend: Backend) -> bool:
        """Whether ``backend`` runs MTP for the route's model."""
        return route.mtp_model and backend.mtp_on(route.model)


def plain_floor(candidates: Iterable[Backend], model: str, now: float, max_age: float) -> float:
    """The lowest fresh seconds per token for ``model`` among ``candidates`` without MTP active:
    the decode rate an MTP backend must not fall below to pay (infinite: none measured)."""
    low = _UNKNOWN
    for backend in candidates:
        status = backend.mtp.get(model)
        if not backend.up or (status is not None and status.on):
            continue
        speed = backend.speed.get(model)
        if speed is not None and speed.per_token is not None and speed.fresh(now, max_age) \
                and speed.per_token < low:
            low = speed.per_token
    return low


def pays(speed: Speed | None, floor: float, now: float, max_age: float) -> bool:
    """Whether MTP pays on a backend, by its speed estimate for the model (see the module's
    docstring); ``floor``: :func:`plain_floor`."""
    if speed is None or not speed.fresh(now, max_age):
        return True
    per_step, per_token = speed.per_step, speed.per_token
    if per_step is not None and per_step <= PAYS_TOKENS_PER_STEP:
        return False
    return per_token is None or per_token * PAYS_RATE_SHARE <= floor
