"""MTP knowledge: the registry, detection from real files, backend MTP state, MTP-aware routing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from mtproxy.backends import EARLY_MTP_PROBE_SECONDS
from mtproxy.mtp import detect
from mtproxy.mtp.registry import REGISTRY, version_key
from mtproxy.state import POOL

from .conftest import make_config, until
from .promtext import scrape, value

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


CHAT = {"model": "glm-4.5-air", "messages": [{"role": "user", "content": "x"}]}
DRAFTED = {"timings": {"predicted_n": 4, "draft_n": 6, "draft_n_accepted": 3}}


async def _chat(http, proxy, stream: bool) -> str:
    """One request through the proxy; its x-mtproxy-mtp header."""
    async with http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "stream": stream}) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["x-mtproxy-mtp"]


async def _requests_by_mtp(http, proxy) -> dict[str, float]:
    async with http.get(proxy.url + "/metrics") as resp:
        samples = scrape(await resp.text())
    return {mtp: value(samples, "mtproxy_requests_total", model="glm-4.5-air", mtp=mtp) or 0.0 for mtp in ("on", "off")}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_live_drafts_make_a_backend_active(runtime_factory, proxy_factory, http, stream):
    # a llama-server whose /props does not say, but whose responses carry draft counts
    rt = await runtime_factory("a", models=["glm-4.5-air"], extra=DRAFTED)
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    assert states(proxy) == {"a": "capable"}
    # the first request that drafts is labelled on: a non-streaming answer's header is settled
    # after its drafts are seen, a stream's before them (its metrics at its end)
    assert await _chat(http, proxy, stream) == ("off" if stream else "on")
    assert await _requests_by_mtp(http, proxy) == {"on": 1, "off": 0}
    assert states(proxy) == {"a": "active"}
    assert await _chat(http, proxy, not stream) == "on"
    assert await _requests_by_mtp(http, proxy) == {"on": 2, "off": 0}


async def test_answers_without_drafts_stay_off(runtime_factory, proxy_factory, http):
    # a llama-server with speculation on but of no known type, whose answers drafted nothing
    rt = await runtime_factory("a", models=["glm-4.5-air"], extra={"timings": {"predicted_n": 4}},
                               routes={"/slots": [{"id": 0, "speculative": True}]})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    for stream in (False, True):
        assert await _chat(http, proxy, stream) == "off"
    assert await _requests_by_mtp(http, proxy) == {"on": 0, "off": 2}
    assert states(proxy) == {"a": "capable"}


def vllm_metrics(drafts: int) -> str:
    """vLLM's /metrics with speculative decoding configured: its spec_decode counters."""
    return (f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="glm-4.5-air"}} {drafts}.0\n'
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="glm-4.5-air"}} {drafts // 2}.0\n')


async def test_vllm_counters_make_the_backend_active_soon_after_its_first_drafts(runtime_factory, proxy_factory, http):
    """The counters read 0 until the first request has drafted: re-read soon after requests
    finish, not after health.mtp_interval (an hour here)."""
    rt = await runtime_factory("v", models=["glm-4.5-air"], version="0.11.0", routes={"/metrics": vllm_metrics(0)})
    proxy = await proxy_factory(make_config([{"name": "v", "runtime": "vllm", "url": rt.url}],
                                            health={"interval": 0.2, "timeout": 1, "mtp_interval": 3600}))
    assert states(proxy) == {"v": "capable"}
    assert "no drafts yet" in proxy.app[POOL].backends[0].mtp["glm-4.5-air"].why
    assert rt.fetched["/metrics"] == 1  # the start-up probe
    rt.b.routes["/metrics"] = vllm_metrics(24)  # the first request drafts (its answer does not say)
    assert await _chat(http, proxy, False) == "off"
    await until(lambda: states(proxy) == {"v": "active"})
    assert "24 draft tokens" in proxy.app[POOL].backends[0].mtp["glm-4.5-air"].why
    assert await _chat(http, proxy, True) == "on"
    assert await _requests_by_mtp(http, proxy) == {"on": 1, "off": 1}


async def test_early_mtp_probes_are_bounded(runtime_factory, proxy_factory, http):
    """A backend whose counters stay at 0 is re-read at most once per EARLY_MTP_PROBE_SECONDS
    while requests finish, not once per request."""
    rt = await runtime_factory("v", models=["glm-4.5-air"], version="0.11.0", routes={"/metrics": vllm_metrics(0)})
    proxy = await proxy_factory(make_config([{"name": "v", "runtime": "vllm", "url": rt.url}],
                                            health={"interval": 0.2, "timeout": 1, "mtp_interval": 3600}))
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 40
    for i in range(n):
        await _chat(http, proxy, bool(i % 2))
    backend = proxy.app[POOL].backends[0]
    await until(lambda: backend.mtp_early is None, 2 * EARLY_MTP_PROBE_SECONDS + 10)  # the last one, if due
    elapsed = loop.time() - start
    early = rt.fetched["/metrics"] - 1  # less the start-up probe
    # one at once, then one per interval at most (the last one at its end)
    assert 1 <= early <= 2 + elapsed / EARLY_MTP_PROBE_SECONDS, (early, elapsed)
    assert early < n / 4, (early, elapsed)
    assert states(proxy) == {"v": "capable"}


def slot(types: str | None) -> dict:
    """A /slots entry of llama-server with speculation on: its params (with the types) once the
    slot has run a task."""
    entry: dict = {"id": 0, "n_ctx": 1024, "speculative": True, "is_processing": False}
    if types is not None:
        entry["params"] = {"speculative.types": types}
    return entry


async def test_llama_cpp_slots_say_draft_mtp_where_props_say_none(runtime_factory, proxy_factory, http):
    # build b1-0c1e570 and the embedded build: /props says "none" whatever --spec-type says
    rt = await runtime_factory("a", models=["glm-4.5-air"], extra=DRAFTED,
                               routes={"/props": props("none"), "/slots": [slot("none,draft-mtp")]})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}]))
    assert states(proxy) == {"a": "active"}  # from the start-up probe
    assert await _chat(http, proxy, True) == "on"
    assert await _requests_by_mtp(http, proxy) == {"on": 1, "off": 0}


