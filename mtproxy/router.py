"""Model name or alias → the backends serving it → the one to use now."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .backends import Backend, BackendPool
from .errors import ModelNotFound, NoBackendAvailable


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the served model name, sent upstream
    candidates: tuple[Backend, ...]
    mtp_model: bool  # the model is MTP-trained (per config, until detection fills it in)


class Router:
    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self._turn = 0

    def resolve(self, requested: str) -> Route:
        model = self.pool.aliases.get(requested, requested)
        candidates = self.pool.by_model.get(model)
        if not candidates:
            raise ModelNotFound(f"The model `{requested}` does not exist or no backend serves it.",
                                param="model")
        cfg = self.pool.config.models.get(model)
        return Route(model, tuple(candidates), bool(cfg and cfg.mtp))

    def pick(self, route: Route, tried: Collection[Backend] = ()) -> Backend:
        """The healthy, untried candidate with the fewest outstanding requests; ties rotate."""
        best: list[Backend] = []
        low = None
        for backend in route.candidates:
            if not backend.up or backend in tried:
                continue
            if low is None or backend.outstanding < low:
                best, low = [backend], backend.outstanding
            elif backend.outstanding == low:
                best.append(backend)
        if not best:
            why = "; ".join(f"{b.name}: {'tried' if b in tried else b.detail}" for b in route.candidates)
            raise NoBackendAvailable(f"No healthy backend for model `{route.model}` ({why}).")
        self._turn += 1
        return best[self._turn % len(best)]

    @staticmethod
    def mtp_on(route: Route, backend: Backend) -> bool:
        """Whether ``backend`` runs MTP for the route's model (config intent for now)."""
        return route.mtp_model and bool(backend.config.mtp)
