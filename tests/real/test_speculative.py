"""Real speculative decoding on CPU: llama-server with draft-free n-gram speculation
(``--spec-type ngram-simple``) against the same server without it, on a prompt that asks the
model to repeat a paragraph, so the drafts (n-grams looked up in the context) hit.

What the proxy must show, against the runtime's own figures (``timings`` of every response):
the counters exactly (prompt and completion tokens, drafted and accepted tokens), and tokens per
decode step, decode rate and TTFT within 10 %, on the speculative backend, on the plain one, and
with the steps timed from the stream when the drafts are not read (runtime ``openai``); and
``mtproxy verify`` must see the drafts and report the same tokens per step. The speeds of two
backends are compared only through ``verify``, never asserted as timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .conftest import MODEL, RealServer
from .helpers import backend, client, metrics, value

ROOT = Path(__file__).resolve().parents[2]

# tests/data/llamacpp/request_repeat_paragraph.json: with speculation the
# transcript shows timings.draft_n 85, draft_n_accepted 58 for its 73 output tokens.
REPEAT = ("Repeat the following text exactly, word for word: The quick brown fox jumps over the lazy dog. "
          "The proxy forwards every request to the upstream runtime, measures the latency of each streamed "
          "chunk, and records the number of prompt and completion tokens in a structured log line. When the "
          "upstream runtime is slow, the proxy keeps the connection open and sends keep-alive comments so that "
          "the client does not time out.")
MAX_TOKENS = 100
REQUESTS = 3
TIMED_REQUESTS = 5

# `mtproxy verify` settings, from measurements on this 2-core machine while other sessions loaded
# it (load average 3-6), llama-server with one thread each, the prompt above, max_tokens 100,
# --seconds 2 --rounds 5: tokens/s ratio speculative/plain 1.07, 1.10, 1.12 (4.87 tokens per step,
# 425 drafted / 290 accepted); plain against the same plain server 0.97, 1.03. With two threads each
# the spread was wider (1.06-1.27 and 0.89-1.15). A single run can land on the wrong side of any
# threshold on such a machine, so a verdict gets up to VERIFY_ATTEMPTS runs; what never varies
# (tokens per step, the runtime's drafted/accepted counts) is asserted on every run. A CI machine
# measured x0.96-0.98 spec/plain: there the drafts do not pay, and verify must say so.
VERIFY_SECONDS = "2"
VERIFY_ROUNDS = "5"
VERIFY_THRESHOLD = "1.06"
VERIFY_ATTEMPTS = 3


async def repeat_through(proxy, n: int = REQUESTS) -> list[tuple[str, object]]:
    out = []
    async with client(proxy) as c:
        for _ in range(n):
            stream = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": REPEAT}], max_tokens=MAX_TOKENS, temperature=0,
                stream=True, stream_options={"include_usage": True},
                # every request processes its whole prompt, so prompt_ms is the runtime's part of
                # the TTFT (a cached prompt leaves ~10 ms, less than the HTTP around it)
                extra_body={"cache_prompt": False})
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage:
                    usage = chunk
            out.append((text, usage))
    return out


def runtime_figures(out: list[tuple[str, object]]) -> dict[str, float]:
    """The runtime's own figures over the requests: counters summed, the others averaged per
    request as the proxy's histograms are (their _sum / _count)."""
    usages = [u.usage for _, u in out]
    timings = [u.model_extra["timings"] for _, u in out]  # llama-server's own, relayed untouched
    n = len(out)
    return {
        "completion": sum(u.completion_tokens for u in usages),
        "prompt": sum(u.prompt_tokens for u in usages),
        "drafted": sum(t.get("draft_n", 0) for t in timings),
        "accepted": sum(t.get("draft_n_accepted", 0) for t in timings),
        # each decode step yields one token of the model plus the drafts it accepted
        "per_step": sum(t["predicted_n"] / (t["predicted_n"] - t.get("draft_n_accepted", 0)) for t in timings) / n,
        # (predicted_n - 1) / predicted_ms: the first token comes with the prompt (server-common.h
        # n_gen_steps), as in the proxy's (output tokens - 1) / (last - first content chunk)
        "decode_rate": sum(t["predicted_per_second"] for t in timings) / n,
        "ttft": sum(t["prompt_ms"] for t in timings) / n / 1000,
        # acceptance per request that drafted: draft_n_accepted / draft_n
        "rates": [t["draft_n_accepted"] / t["draft_n"] for t in timings if t.get("draft_n")],
    }


