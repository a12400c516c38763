"""Config reload without a restart: on SIGHUP and ``POST /mtproxy/reload`` (admin key).

A valid new config applies at once: unchanged backends keep their state, requests in flight keep
the backend they started on, requests queued for a slot stay queued and look again under the new
config, and backends that left are retired when their last request ends. A changed
``responses:`` section gets a new response store (requests in flight finish with the old one,
closed after them); an unchanged one, or new limits for the memory store, keep the store and
what it holds. A changed ``ui:`` section resizes the page's ring (the newest records kept),
gives the history its new limits, or opens it at its new path (records from then on go there;
the old one gets those still pending, then is closed) or switches it off. An invalid config, or
a new store or history that cannot be opened (Redis not answering, a path that is no SQLite
file), is rejected with its error logged, and the old one stays. Listening address, body-size
limit and ``ui.enabled`` need a restart: a reload applies the rest and warns.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .config import Config, ConfigError, load_config
from .front.response_store import ResponseStore
from .front.responses import STORE
from .state import CONFIG_PATH, KEYS, POOL, PROXY, RELOADING
from .ui import UI
from .ui.history import History

log = logging.getLogger("mtproxy.reload")

_RESTART_ONLY = ("server.host", "server.port", "server.max_body_bytes", "ui.enabled")


async def reload(app: web.Application) -> tuple[bool, str]:
    """Read the config file again and apply it. One reload at a time: one posted while another
    waits (on a store or history opening) reads the file after that one is applied, so what the
    file says last is what runs, and no store or history is opened twice for one change."""
    path = app[CONFIG_PATH]
    if path is None:
        return False, "mtproxy was started without a config file; nothing to reload"
    async with app[RELOADING]:
        return await _reload(app, path)


async def _reload(app: web.Application, path: str) -> tuple[bool, str]:
    hub = app.get(UI)
    try:
        config = load_config(path)
        # opened before anything changes: a store or history that cannot be opened leaves the old
        # config whole
        store = await app[STORE].reopen(config.responses)
        try:
            history = await hub.reopen(config.ui) if hub is not None else None
        except ConfigError:
            if store is not None:
                await store.close()
            raise
    except ConfigError as exc:
        message = f"config {path} rejected, the old one stays: " + "; ".join(str(exc).splitlines())
        log.error("%s", message)
        return False, message
    return True, await apply(app, config, store, history)


async def apply(app: web.Application, config: Config, store: ResponseStore | None = None,
                history: History | None = None) -> str:
    """``store``: a new response store for ``config.responses`` (StoreSlot.reopen), or None;
    ``history``: a new page history for ``config.ui`` (Hub.reopen), or None."""
    pool, proxy = app[POOL], app[PROXY]
    old = pool.config
    await app[STORE].replace(config.responses, store)
    hub = app.get(UI)
    if hub is not None:
        await hub.replace(config.ui, history)
    pool.update(config)
    proxy.apply(config)
    app[KEYS].update(config)
    pool.start_managed(proxy.session)  # members of retired backends are stopped once idle
    await pool.probe_all(proxy.session)
    # requests queued for a full backend look again: new backends (their models discovered by
    # now) or raised caps may have room for them
    proxy.backend_waiters.wake_all()
    notes = [f"{len(config.backends)} backends"]
    if store is not None:
        notes.append("a new response store")
    if hub is not None and (old.ui.history or None) != (config.ui.history or None):
        notes.append(f"ui.history {'now ' + config.ui.history if config.ui.history else 'off'}")
    stale = [k for k in _RESTART_ONLY if _field(old, k) != _field(config, k)]
    if stale:
        notes.append(f"{', '.join(stale)} change{'s' if len(stale) == 1 else ''} only on restart")
    message = "config reloaded: " + "; ".join(notes)
    log.log(logging.WARNING if stale else logging.INFO, "%s", message)
    return message


def _field(config: Config, path: str) -> object:
    section, _, name = path.partition(".")
    return getattr(getattr(config, section), name)
