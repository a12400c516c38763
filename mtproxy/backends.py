"""Live backend state and the background health checks that keep it current."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp
from yarl import URL

from .config import BackendConfig, Config
from .runtimes import BackendHTTP, Probe, Runtime, runtime_for

log = logging.getLogger("mtproxy.backends")


class Backend:
    """One configured backend: its adapter and what the proxy currently knows of it."""

    __slots__ = ("config", "name", "runtime", "base_url", "headers", "up", "detail", "models",
                 "version", "outstanding")

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.runtime: Runtime = runtime_for(config.runtime)
        url = URL(config.url)
        if url.path.rstrip("/").endswith("/v1"):  # a common slip: the root is wanted
            url = url.with_path(url.path.rstrip("/")[: -len("/v1")] or "/")
        self.base_url = url
        self.headers: dict[str, str] = {}
        if config.api_key is not None:
            self.headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.up = True  # optimistic until the first probe; a refused request marks it down
        self.detail = "not probed yet"
        self.models: tuple[str, ...] = tuple(config.models or ())
        self.version: str | None = None
        self.outstanding = 0

    def url(self, path: str) -> URL:
        return self.base_url.join(URL(path))

    def mark_down(self, reason: str) -> None:
        if self.up:
            log.warning("backend %s marked down: %s", self.name, reason)
        self.up = False
        self.detail = reason

    def __repr__(self) -> str:
        return f"<Backend {self.name} up={self.up} outstanding={self.outstanding}>"


class BackendPool:
    """All backends, the model → backends index, and the health-check loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.backends = [Backend(b) for b in config.backends]
        self.aliases = {a: m for m, cfg in config.models.items() for a in cfg.aliases}
        self.by_model: dict[str, list[Backend]] = {}
        self._reindex()

    def _reindex(self) -> None:
        index: dict[str, list[Backend]] = {}
        for backend in self.backends:
            for model in backend.models:
                index.setdefault(model, []).append(backend)
        self.by_model = index

    def model_names(self) -> Iterable[str]:
        """Every model a client may ask for: served names, then configured aliases."""
        yield from self.by_model
        yield from (a for a in self.aliases if a not in self.by_model)

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._probe(session, b) for b in self.backends))
        self._reindex()

    async def _probe(self, session: aiohttp.ClientSession, backend: Backend) -> None:
        http = BackendHTTP(session, backend.base_url, backend.headers, self.config.health.timeout)
        discover = backend.config.models is None
        try:
            probe = await backend.runtime.probe(http, discover=discover)
        except Exception as exc:  # an adapter bug must not stop the health loop
            log.exception("probe of backend %s failed", backend.name)
            probe = Probe(False, f"probe failed: {type(exc).__name__}")
        self._apply(backend, probe)

    def _apply(self, backend: Backend, probe: Probe) -> None:
        if probe.up and not backend.up:
            log.info("backend %s is up", backend.name)
        elif not probe.up:
            backend.mark_down(probe.detail)
        backend.up = probe.up
        backend.detail = probe.detail
        if probe.version is not None:
            backend.version = probe.version
        if probe.models is not None and probe.models != backend.models:
            log.info("backend %s serves %s", backend.name, ", ".join(probe.models) or "no models")
            backend.models = probe.models

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe every backend every ``health.interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.config.health.interval)
            await self.probe_all(session)
