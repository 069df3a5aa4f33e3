"""Action output to a websocket: Hearth's ``/api/v1/actions/exec`` against websocketd on the same command.

``lines``: one message per 76-byte line, read by websocat (text); ``chunks``: 32 KiB writes of the command,
websocketd ``--binary`` against ``framing=chunks``, read by websocat ``-b``. Both servers run in the same
benchmark, their runs interleaved; the ratio is of the medians.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

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

LINE = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvw"  # 75 + newline = 76 bytes
CHUNK = 32 * 1024


@dataclass(frozen=True)
class Workload:
    """One command both servers run, how websocat reads it, and how much it produces."""

    name: str
    command: str
    binary: bool
    messages: int  # lines (text) or 32 KiB writes (binary)
    total_bytes: int

    @property
    def argv(self) -> list[str]:
        return ["sh", "-c", self.command]


def lines_workload(count: int) -> Workload:
    return Workload("lines", f"yes '{LINE}' | head -n {count}", False, count, count * (len(LINE) + 1))


def chunks_workload(megabytes: int) -> Workload:
    count = megabytes * 1024 * 1024 // CHUNK
    return Workload("chunks", f"dd if=/dev/zero bs={CHUNK} count={count} status=none", True, count, count * CHUNK)


@dataclass
class Outcome:
    workload: Workload
    websocketd: Series
    hearth: Series

    @property
    def ratio(self) -> float:
        """Hearth's rate over websocketd's (> 1: Hearth is faster)."""
        return self.websocketd.median_seconds / self.hearth.median_seconds


def websocat_argv(url: str, *, binary: bool, headers: Sequence[str] = ()) -> list[str]:
    flags = ["-b"] if binary else []
    return [require_tool("websocat"), *flags, "-U", "-n", url, *(f"-H={h}" for h in headers)]


def hearth_url(hearth: Hearth, workload: Workload) -> str:
    query = urlencode([*(("argv", a) for a in workload.argv), ("framing", "chunks" if workload.binary else "lines")])
    return f"{hearth.ws_url}/api/v1/actions/exec?{query}"


def check_output(argv: list[str], workload: Workload, who: str) -> None:
    """One untimed run that counts what arrives: both servers must deliver the same output."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as client:
        assert client.stdout is not None
        size = newlines = 0
        while chunk := client.stdout.read(1 << 20):
            size += len(chunk)
            newlines += chunk.count(b"\n")
        client.wait(RUN_TIMEOUT)
    expected = (workload.total_bytes, None) if workload.binary else (workload.total_bytes, workload.messages)
    got = (size, None) if workload.binary else (size, newlines)
    if client.returncode != 0 or got != expected:
        raise BenchError(f"{who} delivered {got} (bytes, lines) for {workload.name}, expected {expected}")


def measure(workload: Workload, repetitions: int, workdir: Path) -> Outcome:
    with run_hearth(workdir) as hearth, run_websocketd(workload.argv, binary=workload.binary) as (port, wsd):
        wsd_argv = websocat_argv(f"ws://127.0.0.1:{port}/", binary=workload.binary)
        hearth_argv = websocat_argv(
            hearth_url(hearth, workload), binary=workload.binary, headers=[f"Authorization: Bearer {hearth.api_key}"]
        )
        check_output(wsd_argv, workload, "websocketd")
        check_output(hearth_argv, workload, "hearth")

        def run_wsd() -> Sample:
            return timed(wsd_argv, wsd.pid)

        def run_hearth_client() -> Sample:
            return timed(hearth_argv, hearth.pid)

        series = alternate({"websocketd": run_wsd, "hearth": run_hearth_client}, repetitions)
    return Outcome(workload, series["websocketd"], series["hearth"])


def report(outcome: Outcome) -> None:
    w = outcome.workload
    unit, scale = ("MB/s", w.total_bytes / 1e6) if w.binary else ("msgs/s", float(w.messages))
    rows = []
    for series in (outcome.websocketd, outcome.hearth):
        runs = " ".join(f"{s.seconds:.2f}" for s in series.samples)
        rows.append(
            [
                series.name,
                f"{scale / series.median_seconds:,.0f}",
                f"{series.median_seconds:.3f}",
                f"{series.median_cpu:.2f}",
                runs,
            ]
        )
    what = "32 KiB chunks" if w.binary else "76-byte lines"
    print_table(
        f"{w.name}: {w.messages:,} {what} ({w.total_bytes / 1e6:.0f} MB), websocat to /dev/null",
        ["server", unit, "median s", "server CPU s", "runs (s)"],
        rows,
    )
    print(f"ratio hearth/websocketd ({w.name}): {outcome.ratio:.2f}x")


def run(name: str, *, repetitions: int, lines: int, megabytes: int) -> dict[str, float]:
    workload = lines_workload(lines) if name == "lines" else chunks_workload(megabytes)
    with temp_dir() as workdir:
        outcome = measure(workload, repetitions, workdir)
    report(outcome)
    return {f"{name}_ratio": round(outcome.ratio, 3)}
