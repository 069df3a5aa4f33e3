"""The call catalogue: registration, params, permissions, administrator-defined commands refused at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.call_catalogue import (
    CallCatalogue,
    CallParam,
    CallRequest,
    CallSpec,
    check_command_runnable,
    check_params,
    command_call,
    command_environment,
)
from core.config import CommandSettings
from core.errors import ConfigError
from core.principals import ANONYMOUS, Principal, PrincipalKind

ROOT = Path(__file__).resolve().parent.parent


async def never(request: CallRequest) -> object:
    raise AssertionError("not started in these tests")


def spec(name: str, role: str = "admin", params: tuple[CallParam, ...] = ()) -> CallSpec:
    return CallSpec(name=name, description="", start=never, role=role, params=params)  # type: ignore[arg-type]


def user(role: str, name: str = "u") -> Principal:
    return Principal(kind=PrincipalKind.USER, name=name, role=role)  # type: ignore[arg-type]


def test_register_twice_is_refused() -> None:
    catalogue = CallCatalogue()
    catalogue.register(spec("a"))
    with pytest.raises(ValueError, match="registered twice"):
        catalogue.register(spec("a"))


async def test_role_decides_who_may_run_and_see() -> None:
    catalogue = CallCatalogue()
    catalogue.register(spec("admin-only"))
    catalogue.register(spec("for-viewers", role="viewer"))
    assert [c.name for c in catalogue.visible_to(user("viewer"))] == ["for-viewers"]
    assert await catalogue.may_run(user("admin"), catalogue.get("admin-only"), []) is True  # type: ignore[arg-type]
    assert await catalogue.may_run(user("member"), catalogue.get("admin-only"), []) is False  # type: ignore[arg-type]
    assert await catalogue.may_run(ANONYMOUS, catalogue.get("for-viewers"), []) is False  # type: ignore[arg-type]


async def test_ownership_rule_admits_the_owner() -> None:
    async def owns(principal: Principal, params: list[str]) -> bool:
        return params[:1] == [principal.name]

    catalogue = CallCatalogue()
    owned = CallSpec(name="ws", description="", start=never, role="admin", owner_rule=owns)  # type: ignore[arg-type]
    catalogue.register(owned)
    assert await catalogue.may_run(user("member", "mia"), owned, ["mia"]) is True
    assert await catalogue.may_run(user("member", "mia"), owned, ["bob"]) is False
    assert await catalogue.may_run(ANONYMOUS, owned, [""]) is False


def test_params_are_counted_and_checked() -> None:
    def digits(value: str) -> str | None:
        return None if value.isdigit() else "must be digits"

    s = spec("x", params=(CallParam("n", check=digits), CallParam("name")))
    assert check_params(s, ["1"]) == "invalid number of parameters"
    assert check_params(s, ["1", "a", "b"]) == "invalid number of parameters"
    assert check_params(s, ["x", "a"]) == "invalid parameter n: must be digits"
    assert check_params(s, ["1", "a\x00b"]) == "invalid parameter name: contains a NUL character"
    assert check_params(s, ["1", "y" * (64 * 1024 + 1)]) == "invalid parameter name: longer than 65536 bytes"
    assert check_params(s, ["1", "; rm -rf / && `x` $(y)"]) is None


def test_secret_params_are_redacted_for_the_audit() -> None:
    call = command_call(
        "c", CommandSettings(argv=["/bin/echo"], params=["user", "password"], secret_params=["password"])
    )
    assert call.redacted(["ada", "hunter2"]) == ["ada", "***"]


def test_command_environment_is_minimal_plus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_SECRET_LEAK", "x")
    env = command_environment(CommandSettings(argv=["/bin/echo"], cwd="/tmp", env={"A": "1"}))
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "A": "1"}


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (CommandSettings(argv=["/no/such/program"]), "calls.commands.c.argv"),
        (CommandSettings(argv=["no-such-program-anywhere"]), "calls.commands.c.argv"),
        (CommandSettings(argv=["/bin/sh"], cwd="/no/such/dir"), "calls.commands.c.cwd"),
    ],
)
def test_a_command_that_cannot_run_is_refused(command: CommandSettings, setting: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_command_runnable("c", command)
    assert refused.value.setting == setting


def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "deploy"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(ConfigError, match="not executable"):
        check_command_runnable("c", CommandSettings(argv=[str(script)]))
    script.chmod(0o755)
    check_command_runnable("c", CommandSettings(argv=[str(script)]))


def test_runnable_commands_pass() -> None:
    check_command_runnable("c", CommandSettings(argv=["sh", "-c", "true"]))
    check_command_runnable("c", CommandSettings(argv=["/bin/sh"], cwd="/"))


def test_serve_refuses_to_start_with_a_command_that_cannot_run(tmp_path: Path) -> None:
    config = tmp_path / "hearth.toml"
    config.write_text('[calls.commands.deploy]\nargv = ["/no/such/deploy"]\n')
    result = subprocess.run(
        [sys.executable, "app.py", "serve", "--config", str(config), "--data-dir", str(tmp_path / "d"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hearth: setting calls.commands.deploy.argv: /no/such/deploy does not exist or is not executable"
    )
