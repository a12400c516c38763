"""What the proxy knows, as plain data: the MTP support table and every backend's live state.

Served at ``GET /mtproxy/backends`` and printed by ``mtproxy runtimes``.
"""

from __future__ import annotations

from dataclasses import asdict
from time import perf_counter
from typing import Any

from .backends import Backend, BackendPool
from .mtp.registry import REGISTRY
from .router import pays, plain_floor
from .speed import Speed


def support_table() -> list[dict[str, Any]]:
    return [asdict(row) for row in REGISTRY.values()]


def speed_status(speed: Speed | None, now: float, max_age: float, mtp_pays: bool | None) -> dict[str, Any] | None:
    """A backend's live speed estimate for one model (speed.py), as the router sees it: not
    ``fresh``, it counts as unknown; ``mtp_pays``: the router's verdict for an active MTP
    backend (router.py), else None."""
    if speed is None or not speed.count:
        return None
    return {
        "ttft_seconds": speed.ttft,
        "seconds_per_token": speed.per_token,
        "unary_seconds_per_token": speed.unary,
        "decode_tokens_per_second": speed.decode_rate,
        "tokens_per_step": speed.per_step,
        "mtp_pays": mtp_pays,
        "observations": speed.count,
        "age_seconds": round(now - speed.at, 3),
        "fresh": speed.fresh(now, max_age),
    }


def backend_status(pool: BackendPool, backend: Backend) -> dict[str, Any]:
    models = []
    now, max_age = perf_counter(), pool.config.routing.max_age_seconds
    for model in backend.models:
        trained = pool.trained.get(model)
        status = backend.mtp.get(model)
        speed = backend.speed.get(model)
        mtp_pays = None
        if status is not None and status.on:
            floor = plain_floor(pool.by_model.get(model, ()), model, now, max_age)
            mtp_pays = pays(speed, floor, now, max_age)
        models.append({
            "name": model,
            "mtp_trained": trained.mtp if trained else None,
            "mtp_trained_source": trained.source if trained else "unknown",
            "mtp_trained_why": trained.why if trained else "",
            "mtp": status.state if status else None,
            "mtp_why": status.why if status else "",
            "mtp_mismatch": status.mismatch if status else False,
            "speed": speed_status(speed, now, max_age, mtp_pays),
            "mean_output_tokens": pool.tokens.get(model),
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
        "routing": pool.config.routing.model_dump(),
        "groups": groups,
        "backends": [backend_status(pool, b) for b in pool.backends],
        "aliases": dict(pool.aliases),
    }
