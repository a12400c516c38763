"""The embedded runtime: llama.cpp's own HTTP server inside Python, started like llama-server.

``mtproxy-llama-server`` (also ``python -m mtproxy.embedded``) takes the llama-server flags a
config's ``launch`` uses, maps them to the settings of `xllamacpp <https://pypi.org/project/
xllamacpp/>`_ (MIT, Xorbits; ``pip install 'mtproxy[embedded]'``) and runs its ``Server``: the
routes, ``timings``, ``/props``, ``/slots``, ``/metrics`` and speculative decoding of the
llama.cpp build the wheel packages, with nothing to compile. Behind it the proxy speaks to it as to
any llama-server (``runtime: llamacpp``).

- An unknown flag is refused with a message and exit status 2 (argparse's), a model that does not
  load exits 1, a port already taken exits 1 before anything loads; SIGTERM / SIGINT stop the
  server cleanly (exit 0).
- Version: xllamacpp's build reports ``build_info`` ``b0-unknown``, but its release number carries
  the llama.cpp build it packages: ``YYYY.M.NNNN[.P]`` with NNNN the llama.cpp tag ``bNNNN``
  (xorbitsai/xllamacpp ``scripts/generate-release-version.sh``). The launcher publishes that in
  ``/props`` under ``ui_settings["mtproxy"]`` (llama-server's ``--ui-config`` channel, which
  ``/props`` serves as is), where the llamacpp adapter reads it, so the MTP registry's version gate
  (llama.cpp since b9180) judges the embedded build by the llama.cpp it really is.
"""

from __future__ import annotations

import argparse
import errno
import importlib.metadata
import json
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

PROG = "mtproxy-llama-server"
UI_KEY = "mtproxy"  # the key of /props ui_settings the launcher publishes its build under
_RELEASE = re.compile(r"^\d{4}\.\d{1,2}\.(\d+)(?:\.\d+)*$")


def llama_cpp_build(xllamacpp_version: str) -> str | None:
    """The llama.cpp build an xllamacpp release packages: ``2026.10.11549`` → ``b11549``
    (``2026.4.8672.1``, a packaging fix, → ``b8672``). None for the 0.x releases, whose number
    does not carry it."""
    m = _RELEASE.match(xllamacpp_version.strip())
    return f"b{m.group(1)}" if m else None


