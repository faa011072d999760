#!/usr/bin/env python3
"""Start to "tracing" of `pktpath trace`, checkouts side by side.

Starts `pktpath trace --host 10.200.99.99` (a filter matching nothing) from each checkout in
turn, N rounds interleaved (these machines are noisy), and prints the median time from the
process's start to its "tracing" line, with the range. Modules are compiled as `pip install`
leaves them (the first round of each checkout writes them and is not counted).

    sudo python3 bench/starts.py                               # this checkout, 21 starts
    sudo python3 bench/starts.py --rounds 31 /tmp/before .     # an earlier commit against this
    sudo python3 bench/starts.py --python /usr/bin/python3.11 /tmp/before .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = ["-m", "pktpath", "trace", "--host", "10.200.99.99"]


def start_once(python: str, checkout: str) -> float:
    """Seconds from starting pktpath (from checkout's agent/) to its "tracing" line."""
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(checkout), "agent"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    begin = time.monotonic()
    proc = subprocess.Popen([python, *COMMAND], env=env, cwd="/", text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "tracing" in line:
                return time.monotonic() - begin
        raise SystemExit(f"pktpath from {checkout} did not start: exit {proc.wait()}")
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", default=[REPO],
                        help="pktpath checkouts (default: this one)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    for checkout in args.checkouts:  # compiles its modules
        start_once(args.python, checkout)
    took: dict[str, list[float]] = {checkout: [] for checkout in args.checkouts}
    for done in range(args.rounds):
        for checkout in args.checkouts:
            took[checkout].append(start_once(args.python, checkout) * 1000)
        print(f"round {done + 1}/{args.rounds}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    for checkout, ms in took.items():
        print(f"{checkout}: median {statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}, "
              f"{len(ms)} starts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
