"""``GET /metrics``: rendered in a worker thread, so a scrape never stalls the proxy.

prometheus_client's exposition formats every sample anew in pure Python: ~90 ms of CPU for the
~3,000 samples a few backends and models make (a 400 kB page), and a thread rendering that holds
the GIL against the event loop in 5 ms turns (the soak saw upstream closes wait behind scrapes).
So the request families (metrics/lean.py, a registry of their own) render their own text from
cached per-series prefixes, appended to what prometheus_client renders of its registry (process,
backend state, retries), and gzip, when the scraper accepts it, is done in the same thread. The
collectors read plain Python values; what belongs to the event loop (the token window, its tasks)
is snapshot on the loop first.

With ``metrics.runtime_metrics`` the backends' own metrics (metrics/scrape.py) are read on the
loop first, within their timeout, and rendered after the request families.
"""

from __future__ import annotations

import asyncio
import gzip

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .instruments import Metrics
from .lean import LeanRegistry
from .scrape import Page, RuntimeMetrics, render_own

OPENMETRICS_EOF = b"# EOF\n"


def render(registry: CollectorRegistry, lean: LeanRegistry, openmetrics: bool, runtimes: Page | None = None) -> bytes:
    """prometheus_client's ``registry``, the ``lean`` families, then the backends' own families
    (``runtimes``), in the text format (or OpenMetrics, one ``# EOF`` at the end)."""
    if runtimes is None:
        rest = (generate_openmetrics if openmetrics else generate_latest)(registry)
        parts = [rest.removesuffix(OPENMETRICS_EOF) if openmetrics else rest, lean.text(openmetrics).encode()]
    else:
        own, theirs = render_own(registry, runtimes, openmetrics)
        parts = [own, lean.text(openmetrics).encode(), theirs]
    if openmetrics:
        parts.append(OPENMETRICS_EOF)
    return b"".join(parts)


def _page(registry: CollectorRegistry, lean: LeanRegistry, openmetrics: bool, compress: bool,
          runtimes: Page | None) -> bytes:
    body = render(registry, lean, openmetrics, runtimes)
    return gzip.compress(body, compresslevel=6, mtime=0) if compress else body


def metrics_handler(metrics: Metrics, runtimes: RuntimeMetrics):
    registry, state, lean = metrics.registry, metrics.state, metrics.lean

    async def handle(request: web.Request) -> web.Response:
        _, content_type = choose_encoder(request.headers.get("Accept", ""))
        openmetrics = content_type.startswith("application/openmetrics-text")
        compress = "gzip" in request.headers.get("Accept-Encoding", "")
        page = await runtimes.page()  # None unless metrics.runtime_metrics
        state.snapshot()
        body = await asyncio.get_running_loop().run_in_executor(
            None, _page, registry, lean, openmetrics, compress, page)
        headers = {"Content-Type": content_type, "Vary": "Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    return handle
