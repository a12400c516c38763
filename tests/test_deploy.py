"""deploy/: what users run mtproxy and watch it with, proven rather than only written.

- Prometheus: `promtool check config`, `check rules` and `test rules` (every alert unit-tested).
- End to end: the proxy in-process with fake runtimes, a real Prometheus scraping it every second
  on loopback, traffic, then every PromQL expression of every dashboard panel and every rule run
  against Prometheus's HTTP API: each must parse and return data (PANELS_ELSEWHERE: panels whose
  data needs another run, which checks them).
- Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, offline), the
  ServiceMonitor against the Prometheus Operator's CRD schema; compose with `docker compose config`.

promtool/prometheus missing: these tests skip, or fail with MTPROXY_REQUIRE_PROMETHEUS=1 (CI).
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from mtproxy.config import load_config_text
from mtproxy.mtp.state import LIVE_WINDOW

from .conftest import make_config
from .deploy_prometheus import (
    LABEL_VALUES,
    Prometheus,
    finite,
    free_port,
    panel_queries,
    require,
    substitute,
    uncomment_runtime_jobs,
)
from .test_runtime_metrics import VLLM_A, VLLM_B
from .test_swap import member

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mtproxy.json"
K8S = DEPLOY / "kubernetes"


def run(*args: str, cwd: Path = PROM, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out}"
    return out


def rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[str]:
    return [r["alert"] for r in rules() if "alert" in r]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- Prometheus: promtool ------------------------------------------------------------------------

def test_promtool_check_config(tmp_path):
    promtool = require("promtool")
    run(promtool, "check", "config", "prometheus.yml")
    # the commented jobs for the runtimes' own /metrics are valid once uncommented
    config = yaml.safe_load(uncomment_runtime_jobs((PROM / "prometheus.yml").read_text()))
    assert [j["job_name"] for j in config["scrape_configs"]] == ["mtproxy", "vllm", "sglang", "llamacpp"]
    config["rule_files"] = [str(f) for f in RULE_FILES]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))


def test_promtool_check_rules_and_naming():
    promtool = require("promtool")
    out = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert out.count("SUCCESS") == len(RULE_FILES)
    for r in rules():
        if "record" in r:  # level:metric:operations, and colons nowhere else
            assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", r["record"]), r["record"]
        else:
            assert ":" not in r["alert"] and r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert {"summary", "description"} <= set(r["annotations"]), r["alert"]


def test_promtool_unit_tests_cover_every_alert():
    promtool = require("promtool")
    out = run(promtool, "test", "rules", *(str(f.relative_to(PROM)) for f in RULE_TESTS))
    assert "FAILED" not in out and out.count("SUCCESS") == len(RULE_TESTS), out
    fires, quiet = collections.Counter(), collections.Counter()
    for f in RULE_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else quiet)[case["alertname"]] += 1
    for name in alerts():
        # a firing case lists exactly the alerts expected, so its look-alike series stay quiet;
        # a quiet case checks the alert holds back (`for`, thresholds) where it must
        assert fires[name] and quiet[name], f"{name}: promtool tests need a firing and a quiet case"


# --- Grafana -----------------------------------------------------------------------------------

def test_dashboard_is_well_formed():
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "backend", "model", "runtime"} <= set(variables)
    for name in ("backend", "model", "runtime"):
        assert LABEL_VALUES.match(variables[name]["definition"]), name
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids, cells = set(), set()
    for p in board["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("requests/s", "errors", "time to first token", "inter-token", "time per output token",
                  "decode tokens/s", "window", "tokens per step", "acceptance", "mtp state", "version",
                  "in-flight", "overhead", "swaps", "backend state", "start duration", "queue wait",
                  "estimated time to first token", "estimated decode tokens/s", "estimated tokens per step",
                  "estimate age", "acceptance rate", "acceptance length", "draft position", "draft rounds",
                  "first visible token", "reasoning tokens/s", "runtimes' own metrics"):
        assert topic in titles, f"no panel about {topic}"
    exprs = " ".join(e for _, e, _ in panel_queries(board))
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, backend, model) (rate(mtproxy_time_to_first_token_seconds_bucket" \
            in exprs


def test_grafana_provisioning_matches_compose():
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/mtproxy.yaml").read_text())
    mounts = dict(reversed(v.split(":")[:2]) for v in compose()["services"]["grafana"]["volumes"])
    assert mounts[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# --- end to end: every panel and rule against a real Prometheus scraping the proxy ----------------

TOKENS = [f"t{i} " for i in range(24)]


def props(speculative_types: str) -> dict[str, Any]:
    """llama-server's /props: a build new enough for MTP, and its speculative decoding types."""
    return {"/props": {"build_info": "b9200-0abc123",
                       "default_generation_settings": {"params": {"speculative.types": speculative_types}}}}


