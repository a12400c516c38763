"""`mtproxy verify` as users run it (a real process) against paced fake runtimes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from mtproxy.verify import Side, judge

ROOT = Path(__file__).resolve().parent.parent
TOKENS = [f"w{i} " for i in range(32)]


async def run_verify(tmp_path: Path, backends: list[tuple[str, str]], *args: str) -> tuple[int, str, str]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("backends:\n" + "".join(
        f"  - {{name: {name}, runtime: llamacpp, url: '{url}'}}\n" for name, url in backends))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "--log-level", "WARNING", "verify", "--config", str(cfg),
        "--model", "glm-4.5-air", "--seconds", "0.6", "--rounds", "2", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def fakes(runtime_factory):
    # MTP on: two tokens per decode step at the same step rate, and the runtime's draft counts
    mtp = await runtime_factory("mtp", models=["glm-4.5-air"], tokens=TOKENS, rate=160.0, burst=2,
                                extra={"timings": {"draft_n": 20, "draft_n_accepted": 16}})
    plain = await runtime_factory("plain", models=["glm-4.5-air"], tokens=TOKENS, rate=80.0)
    plain2 = await runtime_factory("plain2", models=["glm-4.5-air"], tokens=TOKENS, rate=80.0)
    return mtp, plain, plain2


async def test_verify_against_another_backend(runtime_factory, tmp_path):
    mtp, plain, plain2 = await fakes(runtime_factory)
    backends = [("mtp", mtp.url), ("plain", plain.url), ("plain2", plain2.url)]
    code, out, err = await run_verify(tmp_path, backends, "--backend", "mtp", "--against", "plain", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["verified"] and result["message"].startswith("MTP active (×")
    subject, reference = result["sides"]
    assert 1.6 < result["ratio"] < 2.4
    assert 1.7 < subject["tokens_per_step"] < 2.3 and 0.9 < reference["tokens_per_step"] < 1.1
    assert subject["acceptance"] == 0.8 and reference["acceptance"] is None
    code, out, err = await run_verify(tmp_path, backends, "--backend", "plain2", "--against", "plain")
    assert code == 1, err
    assert "no material speed-up" in out and "the runtime is not using MTP" in out


async def test_verify_against_a_saved_baseline(runtime_factory, tmp_path):
    mtp, plain, _ = await fakes(runtime_factory)
    baseline = tmp_path / "before.json"
    code, out, err = await run_verify(tmp_path, [("srv", plain.url)], "--save-baseline", str(baseline))
    assert code == 1  # alone, a plain server shows no sign of MTP
    assert json.loads(baseline.read_text())["backend"] == "srv"
    # "after the upgrade": same backend name, now drafting
    code, out, err = await run_verify(tmp_path, [("srv", mtp.url)], "--baseline", str(baseline))
    assert code == 0, err
    assert "MTP active (×" in out and "baseline" in out


async def test_verify_errors_exit_2(runtime_factory, tmp_path):
    mtp, _, _ = await fakes(runtime_factory)
    code, _, err = await run_verify(tmp_path, [("mtp", mtp.url)], "--backend", "nope")
    assert code == 2 and "no backend named nope" in err
    code, _, err = await run_verify(tmp_path, [("mtp", mtp.url)], "--baseline", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read baseline" in err


def test_judge_threshold():
    a = Side("subject", "a", "llamacpp", None, "m", rounds=[110.0], tokens=100, steps=100)
    b = Side("reference", "b", "llamacpp", None, "m", rounds=[100.0], tokens=100, steps=100)
    assert not judge(a, b, 1.15).verified
    assert judge(a, b, 1.05).verified


async def test_drafting_that_does_not_pay_is_told_apart(runtime_factory, tmp_path):
    """Accepted drafts at the plain rate: speculation is on but gains nothing (a small model on a
    CPU); the verdict says so instead of claiming the runtime does not use MTP."""
    slow = await runtime_factory("slow", models=["glm-4.5-air"], tokens=TOKENS, rate=80.0, burst=2,
                                 extra={"timings": {"draft_n": 20, "draft_n_accepted": 16}})
    plain = await runtime_factory("plain", models=["glm-4.5-air"], tokens=TOKENS, rate=80.0)
    code, out, err = await run_verify(tmp_path, [("slow", slow.url), ("plain", plain.url)],
                                      "--backend", "slow", "--against", "plain", "--json")
    assert code == 1, err
    result = json.loads(out)
    assert not result["verified"] and 0.8 < result["ratio"] < 1.15
    assert "drafts are accepted but do not pay on this hardware" in result["message"], result["message"]
    assert result["sides"][0]["acceptance"] == 0.8
