"""Config reload without a restart: on SIGHUP and ``POST /mtproxy/reload`` (admin key).

A valid new config applies at once: unchanged backends keep their state, requests in flight keep
the backend they started on, requests queued for a slot stay queued and look again under the new
config, and backends that left are retired when their last request ends. A changed
``responses:`` section gets a new response store (requests in flight finish with the old one,
closed after them); an unchanged one, or new limits for the memory store, keep the store and
what it holds. An invalid config, or a new store that cannot be opened (Redis not answering), is
rejected with its error logged, and the old one stays. Listening address and body-size limit
need a restart.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .config import Config, ConfigError, load_config
from .front.response_store import ResponseStore
from .front.responses import STORE
from .state import CONFIG_PATH, KEYS, POOL, PROXY

log = logging.getLogger("mtproxy.reload")

_RESTART_ONLY = ("host", "port", "max_body_bytes")


async def reload(app: web.Application) -> tuple[bool, str]:
    path = app[CONFIG_PATH]
    if path is None:
        return False, "mtproxy was started without a config file; nothing to reload"
    try:
        config = load_config(path)
        # opened before anything changes: a store that cannot be opened leaves the old config whole
        store = await app[STORE].reopen(config.responses)
    except ConfigError as exc:
        message = f"config {path} rejected, the old one stays: " + "; ".join(str(exc).splitlines())
        log.error("%s", message)
        return False, message
    return True, await apply(app, config, store)


async def apply(app: web.Application, config: Config, store: ResponseStore | None = None) -> str:
    """``store``: a new response store for ``config.responses`` (StoreSlot.reopen), or None."""
    pool, proxy = app[POOL], app[PROXY]
    old = pool.config
    await app[STORE].replace(config.responses, store)
    pool.update(config)
    proxy.apply(config)
    app[KEYS].update(config)
    pool.start_managed(proxy.session)  # members of retired backends are stopped once idle
    await pool.probe_all(proxy.session)
    # requests queued for a full backend look again: new backends (their models discovered by
    # now) or raised caps may have room for them
    proxy.backend_waiters.wake_all()
    stale = [k for k in _RESTART_ONLY if getattr(old.server, k) != getattr(config.server, k)]
    message = f"config reloaded: {len(config.backends)} backends" + (
        "; a new response store" if store is not None else "") + (
        f"; {', '.join('server.' + k for k in stale)} change only on restart" if stale else "")
    log.info("%s", message)
    return message

