"""The default that serves: `mtproxy serve` with the shipped config.yaml launches SmolLM2-135M under
a managed llama.cpp server, answers through it, and shows numbers on /metrics; the other runtimes
of the file are marked down. On exit the server goes too. Twice: as shipped (no
MTPROXY_LLAMA_SERVER: the embedded runtime, found beside this Python though its directory is not
on PATH) and with MTPROXY_LLAMA_SERVER naming the built llama-server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import embedded_argv, llama_server_path, missing, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("program", ["embedded", "llama-server"])
async def test_the_shipped_config_serves_tokens_and_metrics(program: str) -> None:
    binary, gguf = llama_server_path(), smollm2_gguf()
    if gguf is None or not gguf.exists():
        missing("the SmolLM2 GGUF")
    env = {**os.environ, "MTPROXY_SMOLLM2_GGUF": str(gguf)}
    env.pop("MTPROXY_LLAMA_SERVER", None)
    if program == "embedded":
        embedded_argv()  # skips when xllamacpp is not installed
        bindir = str(Path(sys.executable).parent)  # as when .venv/bin/mtproxy runs unactivated
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if p and Path(p).resolve() != Path(bindir).resolve()
                                      and not (Path(p) / "llama-server").exists())
    else:
        if not binary.exists():
            missing(f"llama-server at {binary}")
        env["MTPROXY_LLAMA_SERVER"] = str(binary)
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
            if program == "embedded":
                assert "xllamacpp" in backends["smollm2"]["version"], backends["smollm2"]
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
