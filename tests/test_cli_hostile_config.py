"""A NaN float setting (environment or TOML) is refused with exit 2 naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hearth(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    return subprocess.run(
        [sys.executable, "app.py", *args], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("HEARTH_SERVER_REQUEST_HEAD_TIMEOUT_SECONDS", "server.request_head_timeout_seconds"),
        ("HEARTH_SERVER_SHUTDOWN_GRACE_SECONDS", "server.shutdown_grace_seconds"),
        ("HEARTH_ACTIONS_KILL_GRACE_SECONDS", "actions.kill_grace_seconds"),
        ("HEARTH_CALLS_FIRST_MESSAGE_TIMEOUT", "calls.first_message_timeout"),
    ],
)
def test_nan_duration_setting_exits_2_naming_it(tmp_path: Path, variable: str, setting: str) -> None:
    """`nan` is a float, and `nan <= 0` is False, so it slips through. With request_head_timeout_seconds=nan the
    server logs 'connection handler failed' (trio: deadline must not be NaN) for every connection; with
    shutdown_grace_seconds=nan SIGTERM ends in a traceback and exit 1."""
    result = hearth("users", "list", "--data-dir", str(tmp_path / "data"), **{variable: "nan"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"hearth: setting {setting}:")
    assert result.stderr.count("\n") == 1


def test_nan_in_the_toml_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "hearth.toml"
    config.write_text("[server]\nrequest_head_timeout_seconds = nan\n")
    result = hearth("users", "list", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("hearth: setting server.request_head_timeout_seconds:")
