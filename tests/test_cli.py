"""The command line, run as users run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from mtproxy.config import load_config

ROOT = Path(__file__).resolve().parent.parent


async def run_cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def test_example_config_is_valid():
    cfg = load_config(ROOT / "config.yaml", env={})
    vllm = next(b for b in cfg.backends if b.runtime == "vllm")
    assert vllm.api_key is None  # ${VLLM_API_KEY:-} unset: no key
    assert cfg.backends[0].launch[0] == "mtproxy-llama-server"  # the embedded runtime
    cfg = load_config(ROOT / "config.yaml", env={"VLLM_API_KEY": "s3cret", "MTPROXY_LLAMA_SERVER": "/x/llama-server"})
    vllm = next(b for b in cfg.backends if b.runtime == "vllm")
    assert vllm.api_key.get_secret_value() == "s3cret"
    assert cfg.backends[0].launch[0] == "/x/llama-server"
    assert "s3cret" not in repr(cfg)
    assert {b.runtime for b in cfg.backends} >= {"llamacpp", "vllm", "sglang", "ollama", "mlx", "trtllm"}


async def test_check_accepts_the_example_config():
    code, out, err = await run_cli("check", "--config", "config.yaml")
    assert code == 0, err
    assert "ok" in out


async def test_check_names_field_paths_and_exits_1_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  - {name: a, runtime: vllm, url: http://127.0.0.1:1}\n"
                   "  - {name: b, runtime: vllm, url: 'not a url', colour: red}\n")
    code, out, err = await run_cli("check", "--config", str(bad))
    assert code == 1
    assert "backends[1].url: must be an http(s) URL" in err
    assert "backends[1].colour: unknown field" in err
    assert "Traceback" not in err


async def test_serve_with_bad_config_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: []\n")
    code, _, err = await run_cli("serve", "--config", str(bad))
    assert code == 1
    assert "backends:" in err and "Traceback" not in err


async def _serve(tmp_path: Path, backend_url: str, grace: float):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"server: {{shutdown_grace: {grace}}}\n"
                   f"backends:\n  - {{name: a, runtime: vllm, url: '{backend_url}'}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "serve", "--config", str(cfg), "--port", "0", cwd=ROOT,
        stderr=asyncio.subprocess.PIPE)
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, "mtproxy exited before listening"
        if m := re.search(r"listening on (http://\S+)", line):
            return proc, m.group(1)


@pytest.mark.parametrize("finish", [True, False])
async def test_sigterm_lets_in_flight_streams_finish_then_exits_0(tmp_path, runtime_factory, http, finish):
    gate = asyncio.Event()
    rt = await runtime_factory("a", gate=gate)
    proc, url = await _serve(tmp_path, rt.url, grace=1.0)
    try:
        resp = await http.post(url + "/v1/chat/completions", json={
            "model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        await resp.content.readuntil(b"\n\n")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        if finish:  # the stream ends within the grace period and reaches the client whole
            gate.set()
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        if not finish:  # past the grace period the stream is cut, and the process still exits 0
            await asyncio.wait_for(rt.closed_early.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_client_cannot_forge_a_log_line(tmp_path, runtime_factory, http):
    """A model name with a newline and a terminal escape is logged on one line, escaped."""
    rt = await runtime_factory("a")
    proc, url = await _serve(tmp_path, rt.url, grace=1.0)
    forged = "2026-01-01 00:00:00,000 ERROR mtproxy.proxy: backend a leaked its key"
    try:
        async with http.post(url + "/v1/chat/completions", json={
                "model": f"nope\n{forged}\x1b[2J", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 404
        lines = []
        while not any("nope" in line for line in lines):
            lines.append((await asyncio.wait_for(proc.stderr.readline(), 30)).decode())
        [line] = [line for line in lines if "nope" in line]
        assert f"nope\\n{forged}\\x1b[2J" in line, line
        assert not any(line.startswith(forged) for line in lines), lines
    finally:
        proc.terminate()
        await proc.wait()
