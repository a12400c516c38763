"""From `git clone` to a first answer, as a new user gets there (issue 17): no compiler, no cache.

    .venv/bin/python -m bench.fresh_clone [--repo PATH] [--keep]   # = make fresh-clone-check

1. clones the committed HEAD of ``--repo`` (default: this checkout) into a new directory;
2. runs ``make serve SERVE_ARGS=--port 0`` there with every C/C++ compiler and cmake replaced by a
   shim that records its use and fails, no MTPROXY_LLAMA_SERVER, no llama-server on PATH and
   pip's cache off (``PIP_NO_CACHE_DIR``): what a fresh machine has;
3. as soon as the proxy listens, sends the README's first request (model ``smollm2``, streamed,
   with the official ``openai`` client) until it answers;
4. prints the wall time from the clone to the first streamed token, split into clone, install and
   first answer, and whether a compiler was called. Exit status 0 when a token came in under
   ``--limit`` seconds (60) with no compiler used, else 1.

Slow (it installs from the registry into a new virtual environment) and so not in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++", "cmake", "ninja")


def shims(where: Path, log: Path) -> Path:
    where.mkdir(parents=True)
    for name in COMPILERS:
        shim = where / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 1\n')
        shim.chmod(0o755)
    return where


def clean_path(shim_dir: Path) -> str:
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not (Path(p) / "llama-server").exists() and Path(p).resolve() != Path(sys.executable).parent.resolve()]
    return os.pathsep.join([str(shim_dir), *keep])


def first_token(url: str, deadline: float) -> str:
    from openai import OpenAI  # the README's example, as written there

    client = OpenAI(base_url=url + "/v1", api_key="unused-unless-server.api_keys-is-set", max_retries=0, timeout=60)
    last = ""
    while time.monotonic() < deadline:
        try:
            stream = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    stream.close()
                    return chunk.choices[0].delta.content
        except Exception as exc:  # noqa: BLE001 (any failure: say it and try again until the deadline)
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise TimeoutError(f"no answer before the deadline; last error: {last}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fresh_clone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--limit", type=float, default=60.0, help="seconds allowed from clone to first token")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mtproxy-fresh-"))
    used = work / "compilers-used.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MTPROXY_LLAMA_SERVER", "VIRTUAL_ENV", "PYTHONPATH")}
    shim_dir = shims(work / "no-compilers", used)
    env.update(PATH=clean_path(shim_dir), CC=str(shim_dir / "cc"), CXX=str(shim_dir / "c++"), PIP_NO_CACHE_DIR="1",
               MTPROXY_CACHE=str(work / "cache"))
    proc = None
    t0 = time.monotonic()
    try:
        subprocess.run(["git", "clone", "--quiet", str(args.repo), str(work / "mtproxy")], check=True, env=env)
        t_clone = time.monotonic()
        proc = subprocess.Popen(["make", "serve", "SERVE_ARGS=--port 0"], cwd=work / "mtproxy", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert proc.stdout is not None
        url, lines = None, []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if m := re.search(r"listening on (http://\S+)", line):
                url = m.group(1)
                break
        if url is None:
            print("\n".join(lines[-30:]))
            print(f"FAIL: make serve exited ({proc.wait()}) before the proxy listened")
            return 1
        t_listen = time.monotonic()
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
        token = first_token(url, t0 + max(args.limit, 300))
        t_token = time.monotonic()
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            compilers = used.read_text() if used.exists() else ""
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            used.write_text(compilers)
    compilers = used.read_text().splitlines() if used.exists() else []
    total = t_token - t0
    print(f"clone {t_clone - t0:.1f} s, make serve until listening {t_listen - t_clone:.1f} s, "
          f"first streamed token {t_token - t_listen:.1f} s later ({token!r}): {total:.1f} s in all")
    print(f"compilers called: {len(compilers)}" + "".join(f"\n  {c}" for c in compilers[:10]))
    if args.keep:
        print(f"clone kept in {work / 'mtproxy'}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    ok = total < args.limit and not compilers
    print(("PASS" if ok else "FAIL") + f": {total:.1f} s (limit {args.limit:g} s), {len(compilers)} compiler calls")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