def proxy_figures(samples: dict, backend: str) -> dict[str, float | None]:
    labels = {"backend": backend, "model": MODEL, "stream": "true"}

    def mean(name: str) -> float | None:
        count = value(samples, f"{name}_count", **labels)
        return value(samples, f"{name}_sum", **labels) / count if count else None

    return {
        "completion": value(samples, "mtproxy_completion_tokens_total", **labels),
        "prompt": value(samples, "mtproxy_prompt_tokens_total", **labels),
        "drafted": value(samples, "mtproxy_spec_decode_draft_tokens_total", **labels) or 0,
        "accepted": value(samples, "mtproxy_spec_decode_accepted_tokens_total", **labels) or 0,
        "per_step": mean("mtproxy_tokens_per_step"),
        "decode_rate": mean("mtproxy_decode_tokens_per_second"),
        "ttft": mean("mtproxy_time_to_first_token_seconds"),
        "rate_count": value(samples, "mtproxy_spec_decode_acceptance_rate_count", **labels) or 0,
        "rate_sum": value(samples, "mtproxy_spec_decode_acceptance_rate_sum", **labels) or 0,
        # llama-server reports no verification steps or positions per request: none exported
        "rounds": value(samples, "mtproxy_spec_decode_draft_rounds_total", **labels),
        "length": value(samples, "mtproxy_spec_decode_acceptance_length_count", **labels),
    }


def assert_matches_the_runtime(proxy: dict, runtime: dict, *, steps_within: float) -> None:
    """Counters exactly; tokens per step within ``steps_within`` (relative); decode rate and
    TTFT within 10 %."""
    for counter in ("completion", "prompt", "drafted", "accepted"):
        assert proxy[counter] == runtime[counter], (counter, proxy, runtime)
    # acceptance rate: one observation per request that drafted, of the runtime's own ratio
    assert proxy["rate_count"] == len(runtime["rates"]), (proxy, runtime)
    assert proxy["rate_sum"] == pytest.approx(sum(runtime["rates"]), rel=1e-12), (proxy, runtime)
    assert proxy["rounds"] is None and proxy["length"] is None, proxy
    assert proxy["per_step"] == pytest.approx(runtime["per_step"], rel=steps_within), (proxy, runtime)
    # The proxy times the same stream the runtime writes, from its first to its last content
    # chunk: the two rates differ by the time between a chunk's write and its read.
    assert proxy["decode_rate"] == pytest.approx(runtime["decode_rate"], rel=0.10), (proxy, runtime)
    # The runtime's prompt_ms ends where the first token is sampled; the proxy's TTFT adds the
    # HTTP hops, llama-server's tokenising and queueing, and the first chunk's write and read:
    # a few ms, against ~600 ms of prompt (112 tokens, one thread). Never less than prompt_ms.
    assert runtime["ttft"] < proxy["ttft"] <= runtime["ttft"] * 1.10, (proxy, runtime)


