"""The page in a real headless Chromium (Debian's ``chromium``, scripts/install-deb.sh, `make chromium`),
driven by Playwright's Python API; the proxy and fake runtimes run in this test's event loop on
127.0.0.1. Without chromium or playwright the tests skip, saying so; with
MTPROXY_REQUIRE_CHROMIUM=1 (set by ``make test``) they fail instead."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mtproxy.app import create_app
from mtproxy.server import start
from tests.conftest import make_config
from tests.promtext import scrape, value

CHROMIUM = os.environ.get("MTPROXY_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<img src=x onerror=alert(1)>"
WAIT = 30_000  # ms: generous, for a busy 2-core machine (no timed assertion: only a bound)


def _missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} missing (make chromium, or set MTPROXY_CHROMIUM)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("MTPROXY_REQUIRE_CHROMIUM") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


class Page:
    """A page with every console error, uncaught exception and dialog recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        async def dismiss(d: Any) -> None:
            self.dialogs.append(d.message)
            await d.dismiss()

        page.on("dialog", dismiss)


async def open_page(browser: Any, url: str) -> Page:
    page = Page(await browser.new_page(viewport={"width": 1400, "height": 1000}))
    await page.page.goto(url + "/ui")
    return page


async def until_js(p: Any, predicate: str) -> None:
    """Poll ``predicate`` (a JavaScript function) until it holds: ``wait_for_function`` evaluates
    a string, which the page's Content-Security-Policy refuses (no 'unsafe-eval'), rightly."""
    deadline = asyncio.get_running_loop().time() + WAIT / 1000
    while not await p.evaluate(predicate):
        assert asyncio.get_running_loop().time() < deadline, f"not reached in time: {predicate}"
        await asyncio.sleep(0.1)


async def stream(http: aiohttp.ClientSession, url: str, model: str = "m1") -> None:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        await resp.read()


async def test_page_loads_updates_live_and_agrees_with_metrics(browser, runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", models=["m1"], token_delay=0.01)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": a.url}]))
    page = await open_page(browser, proxy.url)
    p = page.page
    await p.wait_for_selector("#conn.on", timeout=WAIT)
    await stream(http, proxy.url)  # one streamed request: the page and /metrics say the same
    await p.wait_for_selector("#activity tbody tr", timeout=WAIT)
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    assert value(samples, "mtproxy_time_to_first_token_seconds_count") == 1
    ttft = value(samples, "mtproxy_time_to_first_token_seconds_sum")
    decode = value(samples, "mtproxy_decode_tokens_per_second_sum")
    row = p.locator("#activity tbody tr").first
    assert await row.locator("td.ttft").inner_text() == f"{ttft * 1000:.1f}"
    assert await row.locator("td.decode").inner_text() == f"{decode:.1f}"

    # traffic flows: the table grows and the tokens/s chart gets points above zero
    done = asyncio.Event()

    async def traffic() -> None:
        while not done.is_set():
            await asyncio.gather(*(stream(http, proxy.url) for _ in range(4)))

    task = asyncio.create_task(traffic())
    try:
        await until_js(p, "() => document.querySelectorAll('#activity tbody tr').length >= 20")
        await until_js(p, "() => Number(document.getElementById('chart-tps').dataset.last || 0) > 0")
        await until_js(p, "() => Number(document.querySelector('tr[data-backend=a] td.tps').textContent) > 0")
    finally:
        done.set()
        await task
    assert page.errors == []