REASONING = 8  # `spec`: its first 8 chunks are reasoning
# 70 drafted, 34 accepted in 7 steps: 2 accepted none, 1 one, 1 three, 3 all ten
SPEC_EXTRA = {"metrics": {"speculative_decoding": {
    "num_draft_tokens": 70, "num_accepted_draft_tokens": 34, "num_spec_steps": 7,
    "mean_acceptance_length": 1 + 34 / 7, "draft_acceptance_rate": 34 / 70,
    "acceptance_histogram": [2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 3], "num_spec_tokens": 10}},
    "usage": {"prompt_tokens": 5, "completion_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS),
              "completion_tokens_details": {"reasoning_tokens": REASONING}}}

# One fake runtime per situation a panel or an alert is about. Decode steps are 25-50 ms apart: the
# fakes, the proxy and the client share one event loop, and a late step followed by a catch-up on
# a busy machine looks like a burst of speculation.
FAKES: dict[str, tuple[str, dict[str, Any]]] = {
    # llama-server running MTP: 3 tokens per step, accepted drafts in `timings`
    "mtp": ("llamacpp", dict(models=["m-mtp"], tokens=TOKENS, rate=120.0, burst=3, routes=props("none,draft-mtp"),
                             extra={"timings": {"draft_n": 20, "draft_n_accepted": 15}})),
    "plain": ("vllm", dict(models=["m-plain"], tokens=TOKENS, rate=40.0)),
    # serves m-plain too but answers 503: requests move on to `plain` (upstream retries)
    "busy": ("vllm", dict(models=["m-plain"], status=503)),
    "broken": ("sglang", dict(models=["m-err"], status=500)),  # every request fails: error ratio
    "gone": ("ollama", dict(models=["m-gone"], healthy=False)),  # fails its health check: backend down
    # configured `mtp: true`, but /props shows no MTP drafting: mtproxy_backend_mtp_mismatch
    "cfgmtp": ("llamacpp", dict(models=["m-cfg"], tokens=TOKENS, rate=40.0, routes=props("none"))),
    # /props says draft-mtp (so routed as MTP on) but streams run one token per step with no drafts.
    # Paced step by step, not on a fixed schedule, so that a stall (the proxy renders /metrics on
    # its event loop) delays the steps after it instead of bunching them into a burst.
    "nospec": ("llamacpp", dict(models=["m-nospec"], tokens=TOKENS, token_delay=0.05,
                                routes=props("none,draft-mtp"))),
    # vLLM with speculative decoding and a reasoning parser: its per-request SpeculativeDecodingMetrics
    # (drafts, steps, acceptance histogram) and reasoning deltas before the answer
    "spec": ("vllm", dict(models=["m-spec"], tokens=TOKENS, rate=40.0, reasoning=REASONING, extra=SPEC_EXTRA)),
}
MTP_TRAINED = {"m-mtp": {"mtp": True}, "m-cfg": {"mtp": True}, "m-nospec": {"mtp": True}}
# `nospec` streams per round: fewer in all than the proxy's own live check needs to demote the
# backend (its last LIVE_WINDOW long streams at ~1 token per step), so they stay routed as MTP on.
NOSPEC_STREAMS = (2, 2, 0)
assert sum(NOSPEC_STREAMS) < LIVE_WINDOW