async def test_llama_cpp_slots_read_again_after_the_first_task(runtime_factory, proxy_factory, http):
    # a freshly started llama-server: its slot shows the types only once it has run a task
    rt = await runtime_factory("a", models=["glm-4.5-air"], extra=DRAFTED,
                               routes={"/props": props("none"), "/slots": [slot(None)]})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}],
                                            health={"interval": 0.2, "timeout": 1, "mtp_interval": 3600}))
    backend = proxy.app[POOL].backends[0]
    assert states(proxy) == {"a": "capable"}
    rt.b.routes["/slots"] = [slot("none,draft-mtp")]
    assert await _chat(http, proxy, True) == "off"  # streamed: the header went before the drafts
    assert await _requests_by_mtp(http, proxy) == {"on": 1, "off": 0}
    # and the runtime's own word follows, without waiting for health.mtp_interval
    await until(lambda: backend.evidence["glm-4.5-air"].mtp is True)
    assert "/slots speculative.types = none,draft-mtp" in backend.evidence["glm-4.5-air"].why



async def test_llama_cpp_ngram_drafts_are_told_apart_by_slots(runtime_factory, proxy_factory, http):
    # speculation of another kind drafts too; /slots, read again after the first task, says which
    rt = await runtime_factory("a", models=["glm-4.5-air"], extra=DRAFTED,
                               routes={"/props": props("none"), "/slots": [slot(None)]})
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "llamacpp", "url": rt.url}],
                                            health={"interval": 0.2, "timeout": 1, "mtp_interval": 3600}))
    rt.b.routes["/slots"] = [slot("none,ngram-simple")]
    await _chat(http, proxy, False)
    await until(lambda: states(proxy) == {"a": "capable"})
    assert "ngram-simple: not MTP" in proxy.app[POOL].backends[0].mtp["glm-4.5-air"].why
    assert await _chat(http, proxy, False) == "off"

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


async def test_a_truncated_gguf_is_reported_and_the_probes_go_on(runtime_factory, proxy_factory, http, tmp_path):
    """A GGUF still being downloaded (here its magic alone): the gguf reader raises IndexError on it;
    the proxy starts, says it cannot read the file, and keeps probing (the backend seen down)."""
    partial = tmp_path / "glm-4.5-air.gguf"
    partial.write_bytes(b"GGUF")
    rt = await runtime_factory("a", models=["my-model"])
    proxy = await proxy_factory(make_config([{"name": "a", "runtime": "vllm", "url": rt.url,
                                              "model_path": str(partial)}],
                                            health={"interval": 0.05, "timeout": 1, "mtp_interval": 3600}))
    read = detect.from_path(partial)  # no answer from the file: the model is judged without it
    assert read is not None and read.mtp is None and "cannot read" in read.why and "IndexError" in read.why, read
    assert proxy.app[POOL].trained["my-model"].source == "unknown"
    async with http.post(proxy.url + "/v1/chat/completions", json={
            "model": "my-model", "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200, await resp.text()
    await rt.stop()
    await until(lambda: not proxy.app[POOL].backends[0].up)
