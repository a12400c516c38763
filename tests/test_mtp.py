"""MTP knowledge: the registry, detection from real files, backend MTP state, MTP-aware routing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from mtproxy.mtp import detect
from mtproxy.mtp.registry import REGISTRY, version_key
from mtproxy.state import POOL

from .conftest import make_config

ROOT = Path(__file__).resolve().parent.parent


# --- the registry ---------------------------------------------------------------------------

def test_registry_encodes_the_reference_not_the_popular_tables():
    llama = REGISTRY["llamacpp"]
    assert llama.level == "yes" and llama.since == "b9180"
    assert any("#22673" in s for s in llama.sources)
    assert not any("5742" in s or "b9148" in s for s in llama.sources)
    assert REGISTRY["vllm"].since == "0.7.3"
    assert REGISTRY["ollama"].level == "yes" and REGISTRY["ollama"].since == "0.30.0"
    assert REGISTRY["mlx"].level == "no"
    assert REGISTRY["trtllm"].level == "some" and "qwen3-next" in REGISTRY["trtllm"].not_families
    assert REGISTRY["llama-cpp-python"].level == "no"
    for row in REGISTRY.values():
        assert row.switch
        if row.level in ("yes", "some", "no"):
            assert row.sources, row.runtime


@pytest.mark.parametrize("runtime, version, ok", [
    ("llamacpp", "b9180", True), ("llamacpp", "b9181-abc123", True), ("llamacpp", "b9148", False),
    ("llamacpp", "b1-0c1e570", None),  # built from a tarball: not a release build number
    ("vllm", "0.7.3", True), ("vllm", "v0.11.0rc1", True), ("vllm", "0.7.2", False),
    ("vllm", "0.25.0+cu128", True), ("ollama", "0.30.2", True), ("ollama", "0.29.9", False),
    ("ollama", "0.30", True), ("vllm", None, None), ("sglang", "0.5.9", None), ("vllm", "nightly", None),
])
def test_version_gates(runtime, version, ok):
    assert REGISTRY[runtime].version_ok(version) is ok


def test_version_keys_do_not_mix_schemes():
    assert version_key("b9180")[0] == "build" and version_key("0.30.0")[0] == "release"
    assert REGISTRY["llamacpp"].version_ok("0.30.0") is None


# --- detection from real files --------------------------------------------------------------

def write_config(tmp: Path, name: str, data: dict) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(data))
    return d


@pytest.mark.parametrize("data, mtp", [
    ({"model_type": "deepseek_v3", "num_nextn_predict_layers": 1}, True),
    ({"model_type": "qwen3_5", "text_config": {"mtp_num_hidden_layers": 1}}, True),
    ({"model_type": "qwen3_next", "mtp_num_hidden_layers": 1}, True),
    ({"model_type": "minimax_m3", "num_mtp_modules": 3}, True),
    ({"model_type": "kimi_k3", "text_config": {"num_nextn_predict_layers": 1}}, True),
    ({"model_type": "inkling", "mtp_config": {"num_nextn_predict_layers": 2}}, True),
    ({"model_type": "deepseek_v3", "num_nextn_predict_layers": 0}, False),
    ({"model_type": "llama"}, None),
])
def test_hf_config(tmp_path, data, mtp):
    found = detect.from_path(write_config(tmp_path, "m", data))
    assert (found.mtp if found else None) is mtp


def write_gguf(path: Path, arch: str, *, nextn: int | None, tensors: list[str]) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    if nextn is not None:
        w.add_uint32(f"{arch}.nextn_predict_layers", nextn)
    for name in tensors:
        w.add_tensor(name, np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_with_nextn_layers(tmp_path):
    p = write_gguf(tmp_path / "glm.gguf", "glm4moe", nextn=1,
                   tensors=["token_embd.weight", "blk.1.nextn.eh_proj.weight", "blk.1.nextn.enorm.weight"])
    found = detect.from_path(p)
    assert found.mtp is True and "glm4moe.nextn_predict_layers = 1" in found.why


def test_gguf_trunk_only_conversion_is_not_mtp(tmp_path):
    p = write_gguf(tmp_path / "trunk.gguf", "deepseek2", nextn=1, tensors=["token_embd.weight"])
    assert detect.from_path(p).mtp is False


def test_legacy_gguf_with_mtp_tensors(tmp_path):
    p = write_gguf(tmp_path / "q.gguf", "qwen35", nextn=None, tensors=["token_embd.weight", "mtp.fc.weight"])
    assert detect.from_path(p).mtp is True


def test_plain_gguf_and_directory_lookup(tmp_path):
    write_gguf(tmp_path / "llama.gguf", "llama", nextn=None, tensors=["token_embd.weight"])
    assert detect.from_path(tmp_path).mtp is False  # a directory holding a GGUF
    assert detect.from_path(tmp_path / "missing.gguf") is None


@pytest.mark.parametrize("name, mtp", [
    ("deepseek-ai/DeepSeek-V3-0324", True), ("zai-org/GLM-4.5-Air", True), ("qwen3.5:0.8b", True),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", True), ("XiaomiMiMo/MiMo-7B-RL", True), ("llama3.1:8b", None),
    ("smollm2-135m", None),
])
def test_family_names(name, mtp):
    found = detect.from_family(name)
    assert (found.mtp if found else None) is mtp


# --- backend state and routing against fake runtimes -------------------------------------------

def props(types: str) -> dict:
    return {"default_generation_settings": {"params": {"speculative.types": types}}, "build_info": "b9300-abc"}


async def llama_fake(runtime_factory, name: str, types: str | None, *, build="b9300-abc", **kw):
    routes = {"/props": {**props(types), "build_info": build}} if types is not None else {}
    return await runtime_factory(name, models=["glm-4.5-air"], routes=routes, **kw)


def states(proxy) -> dict[str, str]:
    pool = proxy.app[POOL]
    return {b.name: b.mtp["glm-4.5-air"].state for b in pool.backends if "glm-4.5-air" in b.mtp}


async def test_states_from_runtime_evidence(runtime_factory, proxy_factory):
    on = await llama_fake(runtime_factory, "on", "none,draft-mtp")
    plain = await llama_fake(runtime_factory, "plain", "none")
    ngram = await llama_fake(runtime_factory, "ngram", "none,ngram-simple")
    old = await llama_fake(runtime_factory, "old", "none", build="b9000-abc")
    mlx = await runtime_factory("mlx", models=["glm-4.5-air"])
    proxy = await proxy_factory(make_config([
        {"name": "on", "runtime": "llamacpp", "url": on.url},
        {"name": "plain", "runtime": "llamacpp", "url": plain.url, "mtp": True},
        {"name": "ngram", "runtime": "llamacpp", "url": ngram.url},
        {"name": "old", "runtime": "llamacpp", "url": old.url},
        {"name": "mlx", "runtime": "mlx", "url": mlx.url},
    ]))
    assert states(proxy) == {"on": "active", "plain": "capable", "ngram": "capable", "old": "off", "mlx": "off"}
    pool = proxy.app[POOL]
    plain_status = pool.backends[1].mtp["glm-4.5-air"]
    assert plain_status.mismatch and "config says mtp: true" in plain_status.why  # "upgraded, nothing faster"
    assert "not MTP" in pool.backends[2].mtp["glm-4.5-air"].why
    assert pool.trained["glm-4.5-air"].source == "family"


async def test_live_drafts_make_a_backend_active(runtime_factory, proxy_factory, http):
    # a llama-server whose /props does not say, but whose responses carry draft counts
    rt = await runtime_factory("a", models=["glm-4.5-air"],
                               extra={"timings": {"predicted_n": 4, "draft_n": 6, "draft_n_accepted": 3}})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    assert states(proxy) == {"a": "capable"}
    body = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.headers["x-mtproxy-mtp"] == "off"  # decided before this response was seen
    assert states(proxy) == {"a": "active"}
    async with http.post(proxy.url + "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.headers["x-mtproxy-mtp"] == "on"
        await resp.read()


async def _route_counts(http, proxy, model: str, n: int = 6) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        async with http.post(proxy.url + "/v1/chat/completions",
                             json={"model": model, "messages": [{"role": "user", "content": "x"}]}) as resp:
            await resp.read()
            key = resp.headers.get("x-mtproxy-backend", str(resp.status))
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("policy", ["prefer", "require", "ignore"])
async def test_routing_policies_with_backends_going_down_and_back(runtime_factory, proxy_factory, http, policy):
    on = await llama_fake(runtime_factory, "on", "none,draft-mtp")
    capable = await llama_fake(runtime_factory, "capable", "none")
    off = await runtime_factory("off", models=["glm-4.5-air"])  # mlx: no MTP
    other = await runtime_factory("other", models=["llama3"])
    proxy = await proxy_factory(make_config([
        {"name": "on", "runtime": "llamacpp", "url": on.url},
        {"name": "capable", "runtime": "llamacpp", "url": capable.url},
        {"name": "off", "runtime": "mlx", "url": off.url},
        {"name": "other", "runtime": "mlx", "url": other.url},
    ], routing={"mtp": policy}, health={"interval": 0.1, "timeout": 1}))

    counts = await _route_counts(http, proxy, "glm-4.5-air")
    if policy == "ignore":
        assert set(counts) == {"on", "capable", "off"}  # plain least-outstanding rotation
    else:
        assert counts == {"on": 6}
    assert await _route_counts(http, proxy, "llama3", 2) == {"other": 2}  # non-MTP models unaffected

    on.b.healthy = False  # the active backend goes down
    pool = proxy.app[POOL]
    for _ in range(200):
        if not pool.backends[0].up:
            break
        await asyncio.sleep(0.02)
    counts = await _route_counts(http, proxy, "glm-4.5-air", 3)
    if policy == "prefer":
        assert counts == {"capable": 3}  # then capable, before the rest
    elif policy == "require":
        assert counts == {"503": 3}
        async with http.post(proxy.url + "/v1/chat/completions", json={
                "model": "glm-4.5-air", "messages": [{"role": "user", "content": "x"}]}) as resp:
            message = (await resp.json())["error"]["message"]
        assert "require" in message and "on: down" in message
        assert "capable: MTP capable" in message and "off: MTP off" in message
    else:
        assert set(counts) <= {"capable", "off"}

    on.b.healthy = True  # and comes back
    for _ in range(200):
        if pool.backends[0].up:
            break
        await asyncio.sleep(0.02)
    if policy != "ignore":
        assert await _route_counts(http, proxy, "glm-4.5-air", 2) == {"on": 2}


async def test_detection_order_and_runtime_reports(runtime_factory, proxy_factory, tmp_path):
    from .transcripts import replay

    ollama = await replay("ollama").start()  # /api/show: nextn_predict_layers 1, draft_num_predict 4
    plain_file = write_gguf(tmp_path / "plain.gguf", "llama", nextn=None, tensors=["token_embd.weight"])
    mtp_dir = write_config(tmp_path, "ckpt", {"num_nextn_predict_layers": 1})
    a = await runtime_factory("a", models=["deepseek-v3-local"])
    b = await runtime_factory("b", models=["my-finetune"])
    c = await runtime_factory("c", models=["glm-4.5-quantised-by-me"])
    try:
        proxy = await proxy_factory(make_config([
            {"name": "ollama", "runtime": "ollama", "url": ollama.url},
            {"name": "a", "runtime": "vllm", "url": a.url, "model_path": str(plain_file)},
            {"name": "b", "runtime": "vllm", "url": b.url, "model_path": str(mtp_dir)},
            {"name": "c", "runtime": "vllm", "url": c.url},
        ], models={"glm-4.5-quantised-by-me": {"mtp": False}}))
        pool = proxy.app[POOL]
        t = pool.trained
        assert t["qwen3.5:0.8b"].source == "runtime" and t["qwen3.5:0.8b"].mtp is True
        assert pool.backends[0].mtp["qwen3.5:0.8b"].state == "active"  # draft_num_predict 4 on 0.30.2
        assert t["deepseek-v3-local"].source == "file" and t["deepseek-v3-local"].mtp is False  # file beats name
        assert t["my-finetune"].source == "file" and t["my-finetune"].mtp is True
        assert t["glm-4.5-quantised-by-me"].source == "config" and t["glm-4.5-quantised-by-me"].mtp is False
        assert pool.backends[3].mtp["glm-4.5-quantised-by-me"].state == "off"
    finally:
        await ollama.stop()


async def test_restart_with_new_version_updates_state_without_proxy_restart(runtime_factory, proxy_factory):
    rt = await llama_fake(runtime_factory, "a", "none", build="b9000-abc")
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}],
                                            health={"interval": 0.1, "timeout": 1, "mtp_interval": 3600}))
    assert states(proxy) == {"a": "off"}
    rt.b.routes["/props"] = {**props("none,draft-mtp"), "build_info": "b9400-def"}  # upgraded, MTP on
    for _ in range(200):
        if states(proxy) == {"a": "active"}:
            break
        await asyncio.sleep(0.02)
    assert states(proxy) == {"a": "active"}
    assert proxy.app[POOL].backends[0].version == "b9400-def"


async def test_backends_endpoint_and_runtimes_cli(runtime_factory, proxy_factory, http, tmp_path):
    on = await llama_fake(runtime_factory, "on", "none,draft-mtp")
    proxy = await proxy_factory(make_config([{"name": "on", "runtime": "llamacpp", "url": on.url,
                                              "api_key": "sekrit"}]))
    async with http.get(proxy.url + "/mtproxy/backends") as resp:
        text = await resp.text()
    data = json.loads(text)
    assert "sekrit" not in text
    b = data["backends"][0]
    assert (b["name"], b["runtime"], b["version"], b["up"]) == ("on", "llamacpp", "b9300-abc", True)
    assert b["models"][0]["mtp"] == "active" and b["models"][0]["mtp_trained"] is True

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"backends:\n  - {{name: 'on', runtime: llamacpp, url: '{on.url}'}}\n")
    for extra in ([], ["--json"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtproxy", "runtimes", "--config", str(cfg), *extra, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        if extra:
            listed = json.loads(out)
            assert {r["runtime"] for r in listed["support"]} >= {"vllm", "llamacpp", "mlx"}
            assert listed["backends"][0]["models"][0]["mtp"] == "active"
        else:
            text = out.decode()
            assert "llamacpp          yes since b9180" in text and "#22673" in text
            assert "MTP active: /props speculative.types = none,draft-mtp" in text
