#!/usr/bin/env python3
"""Start to "tracing" of `pktpath trace`, checkouts side by side.

Starts `pktpath trace --host 10.200.99.99` (a filter matching nothing) from each checkout in
turn, N rounds interleaved (these machines are noisy), and prints the median time from the
process's start to its "tracing" line, with the range. Each checkout's modules are compiled
first, as `pip install` leaves them.

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import REPO
from suite import baseline_command, started, stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", default=[REPO],
                        help="pktpath checkouts (default: this one)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    commands = {checkout: [*baseline_command(os.path.abspath(checkout), args.python),
                           "--host", "10.200.99.99"] for checkout in args.checkouts}
    for checkout in args.checkouts:
        subprocess.run([args.python, "-m", "compileall", "-q", os.path.join(checkout, "agent")],
                       check=False, stdout=subprocess.DEVNULL)
    took: dict[str, list[float]] = {checkout: [] for checkout in args.checkouts}
    for done in range(args.rounds):
        for checkout, command in commands.items():
            proc, seconds = started(command, "tracing", os.devnull, cwd="/")
            stop(proc)
            took[checkout].append(seconds * 1000)
        print(f"round {done + 1}/{args.rounds}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    for checkout, ms in took.items():
        print(f"{checkout}: median {statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}, "
              f"{len(ms)} starts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