# Alert expressions are empty while nothing is wrong. The traffic above trips five of them (None:
# the alert's own expression must return data). Two cannot trip within a one-minute test; for those
# their inputs must return data, and the whole expression must still parse and evaluate.
ALERT_EVIDENCE: dict[str, list[str] | None] = {
    "MtproxyDown": None,  # job mtproxy also has a target on a closed port
    "MtproxyBackendDown": None,  # `gone`
    "MtproxyHighErrorRatio": None,  # `broken`
    "MtproxyMtpConfiguredNotActive": None,  # `cfgmtp`
    "MtproxyMtpNoSpeculation": None,  # `nospec`
    # a p99 TTFT above 10 s for 10 minutes: the recorded p99 it compares
    "MtproxyTimeToFirstTokenHigh": ["backend_model:mtproxy_time_to_first_token_seconds:p99_rate5m"],
    # compares with `offset 1d`, a day this test does not have: today's side and its volume
    "MtproxyDecodeRateDropped": ["backend_model:mtproxy_decode_tokens_per_second:mean30m",
                                "backend_model:mtproxy_decode_tokens_per_second_count:rate30m"],
    # 12 swaps in 10 minutes with long waits: the swaps and the p95 wait it compares
    "MtproxyGroupThrashing": ["mtproxy_group_swaps_total",
                              "histogram_quantile(0.95, sum by (job, instance, le) "
                              "(rate(mtproxy_backend_queue_wait_seconds_bucket[10m])))"],
    "MtproxyBackendStartFailing": None,  # `nostart`, once a round
}

# Panels this run cannot give data, each with why and where they get it instead; their queries must
# still parse and evaluate here.
RUNTIME_METRICS_OFF = ("metrics.runtime_metrics is off in this run (on, every scrape would also read every "
                       "fake's /metrics): shown with data in test_prometheus_scrapes_the_runtimes_metrics")
PANELS_ELSEWHERE: dict[str, str] = {
    "Runtimes' own metrics on the page": RUNTIME_METRICS_OFF,
    "Runtimes' own metrics: reads left out/s": RUNTIME_METRICS_OFF,
}

# Managed backends (swap.py), launched as processes: two models swapped in a group of one (each
# round asks for both at once: a start, a wait in the queue, a drain, a swap), and one whose
# process exits at once (its start fails: 503 backend_start_failed).
SWAP_MODELS = ("m-swap1", "m-swap2")
SWAP_GROUP = {"max_running": 1, "min_run": 0, "drain_timeout": 30, "queue_timeout": 60}


def managed_backends() -> list[dict[str, Any]]:
    out = [member(m, free_port(), group="gpu") for m in SWAP_MODELS]
    out.append({"name": "nostart", "runtime": "vllm", "url": f"http://127.0.0.1:{free_port()}",
                "models": ["m-nostart"], "launch": [sys.executable, "-c", "raise SystemExit(3)"],
                "ready_timeout": 30})
    return out


async def send_traffic(http: aiohttp.ClientSession, url: str, nospec: int) -> collections.Counter:
    """One round: streams and not, to every backend, plus requests no backend can take."""
    plan = ([("m-mtp", True)] * 3 + [("m-mtp", False)] + [("m-plain", True)] * 3 + [("m-plain", False)] * 2
            + [("m-err", True)] * 3 + [("m-err", False)] * 3 + [("m-cfg", True)] * 2
            + [("m-nospec", True)] * nospec + [("m-spec", True)] * 2 + [("m-spec", False)]
            + [("m-gone", False), ("no-such-model", False)]
            + [(m, True) for m in SWAP_MODELS] + [("m-nostart", False)])
    return collections.Counter(await asyncio.gather(*(call_chat(http, url, m, s) for m, s in plan)))


async def call_chat(http: aiohttp.ClientSession, url: str, model: str, stream: bool) -> int:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status


async def wait_for_backend_states(http: aiohttp.ClientSession, url: str, timeout: float = 15.0) -> None:
    want = {("mtp", "m-mtp"): ("active", False), ("cfgmtp", "m-cfg"): ("capable", True),
            ("nospec", "m-nospec"): ("active", False)}
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url + "/mtproxy/backends") as resp:
            backends = (await resp.json())["backends"]
        seen = {(b["name"], m["name"]): (m["mtp"], m["mtp_mismatch"]) for b in backends for m in b["models"]}
        up = {b["name"]: b["up"] for b in backends}
        if all(seen.get(k) == v for k, v in want.items()) and not up["gone"] and up["mtp"]:
            return
        assert time.monotonic() < deadline, f"backends did not settle: {seen} {up}"
        await asyncio.sleep(0.1)


# Every 2 s: a scrape that times out (on an overloaded machine) marks every series stale, and
# then the gauges read as absent.
SCRAPE_INTERVAL = 2.0


def e2e_prometheus_config(targets: list[str]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, scraping `targets` every 2 s, with the shipped rules."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_INTERVAL:g}s", "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                        "evaluation_interval": "1s"}
    config["rule_files"] = [str(f) for f in RULE_FILES]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "mtproxy"]
    job["static_configs"] = [{"targets": targets}]
    return config


