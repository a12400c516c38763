"""The page's routes: the shell and its files, login, the event stream, exports, verify.

``GET /ui`` (and ``/ui/static/*``): the page, from the package's files, under a strict
Content-Security-Policy; ``GET /ui/session``, ``POST /ui/login``, ``POST /ui/logout``: the login
cookie (middleware/session.py); ``GET /mtproxy/events``: the one SSE stream (hub.py);
``GET /mtproxy/requests?format=jsonl|csv|json``: the activity, exported; ``POST /mtproxy/verify``
(admin): a ``verify`` run whose progress and verdict go out over the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest, ProxyError
from ..middleware.session import COOKIE, LIFETIME
from ..state import KEYS, METRICS, POOL, PROXY
from ..verify import DEFAULT_PROMPT, VerifyError, verify
from . import activity
from .hub import KEEPALIVE, WRITE_TIMEOUT, Hub

log = logging.getLogger("mtproxy.ui")

UI = web.AppKey("ui", Hub)
STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
MAX_EXPORT = 1_000_000


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def static(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    try:
        path = (STATIC / name).resolve()
        found = path.is_relative_to(STATIC) and path.is_file()  # never outside static/
    except (OSError, ValueError):  # a NUL byte in the name, or one too long
        found = False
    if not found:
        raise ProxyError("No such file.", status=404, type_="invalid_request_error", code="not_found")
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def _session_info(request: web.Request) -> dict[str, Any]:
    keys = request.app[KEYS]
    session = keys.sessions.get(request.cookies.get(COOKIE))
    return {"login_required": keys.login_required, "logged_in": session is not None,
            "admin": session.admin if session is not None else False,
            "admin_enabled": bool(keys.admin), "csrf": session.csrf if session is not None else None}


async def session(request: web.Request) -> web.Response:
    return web.json_response(_session_info(request), headers={"Cache-Control": "no-store"})


def _same_origin(request: web.Request) -> None:
    """A login or logout must come from the page itself (a cross-site form cannot log anyone in)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise ProxyError("Cross-origin login refused.", status=403, type_="permission_error", code="bad_origin")


async def login(request: web.Request) -> web.Response:
    _same_origin(request)
    keys = request.app[KEYS]
    if not keys.login_required:
        raise InvalidRequest("No keys are configured: the page is open without a login.", code="no_keys")
    try:
        body = orjson.loads(await request.read())
        key = body["key"] if isinstance(body, dict) else None
    except (ValueError, KeyError):
        key = None
    if not isinstance(key, str) or not key:
        raise InvalidRequest('Send {"key": "<an admin or client key>"}.', code="missing_key")
    token, sess = keys.login(key)
    log.info("page login (%s session) from %s", "admin" if sess.admin else "client", request.remote)
    resp = web.json_response({"logged_in": True, "admin": sess.admin, "csrf": sess.csrf})
    resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/", max_age=int(LIFETIME),
                    secure=request.secure)
    return resp


async def logout(request: web.Request) -> web.Response:
    _same_origin(request)
    request.app[KEYS].sessions.drop(request.cookies.get(COOKIE))
    resp = web.json_response({"logged_in": False})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def events(request: web.Request) -> web.StreamResponse:
    """The one live stream: ``hello`` (everything at once), then ``requests``, ``overview``,
    ``series`` and ``verify`` events as they happen; a viewer that falls behind is dropped."""
    hub = request.app[UI]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    if request.method == "HEAD":  # its headers only: nothing to watch
        return resp
    viewer = hub.join()
    try:
        await resp.write(hub.hello())
        while not viewer.dropped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(viewer.wake.wait(), KEEPALIVE)
            data = viewer.take() or b": keep-alive\n\n"
            if viewer.dropped:
                break
            await asyncio.wait_for(resp.write(data), WRITE_TIMEOUT)
    except TimeoutError:
        viewer.dropped = True
    except ConnectionResetError:
        pass
    finally:
        hub.leave(viewer)
    return resp


