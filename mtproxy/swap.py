"""Starting, stopping and swapping the backends mtproxy manages, without losing a request.

A *member* is a backend mtproxy can start and stop: one it launches itself (``launch``, a child
process) or one whose runtime loads and unloads models on request (llama.cpp's router mode,
Ollama, vLLM's sleep mode: ``Runtime.swaps``). Its state is ``stopped``, ``starting``,
``ready``, ``draining`` or ``stopping``. Members of a ``groups:`` entry share its limit
(``max_running`` and/or a ``memory`` budget their declared ``memory`` must fit in); any other
member is a group of its own without a limit.

A request for a ready member goes through at once. Any other waits in its group's queue (bounded
per member by ``max_queue`` and in time by ``queue_timeout``: 429 with ``Retry-After`` past
either), ordered by ``priority`` then arrival. The group serves its queue in that order: a
stopped member that fits is started; one that does not fit makes room by draining *victims*
(ready, never ``pinned``, idle ones before busy ones, least recently used first): a victim
takes no new request, finishes those it has (at most ``drain_timeout``), is stopped, and then the
waiting member starts. When a member is ready, every request queued for it goes through at once
(one swap serves them all). No thrash: a member busy serving requests is not a victim before it
has run ``min_run`` seconds, and a member being drained that is wanted again before anything else
is taken back. A start that fails (the process exits, is not ready within ``ready_timeout``, the
runtime refuses the load) fails the requests waiting for it with 503 quoting the runtime's last
words, frees the slot, and the next request tries again.

A member that is not in a limited group and exits on its own is restarted with backoff (as
before groups); one in a limited group is left stopped, its slot free, and starts again when a
request wants it. ``idle_stop`` stops a member after that many seconds without requests.

A runtime mtproxy did not launch may load or unload a model by itself (Ollama's keep_alive
expiring, llama.cpp's router evicting under --models-max, an operator): at start-up
(:meth:`Swapper._adopt`) and then once per health-probe round (:meth:`Swapper.reconcile`) each
such member's runtime is asked what it has loaded, and the member follows: a ready member whose
model is gone is stopped (``runtime_unloaded``), a stopped one whose model is loaded counts as
running while its group has room and is unloaded when it has none. A member with requests in
flight, or starting, draining or stopping, is left to the swapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from yarl import URL

from .config import BackendConfig, Config, GroupConfig
from .errors import ProxyError, UpstreamUnreachable
from .launcher import ManagedProcess
from .limits import Overloaded
from .runtimes import BackendHTTP, Runtime
from .runtimes.base import SwapFailed

log = logging.getLogger("mtproxy.swap")

State = Literal["stopped", "starting", "ready", "draining", "stopping"]
MAX_BACKOFF = 30.0
UNSURE_LOG_SECONDS = 600.0  # a runtime that cannot say what it has loaded: logged this rarely


class StartFailed(ProxyError):
    """A member could not be started: the runtime's own last words are in the message."""

    status = 503
    type = "service_unavailable"
    code = "backend_start_failed"


class SwapBackend(Protocol):
    """What a member needs of its backend (backends.Backend)."""

    name: str
    config: BackendConfig
    runtime: Runtime
    base_url: URL
    headers: dict[str, str]


class Events(Protocol):
    """Where starts, stops, swaps and queue waits are counted (metrics/instruments.py)."""

    def started(self, backend: str, reason: str, seconds: float) -> None: ...
    def stopped(self, backend: str, reason: str) -> None: ...
    def swapped(self, group: str) -> None: ...
    def waited(self, backend: str, seconds: float) -> None: ...


class Driver(Protocol):
    """How a member is started and stopped."""

    async def start(self) -> None:
        """Return once the member serves; raise StartFailed."""
        ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...