class Served:
    """``mtproxy serve`` in a process of its own (on uvloop, as deployed) with one backend."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, name: str, runtime: str, url: str) -> AsyncIterator[Served]:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML; probes only at start-up (see helpers.start_proxy)
        "backends": [backend(name, runtime, url)], "health": {"interval": 3600, "timeout": 60, "mtp_interval": 3600}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", "0",
        cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    drain = None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "mtproxy exited before listening"
            if m := re.search(r"listening on (http://\S+)", line):
                break
        drain = asyncio.ensure_future(proc.stderr.read())  # keep the pipe from filling up
        yield Served(proc, m.group(1))
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        if drain is not None:
            await drain


async def test_drafts_accepted_tokens_per_step_and_decode_rate(llama_server, llama_server_spec, tmp_path):
    """Each proxy in a process of its own, as deployed: in the test's process, the client's
    parsing of a step's chunks would hold up the proxy's next read (gaps of up to 8 ms inside a
    step were seen that way, against 12 ms between one-token steps)."""
    async with serve(tmp_path, "plain", "llamacpp", llama_server.url) as plain:
        plain_out = await repeat_through(plain)
        plain_samples = await metrics(plain)
    async with serve(tmp_path, "spec", "llamacpp", llama_server_spec.url) as spec:
        spec_out = await repeat_through(spec)
        spec_samples = await metrics(spec)
    # the same server behind the generic adapter, which does not read `timings`: steps are timed
    # (15 as the runtime counts them, or 16-17 when the proxy or llama-server's HTTP thread lost
    # its core for 5-15 ms in the middle of a step's chunks: three processes on two cores)
    async with serve(tmp_path, "timed", "openai", llama_server_spec.url) as timed:
        timed_out = await repeat_through(timed, TIMED_REQUESTS)
        timed_samples = await metrics(timed)

    # speculation changes the speed, not the output (temperature 0)
    assert len({text for text, _ in plain_out + spec_out + timed_out}) == 1
    text, usage_chunk = spec_out[0]
    assert "quick brown fox" in text
    n = usage_chunk.usage.completion_tokens
    assert 20 < n <= MAX_TOKENS
    timings = usage_chunk.model_extra["timings"]
    assert timings["draft_n"] > 0 and 0 < timings["draft_n_accepted"] <= timings["draft_n"]
    assert "draft_n" not in plain_out[0][1].model_extra["timings"]

    spec_runtime, spec_proxy = runtime_figures(spec_out), proxy_figures(spec_samples, "spec")
    assert spec_runtime["per_step"] > 2  # accepted drafts: several tokens per step
    # output tokens - accepted drafts, as the runtime counts them: exact
    assert_matches_the_runtime(spec_proxy, spec_runtime, steps_within=1e-9)

    plain_runtime, plain_proxy = runtime_figures(plain_out), proxy_figures(plain_samples, "plain")
    assert plain_runtime["per_step"] == 1 and plain_runtime["drafted"] == 0
    # timed: one chunk per step; 72 content chunks for 73 tokens, and a read late now and then
    # brings two steps at once (1.01-1.03 tokens per step measured)
    assert_matches_the_runtime(plain_proxy, plain_runtime, steps_within=0.10)

    timed_runtime, timed_proxy = runtime_figures(timed_out), proxy_figures(timed_samples, "timed")
    # the generic adapter reads usage, not timings: no draft counters; steps from the timing
    timed_runtime["drafted"] = timed_runtime["accepted"] = 0
    timed_runtime["rates"] = []
    # Timed: 20 %, not 10. Measured (mean over the requests): 4.56-4.77 tokens per step on the
    # busy VM, 4.36 (16.8 steps for the runtime's 15) with a callgrind benchmark running alongside.
    # A 5-15 ms stall in the middle of a step's chunks cannot be told from a one-token step
    # (12 ms) by timing; the runtime's drafts, where it reports them, are exact (above). The
    # old rule's 17.7 tokens per step on this stream fails either way.
    assert_matches_the_runtime(timed_proxy, timed_runtime, steps_within=0.20)

    print("\nruntime vs proxy (tokens/step, decode tok/s, TTFT s): "
          + "; ".join(f"{name}: {r['per_step']:.2f}/{p['per_step']:.2f}, {r['decode_rate']:.1f}/{p['decode_rate']:.1f}, "
                      f"{r['ttft']:.3f}/{p['ttft']:.3f}"
                      for name, r, p in (("spec", spec_runtime, spec_proxy), ("plain", plain_runtime, plain_proxy),
                                         ("timed", timed_runtime, timed_proxy))))


# --- mtproxy verify, as users run it -----------------------------------------------------------------

async def run_verify(tmp_path: Path, servers: dict[str, RealServer], subject: str, reference: str | None):
    cfg = tmp_path / "verify.yaml"
    cfg.write_text("health: {timeout: 60}\nbackends:\n" + "".join(
        f"  - {{name: {name}, runtime: llamacpp, url: '{server.url}'}}\n" for name, server in servers.items()))
    against = ["--against", reference] if reference else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "--log-level", "WARNING", "verify", "--config", str(cfg),
        "--model", MODEL, "--backend", subject, *against, "--prompt", REPEAT,
        "--max-tokens", str(MAX_TOKENS), "--seconds", VERIFY_SECONDS, "--rounds", VERIFY_ROUNDS,
        "--threshold", VERIFY_THRESHOLD, "--json",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    out, err = out.decode(), err.decode()
    assert proc.returncode in (0, 1), f"verify failed (exit {proc.returncode}): {err}"
    result = json.loads(out)
    print(f"\nverify {subject} against {reference}: exit {proc.returncode}, {result['message']}; "
          + "; ".join(f"{s['backend']}: {s['tokens_per_second']:.1f} tok/s {[round(r, 1) for r in s['rounds']]}, "
                      f"{s['tokens_per_step']:.2f} tokens/step, drafted {s['drafted']}, accepted {s['accepted']}, "
                      f"{s['requests']} requests" for s in result["sides"]))
    return proc.returncode, result


async def test_verify_alone_sees_the_drafts(llama_server, llama_server_spec, tmp_path):
    """Without a reference, verify looks for the signature itself: accepted drafts, several tokens
    per decode step. Deterministic on any machine."""
    servers = {"spec": llama_server_spec, "plain": llama_server}
    code, result = await run_verify(tmp_path, servers, "spec", None)
    assert code == 0 and result["message"].startswith("MTP active ("), result["message"]
    [side] = result["sides"]
    # the runtime's own steps: output tokens - accepted drafts (73 - 58 per request)
    assert side["accepted"] > 0 and side["tokens_per_step"] > 2
    assert side["tokens_per_step"] == pytest.approx(side["tokens"] / (side["tokens"] - side["accepted"]))
    code, result = await run_verify(tmp_path, servers, "plain", None)
    assert code == 1 and result["message"].startswith("no sign of MTP"), result["message"]
    [side] = result["sides"]
    assert side["drafted"] is None and side["tokens_per_step"] == pytest.approx(1.0, rel=0.10)  # timed


async def test_verify_compares_speculation_with_plain(llama_server, llama_server_spec, tmp_path):
    """With a reference, verify measures both sides interleaved and judges by the tokens/s ratio.
    Whether n-gram drafts pay for SmolLM2-135M on two CPU cores depends on the machine (x0.96-0.98
    in one CI run, x1.07-1.12 on a busy development machine), so the test holds verify to its own
    figures: the verdict follows the ratio and the threshold, and a miss is reported as drafting
    that does not pay, never as "not using MTP". The speed-up itself is asserted on the tiny MTP
    model (tests/real/test_tiny_mtp.py), where it is x1.8-3.1."""
    servers = {"spec": llama_server_spec, "plain": llama_server}
    code, result = await run_verify(tmp_path, servers, "spec", "plain")
    subject, reference = result["sides"]
    assert subject["tokens_per_step"] == pytest.approx(subject["tokens"] / (subject["tokens"] - subject["accepted"]))
    assert subject["tokens_per_step"] > 2 and reference["tokens_per_step"] == pytest.approx(1.0, rel=0.10)
    assert subject["drafted"] > 0 and 0 < subject["acceptance"] <= 1 and reference["drafted"] is None
    assert subject["tokens_per_second"] > 0 and reference["tokens_per_second"] > 0
    ratio = subject["tokens_per_second"] / reference["tokens_per_second"]
    assert abs(result["ratio"] - ratio) < 1e-6
    assert (code == 0) == result["verified"] == (ratio >= float(VERIFY_THRESHOLD)), result
    if code == 0:
        assert result["message"].startswith(f"MTP active (×{ratio:.2f}"), result["message"]
    else:
        assert "drafts are accepted but do not pay on this hardware" in result["message"], result["message"]


async def test_verify_finds_no_speed_up_between_two_plain_backends(llama_server, tmp_path):
    # two backend entries for the same plain server: the same speed by construction
    servers = {"plain": llama_server, "plain-again": llama_server}
    runs = []
    for _ in range(VERIFY_ATTEMPTS):
        code, result = await run_verify(tmp_path, servers, "plain-again", "plain")
        subject, reference = result["sides"]
        assert subject["tokens_per_step"] < 1.5 and subject["drafted"] is None
        runs.append(f"exit {code}: {result['message']}")
        if code == 1:
            break
    assert code == 1, "a speed-up found between a server and itself in every run: " + " | ".join(runs)
    assert "no material speed-up" in result["message"]
