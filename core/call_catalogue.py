"""The call catalogue (specs/calls.md §3): every call the Distillery socket can run, registered in one place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.config import CommandSettings
from core.errors import ConfigError
from core.principals import Principal, Role

if TYPE_CHECKING:
    from core.actions import Action
    from core.services import Services

CallKind = Literal["builtin", "command"]
ParamCheck = Callable[[str], str | None]  # returns why the value is invalid, or None
MAX_PARAM_BYTES = 64 * 1024
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class CallParam:
    name: str
    description: str = ""
    check: ParamCheck | None = None
    secret: bool = False


@dataclass(frozen=True)
class CallRequest:
    """What a running call knows: who asked, with which params, and the services to act with."""

    principal: Principal
    params: list[str]
    services: Services


Starter = Callable[[CallRequest], Awaitable["Action"]]
OwnershipRule = Callable[[Principal, list[str]], Awaitable[bool]]


@dataclass(frozen=True)
class CallSpec:
    """One call: its name, params, who may run it, its time limit, and how it starts its action."""

    name: str
    description: str
    start: Starter
    params: tuple[CallParam, ...] = ()
    role: Role = "admin"
    kind: CallKind = "builtin"
    timeout: float | None = None
    owner_rule: OwnershipRule | None = None  # e.g. "owner of the workspace in params[0], or admin"

    def redacted(self, params: list[str]) -> list[str]:
        """The params as the audit shows them: secret ones as ``***``."""
        return redact(self.params, params)


@dataclass
class CallCatalogue:
    """Name -> CallSpec; faces add their calls with ``register``."""

    _calls: dict[str, CallSpec] = field(default_factory=dict)

    def register(self, spec: CallSpec) -> None:
        if spec.name in self._calls:
            raise ValueError(f"call {spec.name!r} is registered twice")
        self._calls[spec.name] = spec

    def get(self, name: str) -> CallSpec | None:
        return self._calls.get(name)

    def all(self) -> list[CallSpec]:
        return sorted(self._calls.values(), key=lambda c: c.name)

    async def may_run(self, principal: Principal, spec: CallSpec, params: list[str]) -> bool:
        """Role first; a call with an ownership rule also lets the resource's owner run it."""
        if principal.has_role(spec.role):
            return True
        if spec.owner_rule is not None and principal.is_authenticated:
            return await spec.owner_rule(principal, params)
        return False

    def may_try(self, principal: Principal, spec: CallSpec) -> bool:
        """Whether ``principal`` may run ``spec`` for some params: checked before the params are, so that a
        caller who may not run a call learns nothing of its params."""
        return principal.has_role(spec.role) or (spec.owner_rule is not None and principal.is_authenticated)

    def visible_to(self, principal: Principal) -> list[CallSpec]:
        return [c for c in self.all() if principal.has_role(c.role) or c.owner_rule is not None]


def redact(params: tuple[CallParam, ...], values: list[str]) -> list[str]:
    """``values`` with those of secret params replaced by ``***``."""
    return ["***" if p.secret else v for p, v in zip(params, values, strict=False)]


def check_params(spec: CallSpec, params: list[str]) -> str | None:
    """The first reason the params are wrong, in the spec's fixed wording, or None."""
    if len(params) != len(spec.params):
        return "invalid number of parameters"
    for param, value in zip(spec.params, params, strict=True):
        why = _param_problem(param, value)
        if why is not None:
            return f"invalid parameter {param.name}: {why}"
    return None


def _param_problem(param: CallParam, value: str) -> str | None:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PARAM_BYTES:
        return f"longer than {MAX_PARAM_BYTES} bytes"
    if "\x00" in value:
        return "contains a NUL character"
    return param.check(value) if param.check is not None else None


def command_call(name: str, command: CommandSettings) -> CallSpec:
    """An administrator-defined command: argv + params as separate arguments, never through a shell."""
    secret = set(command.secret_params)
    params = tuple(CallParam(p, secret=p in secret) for p in command.params)

    async def start(request: CallRequest) -> Action:
        return await request.services.actions.start_process(
            [*command.argv, *request.params],
            shown_argv=[*command.argv, *redact(params, request.params)],  # the action list, logs, records
            owner=request.principal.name or request.principal.describe(),
            name=f"call:{name}",
            cwd=command.cwd,
            env=command_environment(command),
            timeout=command.timeout,
            inherit_env=False,
            hold_output=True,
            merge_stderr=True,  # specs/calls.md §2: stdout and stderr merged in arrival order
        )

    return CallSpec(
        name=name,
        description=command.description,
        start=start,
        params=params,
        role=command.role,
        kind="command",
        timeout=command.timeout,
    )


def command_environment(command: CommandSettings) -> dict[str, str]:
    """A minimal environment (PATH, LANG, HOME) plus the command's own ``env``; nothing of Hearth's leaks."""
    env = {"PATH": MINIMAL_PATH, "LANG": "C.UTF-8", "HOME": command.cwd or "/"}
    env.update(command.env)
    return env


def check_command_runnable(name: str, command: CommandSettings) -> None:
    """Refuse at start a command whose program is missing or not executable, or whose cwd is missing."""
    program = command.argv[0]
    path = program if os.sep in program else shutil.which(program, path=command_environment(command)["PATH"])
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ConfigError(f"calls.commands.{name}.argv", f"{program} does not exist or is not executable")
    if command.cwd is not None and not os.path.isdir(command.cwd):
        raise ConfigError(f"calls.commands.{name}.cwd", f"{command.cwd} is not a directory")


def load_commands(catalogue: CallCatalogue, commands: dict[str, CommandSettings]) -> None:
    for name, command in sorted(commands.items()):
        check_command_runnable(name, command)
        catalogue.register(command_call(name, command))
