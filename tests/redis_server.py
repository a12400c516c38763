"""A real redis-server for the shared response store's tests: started on a free loopback port in
a temporary directory, nothing saved to disk, stopped at the end.

redis-server is Debian's package (`make redis`: scripts/install-deb.sh, run by `make test`). When
it is missing the tests skip, saying so; with MTPROXY_REQUIRE_REDIS=1 (set by `make test`) they
fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.common import free_port

from .processes import stop_process

REQUIRE_ENV = "MTPROXY_REQUIRE_REDIS"
START_TIMEOUT = 30.0


def redis_server_path() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (`make redis` installs Debian's redis-server package)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(reason)
    return path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_path()
        log = self.workdir / "redis.log"
        for _ in range(3):  # a port taken between picking and binding: pick another
            self.port = free_port()
            # redis-server has no `--port 0`: a free port picked here; no RDB/AOF files, loopback only
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir), "--logfile", str(log), "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        pytest.fail(f"redis-server did not start; its log ends:\n{tail}", pytrace=False)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)