async def test_every_panel_and_rule_returns_data(runtime_factory, proxy_factory, tmp_path):
    binary = require("prometheus")
    fakes = {name: await runtime_factory(name, **behaviour) for name, (_, behaviour) in FAKES.items()}
    backends = [{"name": n, "runtime": FAKES[n][0], "url": rt.url, "models": FAKES[n][1]["models"]}
                for n, rt in fakes.items()]
    next(b for b in backends if b["name"] == "cfgmtp")["mtp"] = True
    backends += managed_backends()
    # outlier ejection off: `broken` and `busy` keep answering 5xx rather than leave the pool;
    # health checks once a second: seven backends probed five times a second crowd the loop
    proxy = await proxy_factory(make_config(backends, models=MTP_TRAINED, outlier={"consecutive_failures": 1000},
                                            health={"interval": 1.0, "timeout": 1.0}, groups={"gpu": SWAP_GROUP}))
    instance = f"127.0.0.1:{proxy.port}"
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: up == 0, MtproxyDown

    async with Prometheus(binary, tmp_path, e2e_prometheus_config([instance, closed])) as prom, \
            aiohttp.ClientSession() as http:
        await wait_for_backend_states(http, proxy.url)
        # Counters and histograms appear with their first request, and rate() counts only what
        # happens after a series' first scrape: three rounds, each followed by a scrape.
        for round_ in range(3):
            nospec = NOSPEC_STREAMS[round_]
            statuses = await send_traffic(http, proxy.url, nospec)
            assert statuses == {200: 16 + nospec, 500: 6, 503: 2, 404: 1}, statuses
            await prom.scraped_after(instance, time.time() + 0.2)
        # twice: alerts read recorded series, and the two groups are evaluated on their own clocks
        await prom.rules_evaluated_after(time.time() + 0.2)
        groups = await prom.rules_evaluated_after(time.time())
        failures = []

        for g in groups:
            for r in g["rules"]:
                if r["health"] != "ok":
                    failures.append(f"rule {r['name']}: {r['health']} {r.get('lastError')}")

        board = json.loads(DASHBOARD.read_text())
        names = [v["name"] for v in board["templating"]["list"]]
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = LABEL_VALUES.match(v["definition"])
            values = await prom.api(f"label/{m['label']}/values", **{"match[]": substitute(m["selector"], names)})
            if not values:
                failures.append(f"variable {v['name']}: {v['definition']} has no values")

        queries = panel_queries(board)
        assert set(PANELS_ELSEWHERE) <= {title for title, _, _ in queries}, "PANELS_ELSEWHERE names no panel"
        for title, expr, instant in queries:
            query = substitute(expr, names)
            try:
                result = await (prom.query(query) if instant else prom.query_range(query, 30))
            except AssertionError as err:
                failures.append(f"panel {title!r}: {query}\n    {err}")
                continue
            if not finite(result) and title not in PANELS_ELSEWHERE:
                failures.append(f"panel {title!r} shows nothing: {query}")

        assert set(ALERT_EVIDENCE) == set(alerts()), "ALERT_EVIDENCE must name every alert, and only those"
        for r in rules():
            name = r.get("record") or r["alert"]
            try:
                result = await prom.query(r["expr"])
            except AssertionError as err:
                failures.append(f"rule {name}: {err}")
                continue
            for expr in ALERT_EVIDENCE.get(name) or []:
                if not finite(await prom.query(expr)):
                    failures.append(f"alert {name}: its input {expr} has no data")
            if ("record" in r or ALERT_EVIDENCE[name] is None) and not finite(result):
                failures.append(f"rule {name} returns no data: {r['expr']}")

        # and Prometheus's own evaluation took the tripped alerts to pending (or firing), with
        # their annotation templates expanded
        active = {a["labels"]["alertname"]: a for a in (await prom.api("alerts"))["alerts"]}
        for name, evidence in ALERT_EVIDENCE.items():
            if evidence is None and name not in active:
                failures.append(f"alert {name} is not pending in Prometheus")
        for a in active.values():
            text = " ".join(a["annotations"].values())
            if "<no value>" in text or "error expanding template" in text:
                failures.append(f"alert {a['labels']['alertname']}: annotations {a['annotations']}")

        assert not failures, "\n".join(failures) + "\n--- prometheus log ---\n" + prom.log_tail()


async def test_prometheus_scrapes_the_runtimes_metrics(runtime_factory, proxy_factory, tmp_path):
    """metrics.runtime_metrics: a real Prometheus takes the merged page (it asks for OpenMetrics
    first) and stores each backend's series under its own labels."""
    binary = require("prometheus")
    a = await runtime_factory("a", routes={"/metrics": VLLM_A})
    b = await runtime_factory("b", models=["m2"], routes={"/metrics": VLLM_B})
    bad = await runtime_factory("bad", models=["m3"], routes={"/metrics": "vllm:num_requests_running{engine=\"0\" 3\n"})
    proxy = await proxy_factory(make_config(
        [{"name": "va", "runtime": "vllm", "url": a.url, "models": ["m1"]},
         {"name": "vb", "runtime": "sglang", "url": b.url, "models": ["m2"]},
         {"name": "bad", "runtime": "vllm", "url": bad.url, "models": ["m3"]}],  # a malformed page
        metrics={"runtime_metrics": True}))
    instance = f"127.0.0.1:{proxy.port}"
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "mtproxy", "static_configs": [{"targets": [instance]}]}]}
    async with Prometheus(binary, tmp_path, config) as prom:
        await prom.scraped_after(instance, time.time())  # up == 1: the page parsed
        result = (await prom.query('{__name__="vllm:generation_tokens_total"}'))["result"]
        assert {(r["metric"]["backend"], r["metric"]["runtime"], r["value"][1]) for r in result} == {
            ("va", "vllm", "1234"), ("vb", "sglang", "99")}, prom.log_tail()
        cpu = (await prom.query('process_cpu_seconds_total{backend!=""}'))["result"]
        assert {r["metric"]["backend"] for r in cpu} == {"va", "vb"}
        info = (await prom.query('{__name__="vllm:cache_config_info", backend="va"}'))["result"]
        assert info[0]["metric"]["exported_backend"] == "FLASH_ATTN"
        # the dashboard's panels about these reads (PANELS_ELSEWHERE): rate() needs two scrapes
        # carrying `bad`'s failed read
        counted = 'count_over_time(mtproxy_runtime_metrics_errors_total{backend="bad", reason="malformed"}[1m]) >= 2'
        for _ in range(10):
            if (await prom.query(counted))["result"]:
                break
            await prom.scraped_after(instance, time.time())
        board = json.loads(DASHBOARD.read_text())
        names = [v["name"] for v in board["templating"]["list"]]
        for title, expr, _ in panel_queries(board):
            if title in PANELS_ELSEWHERE:
                query = substitute(expr, names)
                assert finite(await prom.query_range(query, 30)), f"panel {title!r} shows nothing: {query}"
        up = (await prom.query("mtproxy_runtime_metrics_up"))["result"]
        assert {(r["metric"]["backend"], r["value"][1]) for r in up} == {("va", "1"), ("vb", "1"), ("bad", "0")}


# --- Kubernetes ------------------------------------------------------------------------------------

