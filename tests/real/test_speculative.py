"""Real speculative decoding on CPU: llama-server with draft-free n-gram speculation
(``--spec-type ngram-simple``) against the same server without it, on a prompt that asks the
model to repeat a paragraph, so the drafts (n-grams looked up in the context) hit.

What the proxy must show: the runtime's drafted and accepted tokens, more than one token per
decode step on the speculative backend and about one on the plain one, a decode rate; and
``mtproxy verify`` must see the drafts and judge by its own measurement. Speeds are compared only
through ``verify``, never asserted as timings.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from .conftest import MODEL, RealServer
from .helpers import backend, client, metrics, start_proxy, value

ROOT = Path(__file__).resolve().parents[2]

# ../shared/reference/transcripts/llama-server/request_repeat_paragraph.json: with speculation the
# transcript shows timings.draft_n 85, draft_n_accepted 58 for its 73 output tokens.
REPEAT = ("Repeat the following text exactly, word for word: The quick brown fox jumps over the lazy dog. "
          "The proxy forwards every request to the upstream runtime, measures the latency of each streamed "
          "chunk, and records the number of prompt and completion tokens in a structured log line. When the "
          "upstream runtime is slow, the proxy keeps the connection open and sends keep-alive comments so that "
          "the client does not time out.")
MAX_TOKENS = 100
REQUESTS = 3

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
                stream=True, stream_options={"include_usage": True})
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                if chunk.usage:
                    usage = chunk
            out.append((text, usage))
    return out


async def test_drafts_accepted_tokens_per_step_and_decode_rate(llama_server, llama_server_spec, proxy_factory):
    plain = await start_proxy(proxy_factory, backend("plain", "llamacpp", llama_server.url))
    spec = await start_proxy(proxy_factory, backend("spec", "llamacpp", llama_server_spec.url))
    plain_out = await repeat_through(plain)
    spec_out = await repeat_through(spec)

    # speculation changes the speed, not the output (temperature 0)
    assert len({text for text, _ in plain_out + spec_out}) == 1
    text, usage_chunk = spec_out[0]
    assert "quick brown fox" in text
    n = usage_chunk.usage.completion_tokens
    assert 20 < n <= MAX_TOKENS
    assert all(u.usage.completion_tokens == n for _, u in plain_out + spec_out)
    timings = usage_chunk.model_extra["timings"]  # llama-server's own figures, relayed untouched
    assert timings["draft_n"] > 0 and 0 < timings["draft_n_accepted"] <= timings["draft_n"]
    assert "draft_n" not in plain_out[0][1].model_extra["timings"]

    s = await metrics(spec)
    labels = {"backend": "spec", "model": MODEL, "stream": "true"}
    drafted = value(s, "mtproxy_spec_decode_draft_tokens_total", **labels)
    accepted = value(s, "mtproxy_spec_decode_accepted_tokens_total", **labels)
    assert drafted is not None and accepted is not None
    assert 0 < accepted <= drafted
    assert drafted >= REQUESTS * timings["draft_n"] * 0.5  # every request's drafts counted
    assert value(s, "mtproxy_completion_tokens_total", **labels) == REQUESTS * n
    per_step = value(s, "mtproxy_tokens_per_step_sum", **labels) / value(s, "mtproxy_tokens_per_step_count", **labels)
    assert per_step > 2  # accepted drafts arrive as bursts of one-token chunks
    spec_rate = value(s, "mtproxy_decode_tokens_per_second_sum", **labels)
    assert value(s, "mtproxy_decode_tokens_per_second_count", **labels) == REQUESTS and spec_rate > 0, \
        {k: v for k, v in s.items() if k[0].startswith(("mtproxy_decode", "mtproxy_tokens_per", "mtproxy_requests"))}

    p = await metrics(plain)
    labels["backend"] = "plain"
    assert not value(p, "mtproxy_spec_decode_draft_tokens_total", **labels)  # absent or 0
    assert not value(p, "mtproxy_spec_decode_accepted_tokens_total", **labels)
    assert value(p, "mtproxy_completion_tokens_total", **labels) == REQUESTS * n
    plain_per_step = value(p, "mtproxy_tokens_per_step_sum", **labels) / value(p, "mtproxy_tokens_per_step_count", **labels)
    assert 0.9 < plain_per_step < 1.5  # one token per decode step
    assert value(p, "mtproxy_decode_tokens_per_second_count", **labels) == REQUESTS
    assert value(p, "mtproxy_decode_tokens_per_second_sum", **labels) > 0
    print(f"\ntokens/step: spec {per_step:.2f}, plain {plain_per_step:.2f}; drafted {drafted:.0f}, "
          f"accepted {accepted:.0f}; decode tok/s (mean of {REQUESTS}): spec {spec_rate / REQUESTS:.1f}, "
          f"plain {value(p, 'mtproxy_decode_tokens_per_second_sum', **labels) / REQUESTS:.1f}")


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
    assert side["accepted"] > 0 and side["tokens_per_step"] > 2
    code, result = await run_verify(tmp_path, servers, "plain", None)
    assert code == 1 and result["message"].startswith("no sign of MTP"), result["message"]
    [side] = result["sides"]
    assert side["drafted"] is None and side["tokens_per_step"] < 1.5


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
    assert subject["tokens_per_step"] > 2 and reference["tokens_per_step"] < 1.5
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
