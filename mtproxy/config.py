"""Configuration: strict pydantic models, YAML loading and ``${ENV}`` interpolation.

Config is loaded from text (``load_config_text``) so tests need no files; ``load_config`` reads a
path. Every error is a :class:`ConfigError` whose message names the field path
(``backends[1].url: …``).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from yarl import URL

from .runtimes import ADAPTERS

# The runtimes a backend may name: one adapter each (runtimes/__init__.py), spelled there only.
RUNTIMES = tuple(ADAPTERS)
MtpPolicy = Literal["prefer", "require", "ignore"]

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """An invalid configuration; ``str(err)`` is one line per problem, each naming its field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=0, le=65535)
    api_keys: list[SecretStr] = []
    api_keys_file: str | None = None  # more client keys, one per line (# comments allowed)
    admin_keys: list[SecretStr] = []  # for /mtproxy/reload; without one admin endpoints are off
    metrics_auth: bool = False  # /metrics wants a client or admin key too
    cors_origins: list[str] = []  # CORS is off unless origins are listed ("*" allows any)
    shutdown_grace: float = Field(30.0, ge=0, description="seconds in-flight requests may finish")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    receive_timeout: float = Field(30.0, gt=0, description="seconds a client has to send a whole request "
                                   "(headers and body), from its first byte or from connecting")
    max_connections: int = Field(1024, gt=0, description="client connections open at once; more get 503")


class TimeoutsConfig(_Strict):
    connect: float = Field(5.0, gt=0, description="TCP connect to a backend")
    first_token: float = Field(120.0, gt=0, description="request sent → first streamed byte")
    idle: float = Field(60.0, gt=0, description="longest silence between stream chunks")
    request: float = Field(600.0, gt=0, description="whole non-streaming request")


