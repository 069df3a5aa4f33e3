"""`hearth serve` on a port that is already taken must say so in one line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serve_on_a_busy_port_exits_with_one_line(tmp_path: Path) -> None:
    """handlers/server.py binds inside nurseries; the OSError (EADDRINUSE) escapes app.main as an
    ExceptionGroup traceback (exit 1). The same happens for an unresolvable --host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")} | {"HEARTH_LOG_LEVEL": "error"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [sys.executable, "app.py", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.stderr.startswith("hearth: ") and result.stderr.count("\n") == 1, result.stderr[-400:]