def build_info(xllamacpp_version: str) -> dict[str, str]:
    """What the launcher publishes in ``/props`` ``ui_settings["mtproxy"]``."""
    info = {"runtime": "xllamacpp", "xllamacpp": xllamacpp_version}
    if build := llama_cpp_build(xllamacpp_version):
        info["build_info"] = f"{build} (xllamacpp {xllamacpp_version})"
    return info


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The llama-server flags the launcher understands, under llama-server's own names."""
    p = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="llama.cpp's server embedded in Python (xllamacpp), started with llama-server's flags.")
    p.add_argument("--version", action="store_true", help="print the llama.cpp build and exit")
    p.add_argument("-m", "--model", help="path of the GGUF model file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080, help="0: any free port")
    p.add_argument("-a", "--alias", help="model names the API serves it under, comma-separated")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size (0: the model's)")
    p.add_argument("-n", "--n-predict", "--predict", type=int, help="default max tokens (-1: unlimited)")
    p.add_argument("-t", "--threads", type=int, help="generation threads (default: as llama.cpp picks)")
    p.add_argument("-tb", "--threads-batch", type=int, help="prompt-processing threads")
    p.add_argument("-np", "--parallel", type=int, default=1, help="slots (requests decoded at once)")
    p.add_argument("-b", "--batch-size", type=_positive)
    p.add_argument("-ub", "--ubatch-size", type=_positive)
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", type=int)
    p.add_argument("--metrics", action="store_true", help="serve Prometheus metrics on /metrics")
    p.add_argument("--slots", dest="slots", action="store_true", default=True)
    p.add_argument("--no-slots", dest="slots", action="store_false")
    p.add_argument("--props", action="store_true", help="allow POST /props")
    p.add_argument("--embedding", "--embeddings", action="store_true", help="serve embeddings only")
    p.add_argument("--jinja", dest="jinja", action="store_true", default=None)
    p.add_argument("--no-jinja", dest="jinja", action="store_false")
    p.add_argument("--api-key", help="keys clients must send, comma-separated")
    p.add_argument("--no-webui", dest="webui", action="store_false", default=True)
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=True)
    p.add_argument("--cache-reuse", type=int)
    p.add_argument("--threads-http", type=int)
    p.add_argument("-to", "--timeout", type=int, help="server read/write timeout, seconds")
    p.add_argument("-lv", "--verbosity", "--log-verbosity", type=int)
    p.add_argument("--spec-type", help="speculative decoding types, comma-separated "
                   "(none, draft-mtp, ngram-simple, ngram-map-k, ngram-map-k4v, ngram-mod, ngram-cache, …)")
    p.add_argument("--spec-draft-n-max", "--draft-max", "--draft", type=int, help="tokens drafted per step, at most")
    p.add_argument("--spec-draft-n-min", "--draft-min", type=int, help="tokens drafted per step, at least")
    p.add_argument("--spec-draft-p-min", "--draft-p-min", type=float)
    p.add_argument("-md", "--spec-draft-model", "--model-draft", help="draft model GGUF")
    return p


class LaunchError(Exception):
    """A flag value the runtime cannot start with; the message says which (exit status 2)."""


class Unavailable(Exception):
    """The host or port cannot be listened on (exit status 1)."""


def _speculative_types(xllamacpp: Any, names: str) -> list[Any]:
    enum = xllamacpp.common_speculative_type
    known = {member.removeprefix("COMMON_SPECULATIVE_TYPE_").lower().replace("_", "-"): value
             for member, value in enum.__members__.items() if not member.endswith("_COUNT")}
    chosen = [known[enum.COMMON_SPECULATIVE_TYPE_NONE.name.removeprefix("COMMON_SPECULATIVE_TYPE_").lower()]]
    for name in (n.strip() for n in names.split(",")):
        if name not in known:
            raise LaunchError(f"--spec-type: unknown type {name!r} (known: {', '.join(sorted(known))})")
        if name != "none":
            chosen.append(known[name])  # appended to "none", as llama-server's --spec-type does
    return chosen


def to_params(args: argparse.Namespace, xllamacpp: Any, version: str) -> Any:
    """xllamacpp's ``CommonParams`` for the parsed flags."""
    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    if args.alias:
        p.model_alias = {a.strip() for a in args.alias.split(",") if a.strip()}
    p.n_ctx = args.ctx_size
    p.n_parallel = args.parallel
    if args.n_predict is not None:
        p.n_predict = args.n_predict
    # llama-server's postprocess_cpu_params (common/arg.cpp), which xllamacpp does not run: prompt
    # threads default to -t, and the draft (MTP head, draft model) uses the same as the target
    # (left at -1, the draft context ran on ggml's default of 4 threads: x1.02 instead of x1.4
    # with draft-mtp at -t 1 on 2 cores)
    threads = args.threads
    threads_batch = args.threads_batch if args.threads_batch is not None else threads
    if threads is not None:
        p.cpuparams.n_threads = p.speculative.draft.cpuparams.n_threads = threads
    if threads_batch is not None:
        p.cpuparams_batch.n_threads = p.speculative.draft.cpuparams_batch.n_threads = threads_batch
    if args.batch_size is not None:
        p.n_batch = args.batch_size
    if args.ubatch_size is not None:
        p.n_ubatch = args.ubatch_size
    if args.gpu_layers is not None:
        p.n_gpu_layers = args.gpu_layers
    p.endpoint_metrics = args.metrics
    p.endpoint_slots = args.slots
    p.endpoint_props = args.props
    p.embedding = args.embedding
    if args.jinja is not None:
        p.use_jinja = args.jinja
    if args.api_key:
        p.api_keys = [k for k in args.api_key.split(",") if k]
    p.ui = args.webui
    p.warmup = args.warmup
    if args.cache_reuse is not None:
        p.n_cache_reuse = args.cache_reuse
    if args.threads_http is not None:
        p.n_threads_http = args.threads_http
    if args.timeout is not None:
        p.timeout_read = p.timeout_write = args.timeout
    if args.verbosity is not None:
        p.verbosity = args.verbosity
    if args.spec_type:
        p.speculative.types = _speculative_types(xllamacpp, args.spec_type)
    draft = p.speculative.draft
    if args.spec_draft_n_max is not None:
        draft.n_max = args.spec_draft_n_max
    if args.spec_draft_n_min is not None:
        draft.n_min = args.spec_draft_n_min
    if args.spec_draft_p_min is not None:
        draft.p_min = args.spec_draft_p_min
    if args.spec_draft_model:
        draft.mparams.path = args.spec_draft_model
    p.ui_config_json = json.dumps({UI_KEY: build_info(version)})
    return p


def _check_port(host: str, port: int) -> None:
    """Fail before loading anything when another process already listens on host:port."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind(addr)
        except OSError as exc:
            why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise Unavailable(f"cannot listen on {host}:{port}: {why}") from None


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # unknown flag or bad value: usage + message, exit 2
    try:
        import xllamacpp
    except ImportError:
        _say("the embedded runtime is not installed: pip install 'mtproxy[embedded]'")
        return 1
    version = importlib.metadata.version("xllamacpp")
    if args.version:
        build = llama_cpp_build(version)
        info = getattr(xllamacpp, "BUILD_INFO", {}) or {}
        print(f"version: {build.removeprefix('b') if build else 'unknown'} (xllamacpp {version})")
        print(f"built with {info.get('compiler', 'unknown')} for {info.get('build_target', 'unknown')}")
        return 0
    if not args.model:
        _say("no model: pass -m PATH (a GGUF file)")
        return 2
    if not Path(args.model).is_file():
        _say(f"model file not found: {args.model}")
        return 1
    try:
        params = to_params(args, xllamacpp, version)
    except LaunchError as exc:
        _say(str(exc))
        return 2
    try:
        _check_port(args.host, args.port)
    except Unavailable as exc:
        _say(str(exc))
        return 1
    try:
        server = xllamacpp.Server(params)  # returns once the model is loaded and the port listens
    except RuntimeError as exc:
        _say(f"the server did not start (model {args.model}): {exc}")
        return 1
    stop = threading.Event()
    # xllamacpp installed its own SIGINT/SIGTERM handlers that end the decode loop but leave this
    # thread waiting; replace them, then let the Server's destructor stop HTTP and the loop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _say(f"serving {args.model} on {server.listening_address} (xllamacpp {version})")
    while not stop.wait(1.0):
        pass
    _say("stopping")
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
