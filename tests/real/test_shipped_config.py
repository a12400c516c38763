"""The default that serves: `mtproxy serve` with the shipped config.yaml launches SmolLM2-135M under
a managed llama-server, answers through it, and shows numbers on /metrics; the other runtimes of
the file are marked down. On exit the llama-server goes too."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from .conftest import llama_server_path, missing, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]


async def test_the_shipped_config_serves_tokens_and_metrics() -> None:
    binary, gguf = llama_server_path(), smollm2_gguf()
    if not binary.exists() or gguf is None or not gguf.exists():
        missing(f"llama-server at {binary} and the SmolLM2 GGUF")
    env = {**os.environ, "MTPROXY_LLAMA_SERVER": str(binary), "MTPROXY_SMOLLM2_GGUF": str(gguf)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "serve", "--config", "config.yaml", "--port", "0", cwd=ROOT, env=env,
        stderr=asyncio.subprocess.PIPE)
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "mtproxy exited before listening"
            if m := re.search(r"listening on (http://\S+)", line):
                url = m.group(1)
                break
        drain = asyncio.ensure_future(proc.stderr.read())  # keep the pipe from filling up
        async with aiohttp.ClientSession() as http:
            body = {"model": "smollm2", "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hello."}]}
            async with http.post(url + "/v1/chat/completions", json=body,
                                 timeout=aiohttp.ClientTimeout(total=240)) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["x-mtproxy-backend"] == "smollm2"
                answer = await resp.json()
            assert answer["choices"][0]["message"]["content"]
            async with http.get(url + "/metrics") as resp:
                metrics = await resp.text()
            assert re.search(r'mtproxy_completion_tokens_total\{[^}]*backend="smollm2"[^}]*\} [1-9]', metrics)
            async with http.get(url + "/mtproxy/backends") as resp:
                backends = {b["name"]: b for b in (await resp.json())["backends"]}
            assert backends["smollm2"]["up"] and backends["smollm2"]["version"]
            assert not backends["vllm"]["up"] and not backends["ollama"]["up"]  # nothing listens there
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        drain.cancel()
        # the managed llama-server left with mtproxy: nothing listens on its port any more
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get("http://127.0.0.1:8081/health", timeout=aiohttp.ClientTimeout(total=5)):
                    alive = True
            except aiohttp.ClientError:
                alive = False
        assert not alive
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
