"""Settings: one msgspec Struct, filled from defaults < TOML file < HEARTH_* environment < command-line flags."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from core.errors import ConfigError

ENV_PREFIX = "HEARTH_"
CONFIG_ENV = "HEARTH_CONFIG"
NOT_SETTINGS_ENV = frozenset({CONFIG_ENV, "HEARTH_TOKEN"})  # HEARTH_TOKEN: the `hearth call` credential


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Login, tokens and registration."""

    access_token_ttl_seconds: int = 1800
    refresh_token_ttl_seconds: int = 7 * 86400
    open_registration: bool = False
    jwt_secret_file: str = ""  # empty: <data_dir>/jwt.secret, created on first start
    cookie_secure: bool = False
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    max_keys_per_user: int = 100  # active (unrevoked, unexpired) API keys per user; 0 = no limit

    def __post_init__(self) -> None:
        _require_positive("auth.access_token_ttl_seconds", self.access_token_ttl_seconds)
        _require_positive("auth.refresh_token_ttl_seconds", self.refresh_token_ttl_seconds)
        if self.max_keys_per_user < 0:
            raise ConfigError("auth.max_keys_per_user", f"must be 0 or more, got {self.max_keys_per_user}")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """HTTP and websocket limits."""

    max_body_bytes: int = 1024 * 1024
    max_ws_message_bytes: int = 1024 * 1024
    shutdown_grace_seconds: float = 10.0
    metrics_public: bool = True  # false: GET /metrics needs an authenticated principal
    request_head_timeout_seconds: float = 10.0  # a connection must send its first request head within this

    def __post_init__(self) -> None:
        _require_positive("server.max_body_bytes", self.max_body_bytes)
        _require_positive("server.max_ws_message_bytes", self.max_ws_message_bytes)
        _require_positive("server.request_head_timeout_seconds", self.request_head_timeout_seconds)
        _require_at_least_zero("server.shutdown_grace_seconds", self.shutdown_grace_seconds)


class ActionSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Action streams: process kill grace, output buffers and logs."""

    kill_grace_seconds: float = 5.0
    ring_bytes: int = 256 * 1024
    log_max_bytes: int = 8 * 1024 * 1024
    reader_queue_chunks: int = 16
    read_chunk_bytes: int = 256 * 1024  # pipes are grown to this (core/processes.grow_pipe); see docs/streaming.md
    retain_finished: int = 200  # finished actions kept (info, ring, log file); the oldest go first
    retain_seconds: float = 3600.0  # and for at most this long after they ended
    max_running: int = 4096  # actions running at once (each holds a few fds and a task); more are refused
    stdin_buffer_bytes: int = 1024 * 1024  # exec websockets: client input queued for the process
    stdin_stall_seconds: float = 30.0  # exec websockets: a queue full this long cancels the action

    def __post_init__(self) -> None:
        _require_positive("actions.retain_finished", self.retain_finished)
        _require_positive("actions.max_running", self.max_running)
        _require_positive("actions.stdin_buffer_bytes", self.stdin_buffer_bytes)
        _require_positive("actions.stdin_stall_seconds", self.stdin_stall_seconds)
        _require_positive("actions.retain_seconds", self.retain_seconds)
        _require_positive("actions.kill_grace_seconds", self.kill_grace_seconds)
        _require_positive("actions.ring_bytes", self.ring_bytes)
        _require_positive("actions.log_max_bytes", self.log_max_bytes)
        _require_positive("actions.reader_queue_chunks", self.reader_queue_chunks)
        _require_positive("actions.read_chunk_bytes", self.read_chunk_bytes)


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """SQLite tuning."""

    synchronous: Literal["full", "normal"] = "full"
    reader_connections: int = 4
    busy_timeout_ms: int = 5000
    audit_retention_days: int = 365

    def __post_init__(self) -> None:
        _require_positive("storage.reader_connections", self.reader_connections)
        _require_at_least_zero("storage.busy_timeout_ms", self.busy_timeout_ms)
        _require_positive("storage.audit_retention_days", self.audit_retention_days)


class CommandSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One administrator-defined call: ``[calls.commands.NAME]`` (specs/calls.md §3)."""

    argv: list[str]
    description: str = ""
    params: list[str] = msgspec.field(default_factory=list)
    role: Literal["admin", "member", "viewer"] = "admin"
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: float | None = None
    secret_params: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError("argv must name a program")
        unknown = set(self.secret_params) - set(self.params)
        if unknown:
            raise ValueError(f"secret_params names unknown params: {sorted(unknown)}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be greater than 0")


class CallsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The Distillery call API: limits and the administrator-defined commands."""

    first_message_timeout: float = 10.0
    max_per_principal: int = 8
    max_total: int = 256
    buffer_bytes: int = 1024 * 1024
    max_frame_bytes: int = 1024 * 1024
    stdin_stall_seconds: float = 30.0
    commands: dict[str, CommandSettings] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_positive("calls.first_message_timeout", self.first_message_timeout)
        _require_positive("calls.max_per_principal", self.max_per_principal)
        _require_positive("calls.max_total", self.max_total)
        _require_positive("calls.buffer_bytes", self.buffer_bytes)
        _require_positive("calls.max_frame_bytes", self.max_frame_bytes)
        _require_positive("calls.stdin_stall_seconds", self.stdin_stall_seconds)


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Log level and format; ``auto`` is readable lines on a terminal, JSON lines otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything Hearth can be told; see docs/configuration.md for each setting."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    actions: ActionSettings = msgspec.field(default_factory=ActionSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    calls: CallsSettings = msgspec.field(default_factory=CallsSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"{self.port} is not between 0 and 65535")
        if not self.data_dir:
            raise ConfigError("data_dir", "must not be empty")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _require_at_least_zero(name: str, value: float) -> None:
    if not 0 <= value < math.inf:
        raise ConfigError(name, f"must be 0 or more, got {value}")


def _require_positive(name: str, value: float) -> None:
    if not 0 < value < math.inf:  # also refuses NaN, which compares false with everything
        raise ConfigError(name, f"must be greater than 0, got {value}")


def load_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the three sources (flags win over environment, environment over the file) into Settings."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get(CONFIG_ENV) or None
    merged: dict[str, Any] = _read_toml(path) if path else {}
    _merge(merged, _from_environment(environ))
    _merge(merged, _from_flags(flags))
    return _convert(merged)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None


def _sections() -> dict[str, type[msgspec.Struct]]:
    out: dict[str, type[msgspec.Struct]] = {}
    for field in msgspec.structs.fields(Settings):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            out[field.name] = field.type
    return out


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """HEARTH_PORT -> port; HEARTH_AUTH_OPEN_REGISTRATION -> auth.open_registration."""
    out: dict[str, Any] = {}
    top = {f.name for f in msgspec.structs.fields(Settings)}
    sections = _sections()
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in top and name not in sections:
            out[name] = _env_value(value)
            continue
        section, _, field = name.partition("_")
        fields = {f.name for f in msgspec.structs.fields(sections[section])} if section in sections else set()
        if field not in fields:
            raise ConfigError(key, "unknown setting")
        out.setdefault(section, {})[field] = _env_value(value)
    return out


def _env_value(value: str) -> Any:
    """Lists arrive comma-separated; everything else is converted by msgspec from the string."""
    return value


def _from_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _convert(merged: dict[str, Any]) -> Settings:
    _split_env_lists(merged)
    _check_commands(merged.get("calls"))
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(*_describe_validation(str(e))) from None


def _check_commands(calls: Any) -> None:
    """Validate each ``[calls.commands.NAME]`` alone, so that an error names the command."""
    commands = calls.get("commands") if isinstance(calls, dict) else None
    if not isinstance(commands, dict):
        return
    for name, entry in commands.items():
        try:
            msgspec.convert(entry, CommandSettings, strict=False)
        except msgspec.ValidationError as e:
            setting, problem = _describe_validation(str(e))
            where = f"calls.commands.{name}" + (f".{setting}" if setting not in ("", "config") else "")
            raise ConfigError(where, problem) from None


def _split_env_lists(merged: dict[str, Any]) -> None:
    """A list setting given as one string (environment, flag) is split on commas."""
    for section_name, section_type in _sections().items():
        section = merged.get(section_name)
        if not isinstance(section, dict):
            continue
        for field in msgspec.structs.fields(section_type):
            value = section.get(field.name)
            if isinstance(value, str) and getattr(field.type, "__origin__", None) is list:
                section[field.name] = [v.strip() for v in value.split(",") if v.strip()]


def _describe_validation(message: str) -> tuple[str, str]:
    """msgspec says 'Expected `int`, got `str` - at `$.auth.x`'; turn it into (setting, problem)."""
    problem, sep, where = message.rpartition(" - at `$")
    if not sep:
        if message.startswith("Object contains unknown field"):
            return message.split("`")[1], "unknown setting"
        return "config", message
    setting = where.rstrip("`").lstrip(".")
    if problem.startswith("Object contains unknown field"):
        field = problem.split("`")[1]
        return f"{setting}.{field}" if setting else field, "unknown setting"
    return setting, problem.replace("`", "")
