"""The README's screenshot of the page (docs/ui.png), taken by the browser of the tests (Debian's
chromium through Playwright): fake runtimes in this process, one of them drafting as vLLM with
MTP reports it, a minute of traffic, one backend stopped on the way (its marker on the charts).

    python -m bench.ui_screenshot [--out docs/ui.png] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random

import aiohttp

from bench.fake_runtime import Behaviour, FakeRuntime
from mtproxy.app import create_app
from mtproxy.config import Config
from mtproxy.server import start

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WORDS = [" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", "."] * 3
SPEC = {"metrics": {"speculative_decoding": {"num_draft_tokens": 24, "num_accepted_draft_tokens": 17}}}
VLLM_METRICS = "vllm:spec_decode_num_draft_tokens_total 2400\nvllm:spec_decode_num_accepted_tokens_total 1700\n"


async def main(out: str, seconds: float) -> None:
    from playwright.async_api import async_playwright

    mtp = await FakeRuntime("vllm-mtp", Behaviour(models=["qwen3-next-80b"], tokens=WORDS, token_delay=0.012,
                                                  version="0.11.0", extra=SPEC,
                                                  routes={"/metrics": VLLM_METRICS})).start()
    plain = await FakeRuntime("vllm", Behaviour(models=["qwen3-next-80b", "llama-3.1-8b"], tokens=WORDS,
                                                token_delay=0.03, version="0.11.0")).start()
    flaky = await FakeRuntime("sglang", Behaviour(models=["llama-3.1-8b"], tokens=WORDS, token_delay=0.02,
                                                  flavour="sglang", version="0.5.2")).start()
    config = Config.model_validate({
        "health": {"interval": 1.0},
        "models": {"qwen3-next-80b": {"aliases": ["qwen"]}},
        "backends": [{"name": "gpu0-mtp", "runtime": "vllm", "url": mtp.url, "mtp": True},
                     {"name": "gpu1", "runtime": "vllm", "url": plain.url},
                     {"name": "cpu-sglang", "runtime": "sglang", "url": flaky.url}]})
    app = create_app(config)
    runner, port = await start(app, "127.0.0.1", 0, shutdown_grace=1)
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            model = random.choice(["qwen3-next-80b", "qwen3-next-80b", "llama-3.1-8b"])
            body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
            await asyncio.sleep(random.uniform(0.05, 0.4))

    try:
        async with aiohttp.ClientSession() as http, async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            await page.goto(url + "/ui")
            clients = [asyncio.create_task(client(http)) for _ in range(6)]
            await asyncio.sleep(seconds * 0.6)
            await flaky.stop()  # a backend goes down: red in the table, a marker on the charts
            await asyncio.sleep(seconds * 0.4)
            await page.fill("#pg-prompt", "Name a quick animal.")
            await page.click("#pg-form button")
            await page.wait_for_selector("#pg-stats:has-text('tokens/s')")
            await page.screenshot(path=out, full_page=True)
            stop.set()
            await asyncio.gather(*clients)
            await browser.close()
    finally:
        await runner.cleanup()
        await mtp.stop()
        await plain.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ui_screenshot")
    parser.add_argument("--out", default="docs/ui.png")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.out, args.seconds))