async def requests(request: web.Request) -> web.StreamResponse:
    """The activity, newest last: the history when there is one, else the ring."""
    hub = request.app[UI]
    query = request.query
    kind = query.get("format", "jsonl")
    if kind not in ("jsonl", "csv", "json"):
        raise InvalidRequest("format must be jsonl, csv or json.", param="format")
    try:
        limit = int(query.get("limit", MAX_EXPORT))
    except ValueError:
        raise InvalidRequest("limit must be an integer.", param="limit") from None
    limit = max(0, min(limit, MAX_EXPORT))
    wanted = activity.filters(query)
    await hub.flush()  # what is not written yet belongs to the export too
    history = hub.history  # (read again: a reload may have moved it or switched it off meanwhile)
    if history is not None:
        records = await hub.in_thread(history.query, wanted, limit)
    else:
        records = [r for r in hub.latest(len(hub.ring)) if activity.matches(r, wanted)][-limit:] if limit else []
    if kind == "json":
        return web.json_response([activity.as_dict(r) for r in records])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    content_type, chunks = (("application/x-ndjson", activity.jsonl(records)) if kind == "jsonl"
                            else ("text/csv; charset=utf-8", activity.csv_rows(records)))
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-store",
                                       "Content-Disposition": f'attachment; filename="mtproxy-requests-{stamp}.{kind}"'})
    await resp.prepare(request)
    if request.method != "HEAD":  # (aiohttp would send a HEAD response the body written to it)
        for chunk in chunks:
            await resp.write(chunk)
    await resp.write_eof()
    return resp


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidRequest(f"{key} must be a number from {lo:g} to {hi:g}.", param=key)
    return float(value)


async def start_verify(request: web.Request) -> web.Response:
    """Start a ``verify`` run (one at a time); its rounds and verdict go out as ``verify`` events
    and are kept for ``GET /mtproxy/verify``."""
    hub = request.app[UI]
    try:
        body = orjson.loads(await request.read())
    except ValueError:
        body = None
    # checked once the body is in, with no wait from here until the run is set: two requests
    # whose bodies came in together both passed a check made before reading them, and both ran
    if hub.verify is not None and hub.verify.get("state") == "running":
        raise ProxyError("A verify run is in progress already.", status=409, type_="invalid_request_error",
                         code="verify_running")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest('Send {"model": "<model>", "backend"?: "<name>", "against"?: "<name>"}.', param="model")
    for key in ("backend", "against"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidRequest(f"{key} must be a backend's name.", param=key)
    seconds = _number(body, "seconds", 2.0, 0.2, 60.0)
    rounds = int(_number(body, "rounds", 2, 1, 10))
    max_tokens = int(_number(body, "max_tokens", 64, 1, 4096))
    state: dict[str, Any] = {"state": "running", "model": body["model"], "backend": body.get("backend"),
                             "against": body.get("against"), "rounds": rounds, "progress": [], "started": time.time()}
    hub.verify = state

    def progress(step: dict[str, Any]) -> None:
        state["progress"].append(step)
        hub.publish("verify", state)

    async def run() -> None:
        try:
            outcome = await verify(request.app[POOL].config, model=body["model"], backend=body.get("backend"),
                                   against=body.get("against"), baseline=None, seconds=seconds, rounds=rounds,
                                   prompt=DEFAULT_PROMPT, max_tokens=max_tokens, threshold=1.15, progress=progress)
            state.update(state="verified" if outcome.verified else "not_verified", outcome=outcome.as_dict())
        except VerifyError as exc:
            state.update(state="error", error=str(exc))
        except Exception as exc:  # reported on the page, never a crash of the proxy
            log.exception("verify run failed")
            state.update(state="error", error=f"verify failed: {type(exc).__name__}")
        state["finished"] = time.time()
        hub.publish("verify", state)

    hub.publish("verify", state)
    hub.track(asyncio.create_task(run(), name="mtproxy-ui-verify"))
    log.info("admin: verify %s started", body["model"])
    return web.json_response(state, status=202)


async def verify_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[UI].verify or {"state": "none"})


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    hub = app[UI]
    await hub.start()
    app[PROXY].observer = hub.record
    sampler = asyncio.create_task(hub.run(), name="mtproxy-ui-sampler")
    try:
        yield
    finally:
        app[PROXY].observer = None
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await hub.stop()


def _proxy_state(app: web.Application) -> dict[str, Any]:
    proxy = app.get(PROXY)
    if proxy is None:
        return {}
    return {"in_flight": proxy.in_flight, "queued": len(proxy.gate.waiters) + len(proxy.backend_waiters)}


def setup(app: web.Application) -> None:
    """The page's routes and its hub (owned by the app's cleanup_ctx, after the client session)."""
    config = app[POOL].config
    if not config.ui.enabled:
        return
    app[UI] = Hub(config.ui, app[POOL], app[METRICS], lambda: _proxy_state(app))
    app.cleanup_ctx.append(_lifetime)
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/static/{name:.+}", static)
    app.router.add_get("/ui/session", session)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/mtproxy/events", events)
    app.router.add_get("/mtproxy/requests", requests)
    app.router.add_post("/mtproxy/verify", start_verify)
    app.router.add_get("/mtproxy/verify", verify_state)

