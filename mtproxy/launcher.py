"""Managed backends: runtimes that mtproxy starts, watches and stops itself (as llama-swap does).

A backend with ``launch`` is a child process: :class:`ManagedProcess` starts it, waits until its
ready check passes (or it exits, or ``ready_timeout`` passes), tells its owner when it exits on
its own, and stops it (SIGTERM, then SIGKILL). When to start, restart, swap out or idle-stop it is
decided by its owner (swap.py). Its output goes to the log (``mtproxy.launch.<name>``, DEBUG); the
last lines are quoted when a start fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import UpstreamUnreachable

log = logging.getLogger("mtproxy.launch")

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


def command(name: str, env: dict[str, str]) -> str:
    """The program to run for ``name``: a bare name is looked up on PATH and, when it is not
    there, beside this Python (the commands mtproxy installs, such as ``mtproxy-llama-server``,
    when its virtual environment is not activated)."""
    if os.sep in name:
        return name
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    if found := shutil.which(name, path=path):
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else name


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], Awaitable[bool]],
                 ready_timeout: float, on_exit: Callable[[int | None], None] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.on_exit = on_exit  # called when a ready process exits without being stopped
        self.proc: asyncio.subprocess.Process | None = None
        self.running = False  # started and ready
        self.failure: str | None = None  # why the last start failed
        self._lock = asyncio.Lock()
        self._stopping = False
        self._tail: deque[str] = deque(maxlen=20)
        self._tasks: set[asyncio.Task] = set()
        self._log = logging.getLogger(f"mtproxy.launch.{name}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def ensure_running(self) -> None:
        """Start the process if it is not running and wait until it is ready."""
        if self.running:
            return
        async with self._lock:
            if self.running:
                return
            await self._start()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        log.info("starting backend %s: %s", self.name, " ".join(self.argv))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                command(self.argv[0], self.env), *self.argv[1:], env={**os.environ, **self.env}, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.failure = f"cannot launch {self.argv[0]}: {exc.strerror or exc}"
            raise UpstreamUnreachable(f"Backend {self.name}: {self.failure}") from None
        proc = self.proc
        self._spawn(self._pump(proc))
        deadline = loop.time() + self.ready_timeout
        while loop.time() < deadline:
            if proc.returncode is not None:
                break
            if await self.ready():
                self.running = True
                self.failure = None
                log.info("backend %s is ready (pid %d)", self.name, proc.pid)
                self._spawn(self._watch(proc))
                return
            await asyncio.sleep(0.1)
        code = proc.returncode
        await self._terminate(proc)
        tail = " | ".join(list(self._tail)[-5:])
        self.failure = (f"exited with status {code} while starting" if code is not None
                        else f"not ready within {self.ready_timeout:g} s") + (f"; last output: {tail}" if tail else "")
        log.warning("backend %s failed to start: %s", self.name, self.failure)
        raise UpstreamUnreachable(f"Backend {self.name} {self.failure}")

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            self._tail.append(text)
            self._log.debug("%s", text)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or proc is not self.proc:
            return
        self.running = False
        log.warning("backend %s exited with status %s", self.name, code)
        if self.on_exit is not None:
            self.on_exit(code)

    async def stop(self) -> None:
        self._stopping = True
        self.running = False
        proc = self.proc
        if proc is not None and proc.returncode is None:
            await self._terminate(proc)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def close(self) -> None:
        """On proxy exit: stop the process and every task watching it."""
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
