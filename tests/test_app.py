"""The entry point: settings errors exit 2 with one line; the server starts on port 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer


def run_hearth(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "app.py", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        input=input,
        cwd=Path(__file__).resolve().parent.parent,
    )


async def test_server_answers_openapi_on_a_free_port(server: RunningServer) -> None:
    async with server.client() as client:
        response = await client.get("/openapi.json")
    assert server.port > 0
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


def test_version_prints_version() -> None:
    result = run_hearth("version")
    assert result.returncode == 0
    assert result.stdout.strip() == "0.1.0"


def test_unknown_environment_setting_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_hearth("serve", "--data-dir", str(tmp_path), env={"HEARTH_NO_SUCH_THING": "1", "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert result.stderr.strip() == "hearth: setting HEARTH_NO_SUCH_THING: unknown setting"


def test_bad_port_in_config_file_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "hearth.toml"
    config.write_text('port = "eighty"\n')
    result = run_hearth("--config", str(config), "serve", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "hearth: setting port: Expected int, got str"


def test_unknown_setting_in_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "hearth.toml"
    config.write_text("[auth]\nopen_registraton = true\n")
    result = run_hearth("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == "hearth: setting auth.open_registraton: unknown setting"


def test_unwritable_data_dir_exits_2(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    result = run_hearth("serve", "--data-dir", str(blocked / "data"))
    assert result.returncode == 2
    assert result.stderr.startswith("hearth: setting data_dir: cannot create")


def test_database_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "hearth.db").write_text("this is not a database, just text\n")
    result = run_hearth("serve", "--data-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    assert "is not a SQLite database" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_lifts_the_open_file_limit_to_the_hard_limit(tmp_path: Path) -> None:
    import json
    import resource

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    server = subprocess.Popen(
        [sys.executable, "app.py", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_soft_limit,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            record = json.loads(line)
            if record["msg"] == "open file limit":
                assert record["nofile"] == 4096
                break
        else:
            raise AssertionError("no 'open file limit' log line")
    finally:
        server.terminate()
        server.communicate(timeout=20)
