"""The floor: the least an aiohttp proxy can do. No parsing, no routing, no metrics.

    python -m bench.floor_proxy --upstream http://127.0.0.1:P [--upstream …] [--port 0]

Forwards method, path and body to the next upstream (round robin), and relays the answer's bytes
as they arrive (``iter_any``) with ``X-Accel-Buffering: no``. Prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys

import aiohttp
from aiohttp import web

if __package__ in (None, ""):  # `python bench/floor_proxy.py`
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import LOCALHOST, run_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstreams: list[str]) -> web.Application:
    turn = itertools.cycle(upstreams)

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with request.app[SESSION].request(request.method, next(turn) + request.path_qs,
                                                data=await request.read(), headers=headers) as up:
            out = web.StreamResponse(status=up.status, headers={
                "Content-Type": up.headers.get("Content-Type", "application/octet-stream"),
                "X-Accel-Buffering": "no"})
            if up.content_length is not None:
                out.content_length = up.content_length
            await out.prepare(request)
            async for chunk in up.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    async def session(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept-Encoding"), auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(host: str, port: int, upstreams: list[str]) -> None:
    runner = web.AppRunner(make_app(upstreams), access_log=None, handle_signals=False,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print("LISTENING", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description=__doc__.split("\n")[0])
    p.add_argument("--host", default=LOCALHOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", action="append", required=True, help="base URL; repeat for round robin")
    args = p.parse_args(argv)
    try:
        run_loop(serve(args.host, args.port, [u.rstrip("/") for u in args.upstream]))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