class ProcessDriver:
    """A launched child process (launcher.ManagedProcess)."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process

    async def start(self) -> None:
        try:
            await self.process.ensure_running()
        except UpstreamUnreachable as err:
            raise StartFailed(err.message) from None

    async def stop(self) -> None:
        await self.process.stop()

    async def close(self) -> None:
        await self.process.close()


class ApiDriver:
    """A runtime that loads and unloads its models on request (Runtime.swaps)."""

    def __init__(self, backend: SwapBackend, session: aiohttp.ClientSession, timeout: float) -> None:
        self.backend = backend
        self.session = session
        self.timeout = timeout  # per request of the runtime's API; the load as a whole: ready_timeout

    def _http(self) -> BackendHTTP:
        return BackendHTTP(self.session, self.backend.base_url, self.backend.headers, self.timeout)

    def _models(self) -> tuple[str, ...]:
        return tuple(self.backend.config.models or ())

    async def start(self) -> None:
        limit = self.backend.config.ready_timeout
        try:
            async with asyncio.timeout(limit):
                await self.backend.runtime.load(self._http(), self._models())
        except SwapFailed as err:
            raise StartFailed(f"Backend {self.backend.name} could not load its model: {err.message}") from None
        except TimeoutError:
            raise StartFailed(f"Backend {self.backend.name}: model not loaded within {limit:g} s") from None
        except (OSError, aiohttp.ClientError) as exc:
            raise StartFailed(f"Backend {self.backend.name} unreachable while loading: {exc}") from None

    async def stop(self) -> None:
        try:
            await self.backend.runtime.unload(self._http(), self._models())
        except (SwapFailed, OSError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("backend %s: unloading failed: %s", self.backend.name, getattr(exc, "message", exc))

    async def loaded(self) -> bool | None:
        """Whether the runtime has the backend's models loaded now (None: it cannot tell)."""
        return await self.backend.runtime.loaded(self._http(), self._models())

    async def close(self) -> None:
        """On exit mtproxy leaves a runtime it did not launch as it is."""


@dataclass(eq=False)
class Ticket:
    """A request (or an admin start) waiting for its member."""

    member: Member
    key: tuple[int, int]  # (-priority, arrival)
    since: float
    reason: str  # why it wants the member started: "request", "admin", "startup"
    future: asyncio.Future[None] = field(repr=False)


class Member:
    """A backend mtproxy starts and stops, and what its group knows of it."""

    def __init__(self, backend: SwapBackend, driver: Driver, process: ManagedProcess | None) -> None:
        self.backend = backend
        self.name = backend.name
        self.driver = driver
        self.process = process
        self.group: Group | None = None
        self.state: State = "stopped"
        self.admitted = 0  # requests let through and not finished
        self.waiting = 0  # tickets queued
        self.ready_at = 0.0
        self.last_used = 0.0
        self.last_start: float | None = None  # seconds the last successful start took
        self.failure: str | None = None  # why the last start failed
        self.restarts = 0
        self.starts = 0  # starts begun: a runtime's word on what it has loaded from before one is stale
        self.idle = asyncio.Event()  # set while nothing is admitted
        self.idle.set()
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def config(self) -> BackendConfig:
        return self.backend.config

    @property
    def memory(self) -> int:
        return self.backend.config.memory or 0

    def release(self) -> None:
        """A request let through by ``Swapper.admit`` has finished."""
        self.admitted -= 1
        self.last_used = asyncio.get_running_loop().time()
        if self.admitted == 0:
            self.idle.set()
            self._arm_idle()
            group = self.group
            if group is not None and group.queue and self.state == "ready":
                group.kick()  # idle now: a victim at once, whatever min_run says

    def _arm_idle(self) -> None:
        idle_stop = self.config.idle_stop
        if idle_stop is None or self.group is None:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(idle_stop, self.group.idle_check, self)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "queue": self.waiting, "in_flight": self.admitted,
                "last_start_seconds": None if self.last_start is None else round(self.last_start, 3),
                "failure": self.failure, "pinned": self.config.pinned, "priority": self.config.priority,
                "group": self.group.name if self.group is not None and self.group.limited else None}


