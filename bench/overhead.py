#!/usr/bin/env python3
"""Overhead of pktpath on the traffic it watches: UDP packets/s between two namespaces.

Runs every mode once per round, rounds interleaved (these machines are noisy: only ratios
measured side by side mean anything), and prints the median packets/s of each mode and the
median of its per-round ratios to the untraced run of the same round.

    sudo python3 bench/overhead.py                      # untraced vs a filter matching nothing
    sudo python3 bench/overhead.py --modes all --rounds 7 --seconds 3

Modes: untraced (always), host-nomatch (--host of an address nobody uses), port-nomatch
(--proto udp --port 9), proto-nomatch (--proto tcp), expr-nomatch (the tcpdump expression
'host 10.200.99.99'), expr-port-nomatch ('tcp and dst port 8080'), all (no filter, JSON to
/dev/null).
Traffic: bench/udpflood.c (sendmmsg of 18-byte datagrams), pinned to one CPU, from namespace
ppb-a to a bound UDP socket in namespace ppb-b over a veth pair (10.200.250.0/24).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SRC, DST, PORT = "10.200.250.1", "10.200.250.2", 5001
MODES = {
    "host-nomatch": ["--host", "10.200.99.99"],
    "port-nomatch": ["--proto", "udp", "--port", "9"],
    "proto-nomatch": ["--proto", "tcp"],
    "expr-nomatch": ["host 10.200.99.99"],
    "expr-port-nomatch": ["tcp and dst port 8080"],
    "expr-short-nomatch": ["ip6"],
    "all": ["--json"],
}


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Topology:
    """Two namespaces joined by a veth pair, a UDP sink bound in the second."""

    def __init__(self) -> None:
        self.a, self.b = f"ppb-{os.getpid()}-a", f"ppb-{os.getpid()}-b"
        self.sink: subprocess.Popen[str] | None = None

    def __enter__(self) -> Topology:
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", self.b)
        for ns, addr in ((self.a, SRC), (self.b, DST)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.sink = subprocess.Popen(
            ["ip", "netns", "exec", self.b, sys.executable, "-c",
             f"import socket, time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.bind(('{DST}', {PORT})); print('ready', flush=True); time.sleep(86400)"],
            stdout=subprocess.PIPE, text=True)
        assert self.sink.stdout is not None
        self.sink.stdout.readline()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sink:
            self.sink.kill()
            self.sink.wait()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def build_flood(workdir: str) -> str:
    binary = os.path.join(workdir, "udpflood")
    sh(os.environ.get("CC", "cc"), "-O2", "-o", binary, os.path.join(HERE, "udpflood.c"))
    return binary


def flood(topo: Topology, binary: str, seconds: float, cpu: int) -> float:
    out = subprocess.run(["ip", "netns", "exec", topo.a, "taskset", "-c", str(cpu), binary, DST,
                          str(PORT), str(seconds)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def traced(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "pktpath", "trace", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "tracing" in line:
            return proc
    raise SystemExit(f"pktpath trace {' '.join(args)} did not start")


def measure(mode: str, topo: Topology, binary: str, seconds: float, cpu: int) -> float:
    if mode == "untraced":
        return flood(topo, binary, seconds, cpu)
    proc = traced(MODES[mode])
    try:
        return flood(topo, binary, seconds, cpu)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--modes", default="host-nomatch",
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                        help="CPU the flood is pinned to (default: the last)")
    args = parser.parse_args()
    modes = ["untraced", *[m for m in args.modes.split(",") if m]]
    unknown = set(modes) - {"untraced", *MODES}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        parser.error("the benchmark needs root (namespaces and BPF)")
    pps: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as workdir, Topology() as topo:
        binary = build_flood(workdir)
        flood(topo, binary, 1.0, args.cpu)  # warm up
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                pps[mode].append(measure(mode, topo, binary, args.seconds, args.cpu))
                time.sleep(0.2)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{m} {pps[m][-1]:,.0f}" for m in modes), file=sys.stderr)
    base = pps["untraced"]
    print(f"{'mode':<16}{'median pps':>14}{'ratio':>8}   (median of per-round ratios; "
          f"{args.rounds} rounds of {args.seconds:g} s)")
    for mode in modes:
        ratio = statistics.median(p / b for p, b in zip(pps[mode], base, strict=True))
        print(f"{mode:<16}{statistics.median(pps[mode]):>14,.0f}{ratio:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