class HealthConfig(_Strict):
    interval: float = Field(5.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    mtp_interval: float = Field(30.0, gt=0, description="seconds between MTP probes of a backend")


class LimitsConfig(_Strict):
    max_concurrent: int = Field(0, ge=0, description="requests served at once in total; 0: no cap")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot beyond the caps")
    queue_timeout: float = Field(30.0, gt=0, description="longest wait for a slot before 429")


class RetriesConfig(_Strict):
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries in flight / requests in flight")
    min_concurrent: int = Field(3, ge=0, description="retries always allowed at once")
    backoff_base: float = Field(0.025, ge=0)
    backoff_max: float = Field(0.25, ge=0)


class OutlierConfig(_Strict):
    consecutive_failures: int = Field(5, ge=1, description="5xx answers in a row that eject a backend")
    ejection_seconds: float = Field(30.0, gt=0, description="first ejection; doubles each time")
    max_ejection_seconds: float = Field(300.0, gt=0)


class MetricsConfig(_Strict):
    window_seconds: float = Field(5.0, gt=0, description="span of mtproxy_window_tokens_per_second")
    runtime_metrics: bool = Field(False, description="GET /metrics also carries each backend's own metrics "
                                  "(vLLM, SGLang, llama.cpp, TensorRT-LLM), labelled backend and runtime")
    runtime_metrics_cache_seconds: float = Field(5.0, ge=0, description="a backend's metrics are read at most "
                                                 "once in this span, whatever the scrapes")
    runtime_metrics_timeout: float = Field(2.0, gt=0, description="a backend's read is cut after this; "
                                           "/metrics never waits longer for it")


class ResponsesConfig(_Strict):
    """The store behind /v1/responses' previous_response_id, GET, DELETE and input_items."""

    store: str = Field("memory", description="'memory' (this process only; a restart loses it) or a "
                       "redis:// / rediss:// / unix:// URL shared by every replica (Redis or Valkey)")
    max_items: int = Field(10000, gt=0, description="responses kept; the oldest go first")
    max_age_seconds: float = Field(86400.0, gt=0, description="a response older than this is gone")

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value == "memory":
            return value
        url = URL(value)
        if url.scheme not in ("redis", "rediss", "unix") or (url.scheme != "unix" and not url.host):
            # not echoed: the URL may hold a password
            raise ValueError("must be 'memory' or a redis://[user:password@]host[:port][/db] URL")
        return value


class UiConfig(_Strict):
    """The page at /ui (mtproxy/ui/): its activity ring and the optional on-disk history."""

    enabled: bool = True
    ring: int = Field(1000, gt=0, le=1_000_000, description="requests kept in memory for the page and exports")
    history: str | None = Field(None, description="an SQLite file keeping every request across restarts")
    history_max_rows: int = Field(100_000, gt=0, description="rows the history keeps; the oldest go first")
    history_max_age_seconds: float = Field(7 * 86400.0, gt=0, description="a row older than this is deleted")


_UNITS = {"": 10**9, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> object:
    """``80GB``, ``24 GiB``, ``512MB`` or a bare number of GB -> bytes; anything else is left for
    the field's own type check to reject."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return int(value * _UNITS[""])
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"must be a size such as '24GB' or '24GiB' (a bare number is GB), got {value!r}")
        return int(float(m.group(1)) * _UNITS[unit])
    return value


Size = Annotated[int | None, BeforeValidator(parse_size)]  # bytes, from "24GiB", "80GB" or a number of GB


class GroupConfig(_Strict):
    """Backends that share a machine: at most ``max_running`` of them run at once and/or their
    declared ``memory`` fits in the group's (swap.py). Members are named by ``backends[].group``
    or listed here."""

    max_running: int | None = Field(None, ge=1, description="members running at once")
    memory: Size = Field(None, gt=0, description="bytes the running members' `memory` must fit in")
    members: list[str] = []  # backend names; the same as `group:` on each of them
    drain_timeout: float = Field(120.0, gt=0, description="seconds a member being swapped out may "
                                 "finish its requests")
    min_run: float = Field(10.0, ge=0, description="seconds a member stays running while it has work")
    max_queue: int = Field(256, ge=1, description="requests waiting per member")
    queue_timeout: float = Field(300.0, gt=0, description="seconds a request may wait for its member")

    @model_validator(mode="after")
    def _a_limit(self) -> GroupConfig:
        if self.max_running is None and self.memory is None:
            raise ValueError("a group needs `max_running` and/or `memory`")
        return self


class BackendConfig(_Strict):
    name: str = Field(min_length=1)
    runtime: str
    url: str
    models: list[str] | None = None
    mtp: bool | None = None
    api_key: SecretStr | None = None
    model_path: str | None = None  # local GGUF file, config.json or checkpoint dir: MTP detection
    # A managed backend: mtproxy starts `launch` as a child process, waits until it is ready,
    # restarts it when it dies, stops it after `idle_stop` idle seconds and on exit.
    launch: list[str] | None = None  # argv; a string is split like a shell would
    start: Literal["on-demand", "startup"] = "on-demand"
    ready: str | None = None  # path that answers 200 when ready (default: the runtime's probe)
    ready_timeout: float = Field(120.0, gt=0)
    idle_stop: float | None = Field(None, gt=0)
    env: dict[str, str] = {}  # extra environment for the launched process
    max_concurrent: int | None = Field(None, gt=0, description="requests at once on this backend")
    # Swapping (swap.py): the group it belongs to, the memory it takes while running (for the
    # group's budget), never swapped out when pinned, served first when its priority is higher.
    group: str | None = None
    memory: Size = Field(None, gt=0)
    pinned: bool = False
    priority: int = 0

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in ADAPTERS:
            names = ", ".join(f"'{n}'" for n in RUNTIMES[:-1]) + f" or '{RUNTIMES[-1]}'"
            raise ValueError(f"Input should be {names}")
        return value

    @field_validator("launch", mode="before")
    @classmethod
    def _split_launch(cls, value: object) -> object:
        if isinstance(value, str):
            return shlex.split(value)
        return value

    @field_validator("launch")
    @classmethod
    def _nonempty_launch(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("must name a program to run")
        return value

    @model_validator(mode="after")
    def _managed_needs_models(self) -> BackendConfig:
        if self.launch is not None and self.start == "on-demand" and not self.models:
            raise ValueError("a backend launched on demand needs `models`: they cannot be discovered "
                             "before it runs")
        if self.launch is None and (self.idle_stop is not None or self.ready is not None):
            raise ValueError("`idle_stop` and `ready` apply to a backend with `launch`")
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value  # `${KEY:-}` with KEY unset: no key

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
        return value.rstrip("/")


class ModelConfig(_Strict):
    mtp: bool | None = None
    aliases: list[str] = []


class RoutingConfig(_Strict):
    mtp: MtpPolicy = "prefer"
    # within an MTP tier: the fewest outstanding requests, or the lowest expected time to finish
    # from measured speed (router.py)
    balance: Literal["least_outstanding", "fastest"] = "least_outstanding"
    decay_seconds: float = Field(10.0, gt=0, description="time constant of the speed estimates' peak-EWMA")
    max_age_seconds: float = Field(30.0, gt=0, description="an estimate older than this is unknown; "
                                   "the backend gets a probe request")


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health: HealthConfig = HealthConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    retries: RetriesConfig = RetriesConfig()
    outlier: OutlierConfig = OutlierConfig()
    backends: list[BackendConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = {}
    routing: RoutingConfig = RoutingConfig()
    responses: ResponsesConfig = ResponsesConfig()
    groups: dict[str, GroupConfig] = {}
    ui: UiConfig = UiConfig()

    def group_of(self) -> dict[str, str]:
        """backend name -> its group's name (by ``backends[].group`` or ``groups.*.members``)."""
        out = {b.name: b.group for b in self.backends if b.group is not None}
        for name, group in self.groups.items():
            for member in group.members:
                out.setdefault(member, name)
        return out

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for i, backend in enumerate(self.backends):
            if backend.name in seen:
                raise _FieldError(f"backends[{i}].name", f"duplicate backend name {backend.name!r}")
            seen.add(backend.name)
        owner: dict[str, str] = {}
        for model, cfg in self.models.items():
            for alias in cfg.aliases:
                if alias in self.models and alias != model:
                    raise _FieldError(f"models.{model}.aliases", f"{alias!r} is also a model name")
                if owner.setdefault(alias, model) != model:
                    raise _FieldError(
                        f"models.{model}.aliases", f"{alias!r} is already an alias of {owner[alias]!r}"
                    )
        return self

    @model_validator(mode="after")
    def _groups(self) -> Config:
        index = {b.name: (i, b) for i, b in enumerate(self.backends)}
        owner: dict[str, str] = {}
        for i, b in enumerate(self.backends):
            if b.group is not None:
                if b.group not in self.groups:
                    raise _FieldError(f"backends[{i}].group", f"no group {b.group!r} under `groups`")
                owner[b.name] = b.group
        for name, group_cfg in self.groups.items():
            for member in group_cfg.members:
                if member not in index:
                    raise _FieldError(f"groups.{name}.members", f"no backend named {member!r}")
                if owner.setdefault(member, name) != name:
                    raise _FieldError(f"groups.{name}.members",
                                      f"backend {member!r} is already in group {owner[member]!r}: "
                                      "a backend belongs to one group")
        members: dict[str, list[tuple[int, BackendConfig]]] = {}
        for backend, group_name in owner.items():
            members.setdefault(group_name, []).append(index[backend])
        for name, group in self.groups.items():
            inside = sorted(members.get(name, []), key=lambda m: m[0])
            for i, b in inside:
                if b.launch is None and not getattr(ADAPTERS[b.runtime], "swaps", False):
                    raise _FieldError(f"backends[{i}].group",
                                      f"{b.name!r} has no `launch` and its runtime ({b.runtime}) cannot load "
                                      "and unload models: the group could not start or stop it")
                if group.memory is not None:
                    if b.memory is None:
                        raise _FieldError(f"backends[{i}].memory",
                                          f"group {name!r} has a memory budget: declare what {b.name!r} takes")
                    if b.memory > group.memory:
                        raise _FieldError(f"backends[{i}].memory",
                                          f"{b.name!r} needs more memory than group {name!r} has "
                                          f"({b.memory} > {group.memory} bytes)")
            pinned = [b for _, b in inside if b.pinned]
            if pinned and group.max_running is not None and len(pinned) >= group.max_running and len(inside) > len(pinned):
                raise _FieldError(f"groups.{name}.max_running",
                                  f"{len(pinned)} pinned members fill every slot: the others could never run")
            if pinned and group.memory is not None:
                rest = [b.memory or 0 for _, b in inside if not b.pinned]
                if rest and sum(b.memory or 0 for b in pinned) + max(rest) > group.memory:
                    raise _FieldError(f"groups.{name}.memory",
                                      "the pinned members leave no room for the largest other member")
        return self


class _FieldError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            lines.append(str(ctx_err))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "string_type" and isinstance(e.get("input"), bool):
            msg += " (YAML reads yes/no/on/off/true/false as booleans: quote the value)"
        lines.append(f"{_path(e['loc'])}: {msg}")
    return "\n".join(lines)


def interpolate_env(data: Any, env: dict[str, str], path: tuple[int | str, ...] = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML document."""
    if isinstance(data, dict):
        return {k: interpolate_env(v, env, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_env(v, env, (*path, i)) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{_path(path)}: environment variable {name} is not set")

    return _ENV_RE.sub(sub, data)


def load_config_text(text: str, env: dict[str, str] | None = None) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"(yaml): {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("(top level): expected a mapping with at least `backends`")
    data = interpolate_env(data, dict(os.environ) if env is None else env)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None
    return _with_key_file(config)


def _with_key_file(config: Config) -> Config:
    path = config.server.api_keys_file
    if path is None:
        return config
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"server.api_keys_file: cannot read {path!r}: {exc.strerror}") from None
    keys = [SecretStr(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    server = config.server.model_copy(update={"api_keys": [*config.server.api_keys, *keys]})
    return config.model_copy(update={"server": server})


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    return load_config_text(text, env)