class Group:
    """Members sharing a limit, and the queue of requests waiting for one of them."""

    def __init__(self, name: str, config: GroupConfig | None, swapper: Swapper) -> None:
        self.name = name
        self.config = config
        self.limited = config is not None
        self.swapper = swapper
        self.members: list[Member] = []
        self.queue: list[Ticket] = []  # kept sorted by Ticket.key
        self.swaps = 0
        self._making_room = False  # members are being drained for a waiting one
        self._retry: asyncio.TimerHandle | None = None
        self.adopting = 0  # members whose runtime is being asked what it has loaded (Swapper.adopt)

    # --- limits -------------------------------------------------------------------------------

    @property
    def max_queue(self) -> int:
        return self.config.max_queue if self.config else 256

    @property
    def queue_timeout(self) -> float:
        return self.config.queue_timeout if self.config else self.swapper.default_wait

    def _fits(self, member: Member, leaving: Iterable[Member] = ()) -> bool:
        cfg = self.config
        if cfg is None:
            return True
        gone = set(leaving)
        live = [m for m in self.members if m.state != "stopped" and m is not member and m not in gone]
        if cfg.max_running is not None and len(live) + 1 > cfg.max_running:
            return False
        return cfg.memory is None or sum(m.memory for m in live) + member.memory <= cfg.memory

    # --- admission ----------------------------------------------------------------------------

    async def admit(self, member: Member, reason: str = "request") -> None:
        """Return once ``member`` is ready and this request is counted on it."""
        if member.state == "ready":
            member.admitted += 1
            member.idle.clear()
            return
        if member.waiting >= self.max_queue:
            raise Overloaded(f"Too many requests waiting for backend {member.name} to start; try again shortly.",
                             retry_after=max(1, int(member.last_start or 1)))
        loop = asyncio.get_running_loop()
        ticket = Ticket(member, (-member.config.priority, next(self.swapper.arrivals)), loop.time(), reason,
                        loop.create_future())
        self._enqueue(ticket)
        self.kick()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await ticket.future
        except TimeoutError:
            raise Overloaded(f"Backend {member.name} was not ready within {self.queue_timeout:g} s "
                             f"({member.state}); try again shortly.",
                             retry_after=max(1, int(member.last_start or self.queue_timeout))) from None
        except asyncio.CancelledError:
            if ticket.future.done() and not ticket.future.cancelled() and ticket.future.exception() is None:
                member.release()  # let through just as the client went away
            raise
        finally:
            if ticket in self.queue:  # left before its turn (timeout, client gone): others may go now
                self._dequeue(ticket)
                self.kick()
            self.swapper.events.waited(member.name, loop.time() - ticket.since)

    def _enqueue(self, ticket: Ticket) -> None:
        queue = self.queue
        i = len(queue)
        while i > 0 and queue[i - 1].key > ticket.key:
            i -= 1
        queue.insert(i, ticket)
        ticket.member.waiting += 1

    def _dequeue(self, ticket: Ticket) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(ticket)
            ticket.member.waiting -= 1
        if not ticket.future.done():
            ticket.future.cancel()

    def _grant(self, member: Member) -> None:
        """Let every request queued for a ready member through (one start serves them all)."""
        for ticket in [t for t in self.queue if t.member is member]:
            self._dequeue_granted(ticket)

    def _dequeue_granted(self, ticket: Ticket) -> None:
        self.queue.remove(ticket)
        ticket.member.waiting -= 1
        if not ticket.future.done():
            ticket.member.admitted += 1
            ticket.member.idle.clear()
            ticket.future.set_result(None)

    def _fail(self, member: Member, error: ProxyError) -> None:
        for ticket in [t for t in self.queue if t.member is member]:
            self.queue.remove(ticket)
            member.waiting -= 1
            if not ticket.future.done():
                ticket.future.set_exception(error)
                ticket.future.exception()  # retrieved: a client that left does not log it

    # --- the scheduler --------------------------------------------------------------------------

    def kick(self) -> None:
        """Serve the queue in order as far as the limit allows (called on every change)."""
        if self.swapper.closed or self.adopting:
            return
        for member in {t.member for t in self.queue if t.member.state == "ready"}:
            self._grant(member)
        first = True
        for member in dict.fromkeys(t.member for t in self.queue):
            if member.state == "starting":
                first = False
                continue
            if member.state == "draining" and first:
                log.info("backend %s wanted again while draining: kept", member.name)
                member.state = "ready"
                self._grant(member)
                continue
            if member.state in ("draining", "stopping"):
                return  # starts again once stopped
            if self._fits(member):
                self.start(member, self._reason(member))
                first = False
                continue
            self._make_room(member)
            return

    def _reason(self, member: Member) -> str:
        for t in self.queue:
            if t.member is member:
                return t.reason
        return "request"

    def _make_room(self, member: Member) -> None:
        """Drain as few members as it takes for ``member`` to fit."""
        leaving = [m for m in self.members if m.state in ("draining", "stopping")]
        if self._fits(member, leaving):
            return  # room is being made already
        loop = asyncio.get_running_loop()
        now = loop.time()
        min_run = self.config.min_run if self.config else 0.0
        candidates = [m for m in self.members if m.state == "ready" and not m.config.pinned
                      and (m.admitted == 0 or now - m.ready_at >= min_run)]
        candidates.sort(key=lambda m: (m.admitted > 0, m.last_used))
        victims: list[Member] = []
        for victim in candidates:
            victims.append(victim)
            if self._fits(member, leaving + victims):
                break
        else:
            # not enough can go now: look again when the youngest busy member has run min_run
            young = [m.ready_at + min_run - now for m in self.members
                     if m.state == "ready" and not m.config.pinned and m.admitted > 0 and now - m.ready_at < min_run]
            if young and self._retry is None:
                self._retry = loop.call_later(max(0.05, min(young)), self._retry_kick)
            return
        self._making_room = True
        for victim in victims:
            log.info("group %s: swapping %s out for %s", self.name, victim.name, member.name)
            self.drain(victim, "swap")

    def _retry_kick(self) -> None:
        self._retry = None
        self.kick()

    def start(self, member: Member, reason: str) -> None:
        member.state = "starting"
        member.starts += 1
        member.failure = None
        if self._making_room and self.limited:
            self._making_room = False
            self.swaps += 1
            self.swapper.events.swapped(self.name)
        self.swapper.spawn(self._start(member, reason), f"start-{member.name}")

    async def _start(self, member: Member, reason: str) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        log.info("starting backend %s (%s)", member.name, reason)
        try:
            try:
                await member.driver.start()
            except (StartFailed, asyncio.CancelledError):
                raise
            except Exception as exc:  # a bug in a driver or adapter must not leave it "starting"
                log.exception("starting backend %s failed", member.name)
                raise StartFailed(f"Backend {member.name} could not be started: {type(exc).__name__}") from None
        except StartFailed as err:
            member.state = "stopped"
            member.failure = err.message
            log.warning("backend %s failed to start: %s", member.name, err.message)
            self.swapper.events.stopped(member.name, "failed")
            self._fail(member, err)
            self.kick()
            return
        if member.state != "starting":  # stopped meanwhile (shutdown, a reload that removed it)
            return
        member.state = "ready"
        member.ready_at = member.last_used = loop.time()
        member.last_start = member.ready_at - t0
        log.info("backend %s ready after %.1f s (%s)", member.name, member.last_start, reason)
        self.swapper.events.started(member.name, reason, member.last_start)
        self.swapper.on_ready(member)
        member._arm_idle()
        self.kick()

    def drain(self, member: Member, reason: str) -> None:
        member.state = "draining"
        self.swapper.spawn(self._drain(member, reason), f"drain-{member.name}")

    async def _drain(self, member: Member, reason: str) -> None:
        limit = self.config.drain_timeout if self.config else 120.0
        try:
            async with asyncio.timeout(limit):
                await member.idle.wait()
        except TimeoutError:
            log.warning("backend %s: %d requests still running after drain_timeout %g s; stopping it",
                        member.name, member.admitted, limit)
        if member.state != "draining":
            return  # taken back
        await self._stop(member, reason)

    async def _stop(self, member: Member, reason: str) -> None:
        member.state = "stopping"
        log.info("stopping backend %s (%s)", member.name, reason)
        try:
            await member.driver.stop()
        finally:
            member.state = "stopped"
            self.swapper.events.stopped(member.name, reason)
            self.kick()

    def idle_check(self, member: Member) -> None:
        idle_stop = member.config.idle_stop
        if idle_stop is None or member.state != "ready" or member.admitted or member.waiting:
            return
        if asyncio.get_running_loop().time() - member.last_used >= idle_stop - 0.01:
            log.info("backend %s idle for %g s: stopping it", member.name, idle_stop)
            member.state = "stopping"
            self.swapper.spawn(self._stop(member, "idle"), f"idle-stop-{member.name}")

    def exited(self, member: Member, code: int | None) -> None:
        """The member's process exited on its own."""
        if member.state not in ("ready", "draining"):
            return
        member.state = "stopped"
        self.swapper.events.stopped(member.name, "exit")
        if not self.limited:
            member.restarts += 1
            delay = min(MAX_BACKOFF, 2 ** min(member.restarts - 1, 5))
            log.warning("backend %s exited with status %s; restarting in %g s", member.name, code, delay)
            self.swapper.spawn(self._restart(member, delay), f"restart-{member.name}")
        self.kick()

    async def _restart(self, member: Member, delay: float) -> None:
        await asyncio.sleep(delay)
        if member.state == "stopped" and not self.swapper.closed:
            self.start(member, "restart")


