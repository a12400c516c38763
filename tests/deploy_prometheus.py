"""A real Prometheus for tests/test_deploy.py: started on a free loopback port with a temporary
storage directory, queried over its HTTP API, stopped at the end. Also the small parsers the
test needs: Grafana variables and panel queries, and the commented runtime jobs of
deploy/prometheus/prometheus.yml."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

REQUIRE_ENV = "MTPROXY_REQUIRE_PROMETHEUS"


def require(tool: str) -> str:
    """The path of `tool`; skips the test when it is missing, or fails it when
    MTPROXY_REQUIRE_PROMETHEUS=1 (CI installs it with `make prometheus`)."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (`make prometheus` installs Debian's prometheus package)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Grafana -----------------------------------------------------------------------------------

# What Grafana puts in place of its variables, for a dashboard showing everything ("All" = .*).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def substitute(expr: str, variables: list[str]) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    assert "$" not in expr, f"an unknown variable is left in {expr!r}"
    return expr


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(panel title, PromQL, instant) for every target of every panel, rows included."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"], bool(t.get("instant"))))

    walk(dashboard["panels"])
    return out


# --- prometheus.yml ----------------------------------------------------------------------------

def uncomment_runtime_jobs(text: str) -> str:
    """prometheus.yml with the commented runtime jobs (between BEGIN/END markers) switched on."""
    out, inside = [], False
    for line in text.splitlines():
        mark = line.strip()
        if mark in ("# BEGIN runtime jobs", "# END runtime jobs"):
            inside = mark.startswith("# BEGIN")
            continue
        if inside:
            body = line.lstrip()
            assert body.startswith("# "), f"not a commented line in the runtime jobs: {line!r}"
            line = line[: len(line) - len(body)] + body[2:]
        out.append(line)
    return "\n".join(out) + "\n"


# --- the server --------------------------------------------------------------------------------

def finite(result: dict[str, Any]) -> bool:
    """True when a query result holds at least one finite number (NaN is no data to a panel)."""
    kind, data = result["resultType"], result["result"]
    if kind == "scalar":
        return math.isfinite(float(data[1]))
    if kind == "vector":
        return any(math.isfinite(float(s["value"][1])) for s in data)
    if kind == "matrix":
        return any(math.isfinite(float(v[1])) for s in data for v in s["values"])
    return False


class Prometheus:
    """`prometheus` with `config` (a dict, written as YAML) in `workdir`, on 127.0.0.1."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Prometheus:
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        (self.workdir / "data").mkdir()
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            await self._until_ready(30.0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def _until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with self.http.get(self.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout:g} s:\n{self.log_tail()}")

    async def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the body's `data`, or AssertionError naming the error."""
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/api/v1/query", data={"query": expr}) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query_range(self, expr: str, seconds: float) -> dict[str, Any]:
        end = time.time()
        async with self.http.post(f"{self.url}/api/v1/query_range", data={
                "query": expr, "start": end - seconds, "end": end, "step": 1}) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def scraped_after(self, instance: str, t: float, timeout: float = 20.0) -> float:
        """Wait until a successful scrape of `instance` that started after unix time `t` is
        stored; its start. (A failed one leaves staleness markers: gauges read as absent.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # timestamp() of the selector itself: of `up == 1` it is the evaluation's time, now
            up = f'up{{instance="{instance}"}}'
            result = (await self.query(f"timestamp({up}) and {up} == 1"))["result"]
            if result and float(result[0]["value"][1]) > t:
                return float(result[0]["value"][1])
            await asyncio.sleep(0.05)
        raise AssertionError(f"no scrape of {instance} after {t} within {timeout:g} s:\n{self.log_tail()}")

    async def rules_evaluated_after(self, t: float, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every rule group was evaluated after unix time `t`; the groups."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            groups = (await self.api("rules"))["groups"]
            if groups and all(_unix(g["lastEvaluation"]) > t for g in groups):
                return groups
            await asyncio.sleep(0.2)
        raise AssertionError(f"rules not evaluated after {t} within {timeout:g} s:\n{self.log_tail()}")


def _unix(rfc3339: str) -> float:
    # Prometheus writes nanoseconds ("2024-01-01T00:00:00.123456789Z"); Python parses micro.
    m = re.match(r"^(.*?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", rfc3339)
    base, frac, zone = m.group(1), m.group(2) or "0", m.group(3)
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    return stamp + float("0." + frac)
