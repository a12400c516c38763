"""Model name or alias → the backends serving it → the one to use now.

For an MTP-trained model, ``routing.mtp`` orders the candidates: ``prefer`` tries backends
where MTP is active, then capable, then the rest; ``require`` takes only active ones; ``ignore``
does not look. Within a tier, a backend serving now beats one that would have to be started or
swapped in (swap.py), then the fewest outstanding requests wins; ties rotate.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .backends import Backend, BackendPool
from .errors import ModelNotFound, NoBackendAvailable

_TIER = {"active": 0, "capable": 1, "off": 2}


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

    @property
    def policy(self) -> str:
        return self.pool.config.routing.mtp

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

    def _tier(self, route: Route, backend: Backend) -> int:
        if not route.mtp_model or self.policy == "ignore":
            return 0
        status = backend.mtp.get(route.model)
        return _TIER[status.state] if status is not None else 2

    def pick(self, route: Route, tried: Collection[Backend] = ()) -> Backend:
        """The healthy, untried candidate in the best MTP tier with the fewest outstanding
        requests; ties rotate."""
        best: list[Backend] = []
        low: tuple[int, bool, int] | None = None
        require = route.mtp_model and self.policy == "require"
        busy = False
        for backend in route.candidates:
            if not backend.up or backend in tried:
                continue
            tier = self._tier(route, backend)
            if require and tier != 0:
                continue
            if backend.full:
                busy = True
                continue
            key = (tier, not backend.warm, backend.outstanding)
            if low is None or key < low:
                best, low = [backend], key
            elif key == low:
                best.append(backend)
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