class Swapper:
    """Every member and group; built from the config and kept across reloads."""

    def __init__(self, session: aiohttp.ClientSession, events: Events, on_ready: Callable[[Member], None],
                 make_process: Callable[[Any], ManagedProcess]) -> None:
        self.session = session
        self.events = events
        self.on_ready = on_ready
        self.make_process = make_process
        self.members: dict[str, Member] = {}
        self.groups: dict[str, Group] = {}
        self.tasks: set[asyncio.Task] = set()
        self.arrivals = itertools.count()
        self.closed = False
        self.default_wait = 300.0
        self._asked: set[Member] = set()  # runtimes asked what they have loaded (adopt)
        self._reconciling = False  # a reconcile round is under way
        self._unsure: dict[Member, float] = {}  # members whose runtime could not say: when that was logged

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sync(self, config: Config, backends: Iterable[SwapBackend], health_timeout: float) -> list[Member]:
        """Members for the config's backends (kept when their backend is), grouped as it says;
        returns the members that are new and `start: startup`."""
        backends = list(backends)
        group_of = config.group_of()
        members: dict[str, Member] = {}
        fresh = []
        for backend in backends:
            cfg = backend.config
            if cfg.launch is None and backend.name not in group_of:
                continue
            member = self.members.get(backend.name)
            if member is None or member.backend is not backend:
                if member is not None:
                    self.retire(member)
                member = self._member(backend, health_timeout)
                if cfg.start == "startup":
                    fresh.append(member)
            members[backend.name] = member
        for name, member in self.members.items():
            if name not in members:
                self.retire(member)
        old_groups = self.groups
        groups: dict[str, Group] = {}
        for name, group_cfg in config.groups.items():
            kept = old_groups.get(name)
            group = kept if kept is not None and kept.config == group_cfg else Group(name, group_cfg, self)
            if kept is not None and kept is not group:
                kept.swaps, group.swaps = 0, kept.swaps
            group.members = []
            groups[name] = group
        for member in members.values():
            group_name = group_of.get(member.name)
            if group_name is not None:
                group = groups[group_name]
            else:
                group = old_groups.get("/" + member.name) or Group("/" + member.name, None, self)
                groups[group.name] = group
            group.members.append(member)
            if member.group is not None and member.group is not group:  # its waiting requests move with it
                for ticket in [t for t in member.group.queue if t.member is member]:
                    member.group.queue.remove(ticket)
                    member.waiting -= 1
                    group._enqueue(ticket)
            member.group = group
        self.members, self.groups = members, groups
        adopt = [m for m in members.values() if m.process is None and m.state == "stopped" and m not in self._asked]
        for member in adopt:
            assert member.group is not None
            member.group.adopting += 1
            self._asked.add(member)
        if adopt:
            self.spawn(self._adopt(adopt), "adopt")
        for group in groups.values():
            group.kick()
        return fresh

    async def _adopt(self, members: list[Member]) -> None:
        """A runtime mtproxy did not launch may have models loaded already: those count as
        running (ready) while their group has room, and are unloaded when it has none, so the
        group's limit holds from the start. Asked one by one, in the config's order."""
        for member in members:
            group = member.group
            assert group is not None and isinstance(member.driver, ApiDriver)
            try:
                loaded = await self._loaded(member)  # None (cannot tell, unreachable): taken as unloaded
            finally:
                group.adopting -= 1
            if loaded and member.state == "stopped":
                stop = self._settle(member, True, "already")
                if stop is not None:  # unloaded before the next is weighed: it must not count for it
                    await stop
        for group in {m.group for m in members if m.group is not None}:
            group.kick()

    def _settle(self, member: Member, loaded: bool, how: str) -> Coroutine[Any, Any, None] | None:
        """Make a member's state what its runtime says it has loaded (``how``: for the log): a
        stopped member whose model is loaded counts as running while its group has room (and no
        other member's request is waiting for it), and is unloaded when it has none; a ready one
        whose model is gone is stopped, its slot freed. The caller has checked that nothing
        changed since it asked (a start, a request). Returns the unload to run (the member is
        ``stopping`` already), or None."""
        group = member.group
        assert group is not None
        if loaded and member.state == "stopped":
            if group._fits(member) and all(t.member is member for t in group.queue):
                member.state = "ready"
                member.failure = None
                member.ready_at = member.last_used = asyncio.get_running_loop().time()
                log.info("backend %s has its model loaded %s: counted as running", member.name, how)
                self.on_ready(member)
                member._arm_idle()
            else:
                log.info("backend %s has its model loaded %s but group %s has no room for it: unloading it",
                         member.name, how, group.name)
                member.state = "stopping"
                return group._stop(member, "limit")
        elif not loaded and member.state == "ready":
            member.state = "stopped"
            log.warning("backend %s: its runtime no longer has its model loaded (unloaded %s): stopped, "
                        "its slot freed; the next request for it loads it again", member.name, how)
            self.events.stopped(member.name, "runtime_unloaded")
        return None

    @staticmethod
    def _settled(member: Member) -> bool:
        """Whether the runtime's word may change ``member``: stopped, or ready with no request."""
        return member.state == "stopped" or (member.state == "ready" and not member.admitted and not member.waiting)

    async def reconcile(self) -> None:
        """Once per health-probe round: ask each runtime mtproxy did not launch what it has loaded
        (side by side, each bounded by the health timeout) and settle the members whose state
        disagrees (:meth:`_settle`). An answer is used only if nothing happened to its member
        while it was asked (no start or stop, no request let through or finished); "cannot
        tell" (None) or an error changes nothing."""
        if self._reconciling or self.closed:
            return
        for gone in [m for m in self._unsure if self.members.get(m.name) is not m]:
            del self._unsure[gone]
        members = [m for m in self.members.values() if isinstance(m.driver, ApiDriver) and m in self._asked
                   and m.group is not None and m.group.limited and not m.group.adopting and self._settled(m)]
        if not members:
            return
        seen = [(m, m.state, m.starts, m.last_used) for m in members]
        self._reconciling = True
        try:
            answers = await asyncio.gather(*(self._loaded(m) for m in members))
        finally:
            self._reconciling = False
        kick = set()
        for (member, state, starts, used), loaded in zip(seen, answers, strict=True):
            group = member.group
            if (loaded is None or self.closed or self.members.get(member.name) is not member or group is None
                    or group.adopting or member.state != state or member.starts != starts
                    or member.last_used != used or not self._settled(member)):
                continue  # cannot tell, or its answer may be stale
            if loaded == (member.state == "ready"):
                continue
            stop = self._settle(member, loaded, "behind mtproxy's back")
            if stop is not None:
                self.spawn(stop, f"limit-stop-{member.name}")
            kick.add(group)
        for group in kick:
            group.kick()

    async def _loaded(self, member: Member) -> bool | None:
        """What ``member``'s runtime says it has loaded; None when it cannot tell or fails (logged
        at most once every UNSURE_LOG_SECONDS)."""
        assert isinstance(member.driver, ApiDriver)
        try:
            loaded = await member.driver.loaded()
            why = "it cannot tell"
        except Exception as exc:  # unreachable, or an adapter bug: nothing changes
            loaded = None
            why = exc.message if isinstance(exc, SwapFailed) else f"{type(exc).__name__}: {exc}"
        if loaded is not None:
            return loaded
        now = asyncio.get_running_loop().time()
        last = self._unsure.get(member)
        if last is None or now - last >= UNSURE_LOG_SECONDS:
            self._unsure[member] = now
            log.warning("backend %s: cannot tell what its runtime has loaded (%s): its state (%s) is kept",
                        member.name, why, member.state)
        return None

    def _member(self, backend: SwapBackend, health_timeout: float) -> Member:
        if backend.config.launch is None:
            return Member(backend, ApiDriver(backend, self.session, health_timeout), None)
        process = self.make_process(backend)
        member = Member(backend, ProcessDriver(process), process)

        def exited(code: int | None) -> None:
            if member.group is not None:
                member.group.exited(member, code)

        process.on_exit = exited
        return member

    def retire(self, member: Member) -> None:
        """A member whose backend left the config: stopped once its requests are done."""
        group = member.group
        if group is not None:
            group._fail(member, ProxyError(f"Backend {member.name} was removed from the config.",
                                           code="backend_removed"))

        async def retire() -> None:
            await member.idle.wait()
            member.state = "stopped"
            await member.driver.close()

        self.spawn(retire(), f"retire-{member.name}")

    async def start(self, name: str, reason: str = "admin") -> Member:
        member = self.members[name]
        assert member.group is not None
        await member.group.admit(member, reason)
        member.release()
        return member

    async def stop(self, name: str, reason: str = "admin") -> Member:
        member = self.members[name]
        group = member.group
        assert group is not None
        while member.state == "starting":
            await asyncio.sleep(0.05)
        if member.state == "ready":
            group.drain(member, reason)
        while member.state != "stopped":
            await asyncio.sleep(0.05)
        return member

    async def close(self) -> None:
        self.closed = True
        for group in self.groups.values():
            for member in list(group.members):
                group._fail(member, StartFailed("mtproxy is shutting down.", code="shutting_down"))
            if group._retry is not None:
                group._retry.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(m.driver.close() for m in self.members.values()), return_exceptions=True)
        for member in self.members.values():
            member.state = "stopped"