async def test_a_backend_that_goes_down_turns_red(browser, runtime_factory, proxy_factory):
    a = await runtime_factory("a", models=["m1"])
    b = await runtime_factory("b", models=["m1"])
    config = make_config([{"name": "a", "runtime": "vllm", "url": a.url}, {"name": "b", "runtime": "vllm", "url": b.url}],
                         health={"interval": 0.5, "timeout": 1})
    proxy = await proxy_factory(config)
    page = await open_page(browser, proxy.url)
    await page.page.wait_for_selector("tr[data-backend=b].up", timeout=WAIT)
    await b.stop()
    await page.page.wait_for_selector("tr[data-backend=b].down", timeout=WAIT)
    colour = await page.page.eval_on_selector("tr[data-backend=b] .dot", "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(220, 38, 38)"  # red
    assert await page.page.locator("tr[data-backend=a].up").count() == 1
    assert page.errors == []


async def test_a_hostile_model_name_is_shown_as_text(browser, runtime_factory, proxy_factory, http):
    a = await runtime_factory("a", models=[HOSTILE])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": a.url}]))
    page = await open_page(browser, proxy.url)
    await page.page.wait_for_selector("#conn.on", timeout=WAIT)
    await stream(http, proxy.url, HOSTILE)
    await page.page.wait_for_selector("#activity tbody tr", timeout=WAIT)
    assert await page.page.locator("#models tbody td").first.inner_text() == HOSTILE
    assert await page.page.locator("#activity tbody td").nth(2).inner_text() == HOSTILE
    assert await page.page.locator("img").count() == 0
    await page.page.wait_for_timeout(300)  # an onerror would have fired by now
    assert page.dialogs == [] and page.errors == []


async def test_actions_work_only_with_the_admin_key(browser, runtime_factory, tmp_path, http):
    a = await runtime_factory("a", models=["m1"], token_delay=0.002)
    text = f"server: {{admin_keys: [adm-key], api_keys: [client-key]}}\nbackends: [{{name: a, runtime: vllm, url: '{a.url}'}}]\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    from mtproxy.config import load_config

    app = create_app(load_config(path), config_path=str(path))
    runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=1)
    url = f"http://127.0.0.1:{port}"
    try:
        page = await open_page(browser, url)
        p = page.page
        await p.wait_for_selector("#login-form", state="visible", timeout=WAIT)
        assert await p.locator("#main").is_hidden()
        await p.fill("#login-key", "wrong")
        await p.click("#login-form button")
        await p.wait_for_selector("#login-error:has-text('Incorrect')", timeout=WAIT)
        page.errors.clear()  # the browser logs the 401 of the wrong key
        await p.fill("#login-key", "client-key")  # a viewer: sees, cannot act
        await p.click("#login-form button")
        await p.wait_for_selector("#conn.on", timeout=WAIT)
        assert await p.locator("#reload").is_disabled()
        status = await p.evaluate("""async () => (await fetch('/mtproxy/reload', {method: 'POST'})).status""")
        assert status == 403  # the cookie alone (no CSRF token, no admin session) does nothing
        page.errors.clear()  # the browser logs that 403
        # the playground streams through the proxy's own API with the session
        await p.fill("#pg-prompt", "hello")
        await p.click("#pg-form button")
        await p.wait_for_selector("#pg-stats:has-text('tokens/s')", timeout=WAIT)
        assert await p.locator("#pg-output").inner_text() == "Hello world"
        assert await p.locator("#pg-timing span").count() == 4

        await p.click("#logout")
        await p.wait_for_selector("#login-form", state="visible", timeout=WAIT)
        await p.fill("#login-key", "adm-key")
        await p.click("#login-form button")
        await p.wait_for_selector("#reload:enabled", timeout=WAIT)
        path.write_text(text.replace("backends:", "metrics: {window_seconds: 4}\nbackends:"))
        await p.click("#reload")
        await p.wait_for_selector("#action-result:has-text('config reloaded')", timeout=WAIT)
        await p.select_option("#verify-model", "m1")
        await p.click("#verify-form button")
        await p.wait_for_selector("#verify-verdict[data-state=not_verified]", timeout=60_000)
        assert await p.locator("#verify-progress li").count() == 2
        assert "no sign of MTP" in await p.locator("#verify-verdict").inner_text()
        assert page.errors == []
        # without the page: the key is still the way in, and no key gets nothing
        async with http.post(url + "/mtproxy/reload") as resp:
            assert resp.status == 401
    finally:
        await runner.cleanup()
