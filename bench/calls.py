"""Call output, one line per frame: Hearth's ``WS /api/v1/ws/`` against websocketd on the same command.

Hearth runs the ``lines`` workload of ws_output as an administrator-defined command (``[calls.commands.lines]``
in a TOML file of the benchmark's own), websocketd runs it directly; the same websocat client reads both. It
sends the ``CallMessage`` as one BINARY frame (``--binary-prefix B``: a stdin line ``B{...}`` is sent binary)
and, with ``-n``, keeps reading after its stdin ends until the server closes. Runs are interleaved; the ratio
is of the medians.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    RUN_TIMEOUT,
    BenchError,
    Hearth,
    Sample,
    Series,
    alternate,
    print_table,
    require_tool,
    run_hearth,
    run_websocketd,
    temp_dir,
    timed,
)
from bench.ws_output import Workload, lines_workload

CALL_NAME = "lines"
BINARY_PREFIX = "B"
CALL_INPUT = (BINARY_PREFIX + json.dumps({"call": CALL_NAME}) + "\n").encode()
RESULT_LINE = (BINARY_PREFIX + '{"success":true}\n').encode()  # how websocat prints the BINARY result frame


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    return json.dumps(value)


def write_config(path: Path, commands: dict[str, Sequence[str]], *, role: str = "admin", limit: int = 256) -> Path:
    """A Hearth settings file defining ``commands`` (name -> argv) as calls, with room for ``limit`` of them."""
    lines = ["[calls]", f"max_total = {limit}", f"max_per_principal = {limit}"]
    for name, argv in commands.items():
        lines += [
            "",
            f"[calls.commands.{name}]",
            f"argv = [{', '.join(toml_string(a) for a in argv)}]",
            f"role = {toml_string(role)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def websocat_argv(url: str, headers: Sequence[str] = ()) -> list[str]:
    return [require_tool("websocat"), "--binary-prefix", BINARY_PREFIX, "-n", url, *(f"-H={h}" for h in headers)]


def hearth_argv(hearth: Hearth) -> list[str]:
    return websocat_argv(f"{hearth.ws_url}/api/v1/ws/", [f"Authorization: Bearer {hearth.api_key}"])


def check_output(argv: list[str], workload: Workload, who: str, *, result: bytes) -> None:
    """One untimed run: every line arrives, and after them exactly ``result`` (Hearth's result frame)."""
    done = subprocess.run(argv, input=CALL_INPUT, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    out = done.stdout
    expected = (workload.total_bytes + len(result), workload.messages + result.count(b"\n"))
    got = (len(out), out.count(b"\n"))
    if done.returncode != 0 or got != expected or not out.endswith(result):
        tail = out[-200:].decode(errors="replace")
        raise BenchError(
            f"{who} delivered {got} (bytes, lines), exit {done.returncode}, expected {expected}; ends {tail!r}"
        )


def measure(workload: Workload, repetitions: int, workdir: Path) -> tuple[Series, Series]:
    config = write_config(workdir / "hearth.toml", {CALL_NAME: workload.argv})
    with run_hearth(workdir, config=config) as hearth, run_websocketd(workload.argv, binary=False) as (port, wsd):
        wsd_argv = websocat_argv(f"ws://127.0.0.1:{port}/")
        h_argv = hearth_argv(hearth)
        check_output(wsd_argv, workload, "websocketd", result=b"")
        check_output(h_argv, workload, "hearth", result=RESULT_LINE)

        def run_wsd() -> Sample:
            return timed(wsd_argv, wsd.pid, CALL_INPUT)

        def run_hearth_client() -> Sample:
            return timed(h_argv, hearth.pid, CALL_INPUT)

        series = alternate({"websocketd": run_wsd, "hearth": run_hearth_client}, repetitions)
    return series["websocketd"], series["hearth"]


def report(workload: Workload, websocketd: Series, hearth: Series) -> float:
    rows = []
    for series in (websocketd, hearth):
        runs = " ".join(f"{s.seconds:.2f}" for s in series.samples)
        rate = workload.messages / series.median_seconds
        rows.append([series.name, f"{rate:,.0f}", f"{series.median_seconds:.3f}", f"{series.median_cpu:.2f}", runs])
    print_table(
        f"calls: {workload.messages:,} 76-byte lines ({workload.total_bytes / 1e6:.0f} MB) through WS /api/v1/ws/,"
        " one TEXT frame a line, websocat to /dev/null",
        ["server", "lines/s", "median s", "server CPU s", "runs (s)"],
        rows,
    )
    ratio = websocketd.median_seconds / hearth.median_seconds
    print(f"ratio hearth/websocketd (calls): {ratio:.2f}x (goal >= 1.0x)")
    return ratio


def run(*, repetitions: int, lines: int) -> dict[str, float]:
    workload = lines_workload(lines)
    with temp_dir() as workdir:
        websocketd, hearth = measure(workload, repetitions, workdir)
    ratio = report(workload, websocketd, hearth)
    return {"calls_ratio": round(ratio, 3)}
