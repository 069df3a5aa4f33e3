"""``hearth serve`` start-to-ready time and idle RSS (budgets: ready under 1 s, RSS under 80 MiB).

Start-to-ready is from spawning the process to the first 200 of ``GET /healthz`` (``/openapi.json`` when
the server has no /healthz), on a port picked beforehand; once with a fresh data directory (the first start
creates the admin user) and once again on the same directory. Idle RSS is read from /proc a second after ready.
"""

from __future__ import annotations

import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.harness import (
    START_TIMEOUT,
    BenchError,
    free_port,
    hearth_command,
    hearth_env,
    print_table,
    rss_bytes,
    stop,
    temp_dir,
    wait_http,
)

READY_BUDGET_SECONDS = 1.0
RSS_BUDGET_BYTES = 80 * 1024 * 1024
SETTLE_SECONDS = 1.0


def ready_path(base: str) -> str:
    """/healthz if the server has it, else /openapi.json."""
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
            return "/healthz" if response.status == 200 else "/openapi.json"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return "/openapi.json"


def start_once(data_dir: Path, path: str) -> tuple[float, int]:
    """Spawn, wait until ``path`` answers; (seconds to ready, RSS after settling)."""
    port = free_port()
    start = time.monotonic()
    process = subprocess.Popen(
        hearth_command(data_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=hearth_env()
    )
    try:
        wait_http(f"http://127.0.0.1:{port}{path}", start + START_TIMEOUT)
        ready = time.monotonic() - start
        time.sleep(SETTLE_SECONDS)
        if process.poll() is not None:
            raise BenchError(f"hearth serve exited with {process.returncode}")
        return ready, rss_bytes(process.pid)
    finally:
        stop(process)


def probe_path(data_dir: Path) -> str:
    port = free_port()
    process = subprocess.Popen(
        hearth_command(data_dir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=hearth_env()
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/openapi.json", time.monotonic() + START_TIMEOUT)
        return ready_path(f"http://127.0.0.1:{port}")
    finally:
        stop(process)


def run(*, repetitions: int) -> dict[str, float]:
    with temp_dir() as workdir:
        path = probe_path(workdir / "probe")
        fresh = [start_once(workdir / f"fresh{i}", path) for i in range(repetitions)]
        again = [start_once(workdir / "fresh0", path) for _ in range(repetitions)]
    fresh_s, again_s = statistics.median(r for r, _ in fresh), statistics.median(r for r, _ in again)
    rss = statistics.median(m for _, m in again)
    rows = [
        [
            "start to ready, fresh data dir",
            f"{fresh_s:.3f} s",
            f"< {READY_BUDGET_SECONDS:.0f} s",
            _verdict(fresh_s < READY_BUDGET_SECONDS),
        ],
        [
            "start to ready, existing data dir",
            f"{again_s:.3f} s",
            f"< {READY_BUDGET_SECONDS:.0f} s",
            _verdict(again_s < READY_BUDGET_SECONDS),
        ],
        [
            "idle RSS",
            f"{rss / 2**20:.1f} MiB",
            f"< {RSS_BUDGET_BYTES / 2**20:.0f} MiB",
            _verdict(rss < RSS_BUDGET_BYTES),
        ],
    ]
    print_table(
        f"idle: hearth serve, ready = first 200 of GET {path}, median of {repetitions}",
        ["what", "measured", "budget", ""],
        rows,
    )
    return {
        "ready_fresh_s": round(fresh_s, 3),
        "ready_again_s": round(again_s, 3),
        "idle_rss_mib": round(rss / 2**20, 1),
    }


def _verdict(ok: bool) -> str:
    return "ok" if ok else "OVER BUDGET"