def manifests() -> dict[str, dict[str, Any]]:
    """kind → the resource, from every manifest kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    out = {}
    for name in files:
        for doc in load_docs(K8S / name):
            assert doc["kind"] not in out, f"two {doc['kind']} resources"
            out[doc["kind"]] = doc
    return out


def test_kubernetes_manifests_match_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extras) is not installed")
    versions = sorted({v for v in kv.utils.all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    resources = manifests()
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor"} == set(resources)
    assert resources["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    for _kind, doc in resources.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the Kubernetes schemas (test_servicemonitor_matches_its_crd_schema)
        for version in (versions[0], versions[-1]):  # the oldest and newest bundled releases
            kv.validate(doc, version, strict=True)  # raises ValidationError naming the field
    # the validator is not a rubber stamp: a misspelt field fails strict validation
    broken = json.loads(json.dumps(resources["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, versions[-1], strict=True)


def test_servicemonitor_matches_its_crd_schema():
    # ServiceMonitor is the Prometheus Operator's CRD, absent from the Kubernetes schemas.
    # cloudcoil-models-prometheus-operator ships models generated from that CRD's openAPIV3Schema;
    # they ignore unknown fields, so a round trip that loses a field means the field is unknown.
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1",
                                 reason="cloudcoil-models-prometheus-operator (test extras) is not installed")
    doc = manifests()["ServiceMonitor"]
    parsed = models.ServiceMonitor.model_validate(doc)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc
    bad = json.loads(json.dumps(doc))
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"  # the CRD's duration pattern rejects it
    with pytest.raises(ValueError):
        models.ServiceMonitor.model_validate(bad)


def test_kubernetes_manifests_agree_with_each_other_and_the_config():
    r = manifests()
    config = load_config_text(r["ConfigMap"]["data"]["config.yaml"], env={})
    deployment = r["Deployment"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], r["Service"]["spec"]["selector"],
                     r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert r["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= r["Service"]["metadata"]["labels"].items()
    assert r["Service"]["metadata"]["name"] == "mtproxy"  # job="mtproxy" in the alerts
    [port] = container["ports"]
    assert config.server.host == "0.0.0.0" and config.server.port == port["containerPort"]
    assert r["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert r["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == r["Service"]["spec"]["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["args"] == ["serve", "--config", "/etc/mtproxy/config.yaml", "--host", "0.0.0.0"]
    # drain: preStop sleep, then SIGTERM and shutdown_grace for in-flight streams, within the grace
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert sleep + config.server.shutdown_grace < grace <= sleep + config.server.shutdown_grace + 10
    assert deployment["spec"]["replicas"] >= 2
    hpa = r["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert r["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]  # drains can proceed
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kustomize_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    kinds = {d["kind"] for d in yaml.safe_load_all(run(kubectl, "kustomize", str(K8S), cwd=ROOT)) if d}
    assert "Deployment" in kinds and "ServiceMonitor" in kinds


# --- compose and the image -----------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_is_consistent():
    c = compose()
    assert set(c["services"]) == {"mtproxy", "prometheus", "grafana"}
    for name, service in c["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    mtproxy = c["services"]["mtproxy"]
    assert "host.docker.internal:host-gateway" in mtproxy["extra_hosts"]
    assert (DEPLOY / mtproxy["build"]["context"] / mtproxy["build"]["dockerfile"]).is_file()
    config = load_config_text((DEPLOY / "mtproxy.yaml").read_text(), env={})
    assert config.server.host == "0.0.0.0"
    assert all("host.docker.internal" in b.url for b in config.backends)
    assert int(mtproxy["stop_grace_period"].rstrip("s")) > config.server.shutdown_grace
    prometheus = yaml.safe_load((PROM / "prometheus.yml").read_text())
    [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "mtproxy"]
    assert job["static_configs"][0]["targets"] == [f"mtproxy:{config.server.port}"]


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client with the compose plugin is not installed")
    out = run(docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet", cwd=DEPLOY)
    assert "error" not in out.lower(), out


def dockerignore_admits(path: str) -> bool:
    """Whether the build context keeps `path` (the subset of .dockerignore syntax used there)."""
    keep = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) or fnmatch.fnmatch(parts[i - 1], pattern)
               for i in range(1, len(parts) + 1)):
            keep = negate
    return keep


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    user = re.search(r"^USER (\S+)", text, re.M).group(1)
    assert user.split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*127\.0\.0\.1:8088/health", text, re.M)
    assert 'ENTRYPOINT ["mtproxy"]' in text
    assert 'CMD ["serve", "--config", "/etc/mtproxy/config.yaml", "--host", "0.0.0.0"]' in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists() and dockerignore_admits(source), f"COPY {source}: not in the context"
    assert not dockerignore_admits(".venv/bin/python") and not dockerignore_admits("tests/conftest.py")
    assert dockerignore_admits("mtproxy/runtimes/trtllm_fields.json")  # package data
    assert not dockerignore_admits("mtproxy/__pycache__/app.cpython-311.pyc")


@pytest.mark.parametrize("target", ["prometheus", "redis"])
def test_make_install_targets_are_idempotent(target):
    """`make prometheus` and `make redis` run scripts/install-deb.sh, which does nothing where the
    commands it installs are on PATH already."""
    script = ROOT / "scripts" / "install-deb.sh"
    assert script.stat().st_mode & 0o111
    recipe = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=30)
    assert recipe.returncode == 0, recipe.stderr
    package, *commands = recipe.stdout.split("install-deb.sh", 1)[1].split()
    assert package in ("prometheus", "redis-server") and commands
    if all(shutil.which(c) for c in commands):
        done = subprocess.run(["make", "-s", "-C", str(ROOT), target], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout == "", done.stderr
