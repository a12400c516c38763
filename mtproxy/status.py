"""What the proxy knows, as plain data: the MTP support table and every backend's live state.

Served at ``GET /mtproxy/backends`` and printed by ``mtproxy runtimes``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .backends import Backend, BackendPool
from .mtp.registry import REGISTRY


def support_table() -> list[dict[str, Any]]:
    return [asdict(row) for row in REGISTRY.values()]


def backend_status(pool: BackendPool, backend: Backend) -> dict[str, Any]:
    models = []
    for model in backend.models:
        trained = pool.trained.get(model)
        status = backend.mtp.get(model)
        models.append({
            "name": model,
            "mtp_trained": trained.mtp if trained else None,
            "mtp_trained_source": trained.source if trained else "unknown",
            "mtp_trained_why": trained.why if trained else "",
            "mtp": status.state if status else None,
            "mtp_why": status.why if status else "",
            "mtp_mismatch": status.mismatch if status else False,
        })
    return {
        "name": backend.name,
        "runtime": backend.runtime.name,
        "url": str(backend.base_url),
        "up": backend.up,
        "detail": backend.detail,
        "version": backend.version,
        "outstanding": backend.outstanding,
        "mtp_configured": backend.config.mtp,
        "models": models,
        # a backend mtproxy starts and stops: stopped / starting / ready / draining / stopping
        "managed": backend.member.status() if backend.member is not None else None,
    }


def pool_status(pool: BackendPool) -> dict[str, Any]:
    groups = {}
    if pool.swapper is not None:
        for group in pool.swapper.groups.values():
            if group.config is None:
                continue
            groups[group.name] = {
                "max_running": group.config.max_running, "memory": group.config.memory,
                "members": [m.name for m in group.members],
                "running": [m.name for m in group.members if m.state != "stopped"],
                "memory_in_use": sum(m.memory for m in group.members if m.state != "stopped"),
                "queue": len(group.queue), "swaps": group.swaps}
    return {
        "routing": {"mtp": pool.config.routing.mtp},
        "groups": groups,
        "backends": [backend_status(pool, b) for b in pool.backends],
        "aliases": dict(pool.aliases),
    }
