"""The embedded runtime's launcher (mtproxy/embedded.py): llama-server's flags mapped to
xllamacpp's settings, its errors and exit statuses, and the version it publishes.

The flag mapping is checked on xllamacpp's real ``CommonParams``; the exit statuses by running the
launcher as the proxy does (a subprocess). Serving a model is in tests/real/ (embedded_server)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mtproxy import embedded
from mtproxy.launcher import command
from mtproxy.runtimes.llamacpp import LlamaCpp

xllamacpp = pytest.importorskip("xllamacpp", reason="the embedded runtime: pip install 'mtproxy[embedded]'")


def launch(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtproxy.embedded", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def params(*argv: str):
    return embedded.to_params(embedded.parser().parse_args(list(argv)), xllamacpp, "2026.10.11549")


# --- the version -------------------------------------------------------------------------------


@pytest.mark.parametrize("release, build", [
    ("2026.10.11549", "b11549"),
    ("2026.4.8672.1", "b8672"),  # a packaging fix of the same llama.cpp build
    ("2026.4.8672", "b8672"),
    ("0.2.14", None),  # the 0.x releases do not carry the build
    ("garbage", None),
])
def test_release_number_names_the_llama_cpp_build(release: str, build: str | None) -> None:
    assert embedded.llama_cpp_build(release) == build


def test_adapter_takes_the_published_build_only_when_the_runtime_has_none() -> None:
    published = {"mtproxy": embedded.build_info("2026.10.11549")}
    adapter = LlamaCpp()
    assert adapter.version_from({"build_info": "b0-unknown", "ui_settings": published}) == \
        "b11549 (xllamacpp 2026.10.11549)"
    # a llama-server with a release number of its own keeps it
    assert adapter.version_from({"build_info": "b9300-abc", "ui_settings": published}) == "b9300-abc"
    assert adapter.version_from({"build_info": "b1-0c1e570"}) == "b1-0c1e570"
    assert adapter.version_from({"build_info": "b0-unknown", "ui_settings": {"mtproxy": "x"}}) == "b0-unknown"
    assert adapter.version_from({"build_info": "b0-unknown", "ui_settings": []}) == "b0-unknown"


# --- flags to settings ---------------------------------------------------------------------------


def test_flags_map_to_xllamacpp_settings() -> None:
    p = params("-m", "/models/x.gguf", "--host", "127.0.0.2", "--port", "8123", "--alias", "a, b", "-c", "2048",
               "-t", "3", "-tb", "2", "-np", "4", "-b", "256", "-ub", "128", "-ngl", "0", "-n", "64", "--metrics",
               "--no-slots", "--jinja", "--api-key", "k1,k2", "--no-webui", "--no-warmup", "-to", "30",
               "--spec-type", "draft-mtp", "--spec-draft-n-max", "6", "--spec-draft-n-min", "1")
    assert p.model.path == "/models/x.gguf"
    assert list(p.hostnames) == ["127.0.0.2"] and p.port == 8123
    assert set(p.model_alias) == {"a", "b"}
    assert (p.n_ctx, p.n_parallel, p.n_batch, p.n_ubatch, p.n_gpu_layers, p.n_predict) == (2048, 4, 256, 128, 0, 64)
    assert p.cpuparams.n_threads == 3 and p.cpuparams_batch.n_threads == 2
    assert p.endpoint_metrics is True and p.endpoint_slots is False and p.use_jinja is True
    assert list(p.api_keys) == ["k1", "k2"]
    assert p.ui is False and p.warmup is False and p.timeout_read == p.timeout_write == 30
    types = xllamacpp.common_speculative_type
    # appended to "none", as llama-server's --spec-type does ("none,draft-mtp" in /slots)
    assert list(p.speculative.types) == [types.COMMON_SPECULATIVE_TYPE_NONE, types.COMMON_SPECULATIVE_TYPE_DRAFT_MTP]
    assert p.speculative.draft.n_max == 6 and p.speculative.draft.n_min == 1
    assert json.loads(p.ui_config_json) == {"mtproxy": {
        "runtime": "xllamacpp", "xllamacpp": "2026.10.11549", "build_info": "b11549 (xllamacpp 2026.10.11549)"}}


def test_defaults_are_llama_servers() -> None:
    p = params("-m", "x.gguf")
    assert list(p.hostnames) == ["127.0.0.1"] and p.port == 8080
    assert p.endpoint_metrics is False and p.endpoint_slots is True
    assert list(p.speculative.types) == [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_NONE]


def test_several_speculative_types() -> None:
    types = xllamacpp.common_speculative_type
    p = params("-m", "x.gguf", "--spec-type", "ngram-simple,draft-mtp")
    assert list(p.speculative.types) == [types.COMMON_SPECULATIVE_TYPE_NONE, types.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE,
                                         types.COMMON_SPECULATIVE_TYPE_DRAFT_MTP]


# --- errors and exit statuses -------------------------------------------------------------------


def test_unknown_flag_is_refused_with_status_2() -> None:
    proc = launch("-m", "x.gguf", "--flash-attn-wrong")
    assert proc.returncode == 2
    assert "unrecognized arguments: --flash-attn-wrong" in proc.stderr


def test_abbreviated_flag_is_not_guessed() -> None:
    proc = launch("-m", "x.gguf", "--met")  # argparse would take it for --metrics by default
    assert proc.returncode == 2 and "--met" in proc.stderr


def test_bad_values_are_refused_with_status_2(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    proc = launch("-m", str(model), "--spec-type", "draft-magic")
    assert proc.returncode == 2 and "unknown type 'draft-magic'" in proc.stderr and "draft-mtp" in proc.stderr
    proc = launch("-m", str(model), "--port", "70000")
    assert proc.returncode == 2 and "--port" in proc.stderr
    proc = launch("--port", "8081")
    assert proc.returncode == 2 and "no model" in proc.stderr


def test_missing_model_file_exits_1() -> None:
    proc = launch("-m", "/nonexistent/model.gguf", "--port", "0")
    assert proc.returncode == 1
    assert "model file not found: /nonexistent/model.gguf" in proc.stderr


def test_a_file_that_is_not_a_model_exits_1(tmp_path: Path) -> None:
    model = tmp_path / "not-a-model.gguf"
    model.write_bytes(b"this is not a GGUF file" * 10)
    proc = launch("-m", str(model), "--host", "127.0.0.1", "--port", "0")
    assert proc.returncode == 1
    assert "did not start" in proc.stderr


def test_port_in_use_exits_1_before_loading(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = launch("-m", str(model), "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: already in use" in proc.stderr


def test_version_names_the_llama_cpp_build() -> None:
    proc = launch("--version")
    assert proc.returncode == 0, proc.stderr
    release = embedded.importlib.metadata.version("xllamacpp")
    build = embedded.llama_cpp_build(release)
    assert build is not None, release
    assert proc.stdout.splitlines()[0] == f"version: {build[1:]} (xllamacpp {release})"


# --- the command the config names ----------------------------------------------------------------


def test_a_bare_command_is_found_beside_this_python_when_not_on_path() -> None:
    beside = Path(sys.executable).parent / "mtproxy-llama-server"
    if not beside.is_file():
        pytest.skip(f"mtproxy is not installed as a package beside {sys.executable}")
    assert command("mtproxy-llama-server", {"PATH": "/nonexistent"}) == str(beside)
    assert command("sh", {"PATH": os.defpath}).endswith("/sh")  # PATH first
    assert command("/bin/echo", {"PATH": ""}) == "/bin/echo"
    assert command("no-such-program-here", {"PATH": "/nonexistent"}) == "no-such-program-here"


async def test_a_managed_backend_that_cannot_load_quotes_the_launcher(tmp_path: Path) -> None:
    """What a user sees when the shipped config's model file is missing: the launcher's own line."""
    from mtproxy.errors import UpstreamUnreachable
    from mtproxy.launcher import ManagedProcess

    async def never_ready() -> bool:
        return False

    proc = ManagedProcess("smollm2", ["mtproxy-llama-server", "-m", str(tmp_path / "missing.gguf"), "--port", "0"],
                          {"PATH": "/nonexistent"}, never_ready, ready_timeout=60)
    with pytest.raises(UpstreamUnreachable) as failed:
        await proc.ensure_running()
    await proc.close()
    assert "exited with status 1" in str(failed.value)
    assert "model file not found" in str(failed.value)
    await asyncio.sleep(0)


# --- the README's first steps --------------------------------------------------------------------


def test_readme_first_example_names_a_model_the_shipped_config_serves() -> None:
    import re

    from mtproxy.config import load_config, load_config_text

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = re.search(r"```python\n(from openai import OpenAI.*?)```", readme, re.S)
    assert first is not None
    [model] = re.findall(r'model="([^"]+)"', first.group(1))
    shipped = load_config(Path(__file__).resolve().parents[1] / "config.yaml", env={})
    served = {m for b in shipped.backends for m in (b.models or [])}
    aliases = {a: name for name, m in shipped.models.items() for a in (m.aliases or [])}
    assert aliases.get(model, model) in served, (model, served, aliases)
    # the shipped config launches the embedded runtime unless MTPROXY_LLAMA_SERVER says otherwise
    [managed] = [b for b in shipped.backends if b.launch]
    assert managed.launch[0] == "mtproxy-llama-server"
    # the README's "add your own runtime" example is a valid backends list
    [example] = re.findall(r"```yaml\n(backends:.*?)```", readme, re.S)
    assert load_config_text(example, env={}).backends[0].launch[0] == "llama-server"
