"""Settings: flags > HEARTH_* environment > TOML file > defaults; every bad setting exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import app
from core.config import Settings, load_settings
from core.errors import ConfigError
from tests.test_storage import ROOT, clean_env


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def from_command_line(argv: list[str], environ: dict[str, str]) -> Settings:
    """What ``hearth ...argv`` would use: flags parsed by the real parser, the environment given here."""
    args = app.build_parser().parse_args(argv)
    flags = {"host": getattr(args, "host", None), "port": getattr(args, "port", None), "data_dir": args.data_dir}
    return load_settings(flags, environ=environ, config_file=args.sub_config or args.config)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_toml(
        tmp_path / "hearth.toml",
        'port = 1111\nhost = "127.0.0.2"\ndata_dir = "/from/file"\n'
        "[server]\nmax_body_bytes = 10\nmax_ws_message_bytes = 20\n"
        '[log]\nlevel = "debug"\n',
    )


def test_defaults_without_any_source() -> None:
    settings = load_settings({}, environ={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8080, "./data")


def test_file_overrides_defaults(config_file: Path) -> None:
    settings = from_command_line(["--config", str(config_file), "serve"], {})
    assert (settings.port, settings.host, settings.data_dir) == (1111, "127.0.0.2", "/from/file")
    assert settings.server.max_body_bytes == 10 and settings.log.level == "debug"
    assert settings.server.shutdown_grace_seconds == Settings().server.shutdown_grace_seconds


def test_environment_overrides_file_field_by_field(config_file: Path) -> None:
    env = {"HEARTH_PORT": "2222", "HEARTH_SERVER_MAX_BODY_BYTES": "30"}
    settings = from_command_line(["--config", str(config_file), "serve"], env)
    assert settings.port == 2222
    assert settings.server.max_body_bytes == 30
    assert settings.server.max_ws_message_bytes == 20
    assert settings.host == "127.0.0.2"


def test_flags_override_environment_and_file(config_file: Path) -> None:
    env = {"HEARTH_PORT": "2222", "HEARTH_DATA_DIR": "/from/env", "HEARTH_HOST": "127.0.0.3"}
    argv = ["serve", "--config", str(config_file), "--port", "0", "--data-dir", "/from/flag"]
    settings = from_command_line(argv, env)
    assert (settings.port, settings.data_dir) == (0, "/from/flag")
    assert settings.host == "127.0.0.3"


def test_hearth_config_environment_names_the_file(config_file: Path) -> None:
    settings = from_command_line(["serve"], {"HEARTH_CONFIG": str(config_file)})
    assert settings.port == 1111


def test_config_flag_wins_over_hearth_config(config_file: Path, tmp_path: Path) -> None:
    other = write_toml(tmp_path / "other.toml", "port = 3333\n")
    settings = from_command_line(["--config", str(other), "serve"], {"HEARTH_CONFIG": str(config_file)})
    assert settings.port == 3333


def test_list_setting_from_file_and_from_environment(tmp_path: Path) -> None:
    file = write_toml(tmp_path / "h.toml", '[auth]\nallowed_origins = ["https://a.example", "https://b.example"]\n')
    assert load_settings({}, environ={}, config_file=str(file)).auth.allowed_origins == [
        "https://a.example",
        "https://b.example",
    ]
    env = {"HEARTH_AUTH_ALLOWED_ORIGINS": " https://c.example, https://d.example,, "}
    settings = load_settings({}, environ=env, config_file=str(file))
    assert settings.auth.allowed_origins == ["https://c.example", "https://d.example"]


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False), ("1", True), ("0", False)])
def test_boolean_from_environment(raw: str, expected: bool) -> None:
    settings = load_settings({}, environ={"HEARTH_SERVER_METRICS_PUBLIC": raw})
    assert settings.server.metrics_public is expected


def setting_names() -> list[tuple[str, object]]:
    """Every setting as (dotted name, default): ``port``, ``server.max_body_bytes``, ..."""
    out: list[tuple[str, object]] = []
    for field in msgspec.structs.fields(Settings):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            out += [(f"{field.name}.{sub.name}", sub.default) for sub in msgspec.structs.fields(field.type)]
        else:
            out.append((field.name, field.default))
    return out


def env_name(setting: str) -> str:
    return "HEARTH_" + setting.replace(".", "_").upper()


def test_every_setting_has_an_environment_variable() -> None:
    """HEARTH_<SECTION>_<FIELD> reaches each nested field and HEARTH_<FIELD> each top-level one."""
    for name, default in setting_names():
        sample = str(default).lower() if isinstance(default, bool | int | float | str) else ""
        try:
            load_settings({}, environ={env_name(name): sample})
        except ConfigError as e:
            assert "unknown setting" not in e.detail, name


def docs_configuration() -> str:
    return (ROOT / "docs" / "configuration.md").read_text()


def test_every_setting_is_documented() -> None:
    text = docs_configuration()
    for name, _ in setting_names():
        assert f"`{name}`" in text, f"{name} missing from docs/configuration.md"
        assert f"`{env_name(name)}`" in text, f"{env_name(name)} missing from docs/configuration.md"


def hearth(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, env=clean_env(**env)
    )


BAD_ENVIRONMENT = [
    ({"HEARTH_LOG_LEVEL": "loud"}, "setting log.level: Invalid enum value 'loud'"),
    ({"HEARTH_AUTH_OPEN_REGISTRATION": "maybe"}, "setting auth.open_registration: Expected bool, got str"),
    ({"HEARTH_SERVER_MAX_BODY_BYTES": "-1"}, "setting server.max_body_bytes: must be greater than 0, got -1"),
    ({"HEARTH_SERVER_MAX_BODY_BYTES": "1k"}, "setting server.max_body_bytes: Expected int, got str"),
    ({"HEARTH_STORAGE_SYNCHRONOUS": "off"}, "setting storage.synchronous: Invalid enum value 'off'"),
    ({"HEARTH_SERVER_NO_SUCH": "1"}, "setting HEARTH_SERVER_NO_SUCH: unknown setting"),
    ({"HEARTH_DATA_DIR": ""}, "setting data_dir: must not be empty"),
    ({"HEARTH_CONFIG": "/nonexistent/hearth.toml"}, "setting config: file /nonexistent/hearth.toml does not exist"),
]


@pytest.mark.parametrize(("env", "message"), BAD_ENVIRONMENT)
def test_bad_environment_setting_exits_2_with_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = hearth("backup", str(tmp_path / "out.db"), **env)
    assert result.returncode == 2
    assert result.stderr == f"hearth: {message}\n"
    assert result.stdout == ""


def test_port_flag_out_of_range_exits_2(tmp_path: Path) -> None:
    result = hearth("serve", "--port", "70000", "--data-dir", str(tmp_path))
    assert (result.returncode, result.stderr) == (2, "hearth: setting port: 70000 is not between 0 and 65535\n")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("port = [", "is not valid TOML"),
        ("[server]\nmax_body_bytes = 0\n", "setting server.max_body_bytes: must be greater than 0, got 0"),
        ('[actions]\nkill_grace_seconds = "soon"\n', "setting actions.kill_grace_seconds: Expected float, got str"),
        ("[nosuch]\nx = 1\n", "setting nosuch: unknown setting"),
    ],
)
def test_bad_config_file_exits_2_with_one_line(tmp_path: Path, toml: str, message: str) -> None:
    config = write_toml(tmp_path / "hearth.toml", toml)
    result = hearth("backup", str(tmp_path / "out.db"), "--data-dir", str(tmp_path), HEARTH_CONFIG=str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr
