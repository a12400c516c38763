"""Starting and stopping the benchmarked processes: the fake runtime, the floor, mtproxy and
optional peers. Each runs as its own process on 127.0.0.1, logs to a file under the work
directory, and dies with the runner (PR_SET_PDEATHSIG) even if the runner is killed.

Each also runs in a session of its own: with the kernel's autogroup scheduling
(/proc/sys/kernel/sched_autogroup_enabled), all processes of one session share one slice of the
CPU, so on a machine with other work the client, the fake and the proxy would otherwise squeeze
into the share of one."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import LOCALHOST, free_port

ROOT = Path(__file__).resolve().parent.parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy


def child_env() -> dict[str, str]:
    """The environment for children: no HTTP proxy variables, so nothing leaves 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOCALHOST},localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    ports: list[int]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.ports[0]}"

    @property
    def urls(self) -> list[str]:
        return [f"http://{LOCALHOST}:{p}" for p in self.ports]

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _spawn(name: str, argv: list[str], workdir: Path, *, stdout_pipe: bool,
           cwd: Path = ROOT) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / f"{name}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout_pipe else logf, stderr=logf,
                                preexec_fn=_die_with_parent, start_new_session=True)
    return proc, log


def start_announcing(name: str, module: str, args: list[str], workdir: Path, timeout: float = 30.0) -> Service:
    """Start ``python -m module args`` and wait for its ``LISTENING <port> …`` line."""
    proc, log = _spawn(name, [sys.executable, "-m", module, *args], workdir, stdout_pipe=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"{name} did not start within {timeout:g} s; see {log}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            line += os.read(proc.stdout.fileno(), 4096)  # unbuffered: select() sees what is left
    words = line.split(b"\n")[0].split()
    if not words or words[0] != b"LISTENING":
        proc.kill()
        raise RuntimeError(f"{name} printed {line!r} instead of LISTENING <port>")
    return Service(name, proc, [int(w) for w in words[1:]], log)


def wait_http(url: str, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            with _NO_PROXY.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} did not answer {url} within {timeout:g} s; see {log}")
        time.sleep(0.1)


def start_fake(workdir: Path, ports: int) -> Service:
    return start_announcing("fake-runtime", "bench.fake_runtime", ["--ports", str(ports)], workdir)


def start_floor(name: str, upstreams: list[str], workdir: Path) -> Service:
    args = [a for u in upstreams for a in ("--upstream", u)]
    return start_announcing(name, "bench.floor_proxy", args, workdir)


def mtproxy_config(upstreams: list[str], runtime: str, model: str) -> str:
    """An mtproxy config: every upstream a backend serving ``model``; background probes
    once an hour, so they never land inside a measurement."""
    lines = [
        "# generated by bench/run.py",
        f"server: {{host: {LOCALHOST}, port: 0}}",
        "health: {interval: 3600, timeout: 5, mtp_interval: 3600}",
        "backends:",
    ]
    for i, url in enumerate(upstreams):
        lines.append(f"  - {{name: fake{i}, runtime: {runtime}, url: \"{url}\", models: [{model}]}}")
    return "\n".join(lines) + "\n"


def start_mtproxy(name: str, upstreams: list[str], workdir: Path, *, runtime: str, model: str,
                  source: Path = ROOT) -> Service:
    return start_mtproxy_with(name, mtproxy_config(upstreams, runtime, model), workdir, source)


def checkout(rev: str, workdir: Path) -> Path:
    """The tree of git revision ``rev`` of this checkout, extracted under ``workdir``: an mtproxy
    to start from there (``python -m`` imports the package from its working directory first)."""
    dest = workdir / f"src-{rev.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def start_mtproxy_with(name: str, config_text: str, workdir: Path, source: Path = ROOT) -> Service:
    """``python -m mtproxy serve`` with this config (its server port replaced by a free one),
    from the package under ``source`` (this checkout by default)."""
    config = workdir / f"{name}.yaml"
    config.write_text(config_text)
    port = free_port()
    argv = [sys.executable, "-m", "mtproxy", "serve", "--config", str(config), "--host", LOCALHOST,
            "--port", str(port)]
    proc, log = _spawn(name, argv, workdir, stdout_pipe=False, cwd=source)
    wait_http(f"http://{LOCALHOST}:{port}/ready", proc, name, log, timeout=30)
    return Service(name, proc, [port], log)


# --- LiteLLM, an optional peer (bench/peers.md) ----------------------------------------------------

def litellm_python(explicit: str | None) -> str | None:
    """A Python that can import litellm: --litellm-python, $BENCH_LITELLM_PYTHON, this one, or
    /tmp/litellm-venv; None when there is none."""
    candidates = [explicit, os.environ.get("BENCH_LITELLM_PYTHON"), sys.executable,
                  "/tmp/litellm-venv/bin/python"]
    for python in candidates:
        if not python or not Path(python).exists():
            continue
        probe = subprocess.run([python, "-c", "import importlib.util as u, sys; "
                                "sys.exit(0 if u.find_spec('litellm') else 1)"],
                               env=child_env(), capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python
    return None


def litellm_config(upstream: str, model: str) -> str:
    return "\n".join([
        "# generated by bench/run.py: LiteLLM routing the bench model to the fake runtime",
        "model_list:",
        f"  - model_name: {model}",
        "    litellm_params:",
        f"      model: openai/{model}",
        f"      api_base: {upstream}/v1",
        "      api_key: unused",
        "litellm_settings:",
        "  telemetry: false",
        "  drop_params: true",
        "general_settings:",
        "  dangerously_permit_weak_or_unset_master_key: true  # 127.0.0.1 only, like the other targets",
    ]) + "\n"


def start_litellm(python: str, upstream: str, workdir: Path, *, model: str) -> Service:
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream, model))
    port = free_port()
    argv = [python, "-m", "litellm.proxy.proxy_cli", "--config", str(config), "--host", LOCALHOST,
            "--port", str(port), "--num_workers", "1"]
    log = workdir / "litellm.log"
    env = child_env()
    # offline: the bundled model cost map, no telemetry, no callbacks reaching out
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", LITELLM_LOG="ERROR",
               DISABLE_SCHEMA_UPDATE="True", LITELLM_DONT_SHOW_FEEDBACK_BOX="True")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, preexec_fn=_die_with_parent, start_new_session=True)
    wait_http(f"http://{LOCALHOST}:{port}/health/liveliness", proc, "litellm", log, timeout=120)
    return Service("litellm", proc, [port], log)
