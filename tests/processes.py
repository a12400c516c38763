"""Servers the tests run as child processes of their own (tests/redis_server.py, the real runtimes
of tests/real/conftest.py): stopping one."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it is still running 10 s later; nothing if it has exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
