"""``python -m bench [lines] [chunks] [idle] [calls] [idle_calls] [idle_exec]``: run the named benchmarks (all
by default)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench import calls, idle, idle_calls, ws_output
from bench.harness import BenchError, summary_json

BENCHMARKS = ("lines", "chunks", "idle", "calls", "idle_calls", "idle_exec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME", help=f"any of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--repetitions", "-r", type=int, default=5, help="runs per server, interleaved (median)")
    parser.add_argument("--lines", type=int, default=500_000, help="lines of the 'lines' and 'calls' benchmarks")
    parser.add_argument("--megabytes", type=int, default=200, help="MiB of the 'chunks' benchmark")
    parser.add_argument("--calls", type=int, default=1000, help="idle websockets of 'idle_calls', 'idle_exec'")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    return parser


def run_one(name: str, args: argparse.Namespace) -> dict[str, float]:
    if name == "idle":
        return idle.run(repetitions=args.repetitions)
    if name == "calls":
        return calls.run(repetitions=args.repetitions, lines=args.lines)
    if name == "idle_calls":
        return idle_calls.run(calls=args.calls)
    if name == "idle_exec":
        return idle_calls.run(calls=args.calls, face=idle_calls.EXEC)
    return ws_output.run(name, repetitions=args.repetitions, lines=args.lines, megabytes=args.megabytes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = args.names or list(BENCHMARKS)
    results: dict[str, object] = {}
    try:
        for name in names:
            results.update(run_one(name, args))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print("\nsummary: " + ", ".join(f"{k}={v}" for k, v in results.items()))
    if args.json:
        print(summary_json(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
