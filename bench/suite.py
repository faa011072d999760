#!/usr/bin/env python3
"""The benchmark suite: what pktpath costs the traffic it watches, next to its peers.

Traffic between two namespaces over a veth pair (bench/overhead.py's topology):
  udp  packets/s of 18-byte datagrams from 100 flows (bench/udpflood.c, one CPU)
  tcp  bytes/s over 100 TCP connections written in turn (64 KiB writes)
  iperf3  packets/s of 64-byte UDP datagrams iperf3 sends (-u -b 0 -l 64) to an iperf3
       server reading them on the other CPU: a judge that is not pktpath's own. The server
       reads about half; the rest are dropped at its full socket, and cheaper to the sender
       than one queued and woken for: a mode whose reader takes the server's CPU (everything
       traced) makes the sender faster, so only the modes without a busy reader compare. One
       flow: the one-flow modes are left out for it
Modes, run interleaved in every round (these machines are noisy: only ratios measured side by
side mean anything):
  untraced     nothing attached
  nomatch      (a) pktpath trace --host 10.200.99.99 (a filter matching nothing)
  one-in-100   (b) pktpath trace matching 1 flow of the 100, JSON to a file
  all-to-file  (c) pktpath trace with no filter, JSON to a file
  all-no-track (c) with --no-track: the same hops, packets not followed through clones and NAT
  one-no-track (b) with --no-track: only the matching flow's hops, not the rest of their way
  floor        programs that return at once on the tracepoints of (a) (bench/floor.py): what
               any program there costs the flood, the ceiling of (a)'s ratio on this machine
  bpftrace     bpftrace counting the same tracepoints (net_dev_queue, netif_receive_skb,
               kfree_skb, consume_skb)
  perf-trace   perf trace -e 'net:*' -a to a file
  expr-nomatch pktpath trace 'host 10.200.99.99': a tcpdump expression matching nothing, run
               on every packet (translated into eBPF at load time)
  conn-nomatch (a) with a connection tracked through NAT elsewhere (namespaces of its own, a
               DNAT there): every packet of the flood then pays the lookup of its flow in
               the tracked connections (compare with nomatch, where none is tracked)
  agent-N      N PacketTraces matching nothing on one node, as the agent runs them (one
               program set for all; bench/agent_scale.py): also peak RSS and BPF map memory,
               e.g. --modes agent-1,agent-10,agent-50; agent-own-N: each its own BPF object,
               as before; agent-N-baseline: the same from the --baseline DIR checkout
  drop-watch   pktpath drops (every drop counted in the kernel; no trace): the flood's sink never
               reads, so most datagrams are dropped at its full socket and each is counted
  expr-baseline  the same with an earlier pktpath checked out in --baseline DIR (its package
               `agent` or `pktpath` under DIR/agent): e.g. the bpf_loop interpreter of 382c2df
  MODE-baseline  any pktpath trace mode above run from the --baseline DIR checkout, e.g.
               --modes all-to-file,all-to-file-baseline (side by side, same rounds)
Printed: median rate of each mode and the median of its per-round ratios to untraced; with
--bpf-stats (udp), the time all BPF programs ran per packet sent (kernel.bpf_stats_enabled:
run_time_ns, far steadier than the rates, as it leaves out the rest of the machine); the
median time from starting pktpath to its "tracing" line; the user-space path in events/s
(bench/consumer.py).

    sudo python3 bench/suite.py --rounds 5 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import DST, PORT, REPO, Topology, build_flood

FLOWS = 100
TCP_PORT = 5201
IPERF3_PORT = 5201  # iperf3's own
TRACEPOINTS = ("tracepoint:net:net_dev_queue, tracepoint:net:netif_receive_skb, "
               "tracepoint:skb:kfree_skb, tracepoint:skb:consume_skb")
TCP_SENDER = f"""
import socket, sys, time
seconds = float(sys.argv[1])
conns = [socket.create_connection(('{DST}', {TCP_PORT})) for _ in range({FLOWS})]
print(' '.join(str(c.getsockname()[1]) for c in conns[:1]), flush=True)
sys.stdin.readline()
buf = b'x' * 65536
sent = 0
start = time.monotonic()
end = start + seconds
while time.monotonic() < end:
    for c in conns:
        sent += c.send(buf)
print(sent / (time.monotonic() - start), flush=True)
"""
TCP_SINK = f"""
import selectors, socket
sel = selectors.DefaultSelector()
server = socket.create_server(('{DST}', {TCP_PORT}), backlog=1024)
sel.register(server, selectors.EVENT_READ)
print('ready', flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is server:
            conn, _ = server.accept()
            sel.register(conn, selectors.EVENT_READ)
        elif not key.fileobj.recv(1 << 20):
            sel.unregister(key.fileobj)
            key.fileobj.close()
"""


class Traffic:
    """One kind of traffic: start() measures one run of seconds, returns its rate."""

    def __init__(self, kind: str, topo: Topology, workdir: str, cpu: int) -> None:
        self.kind, self.topo, self.cpu = kind, topo, cpu
        self.flood = build_flood(workdir) if kind == "udp" else ""
        self.sink: subprocess.Popen[str] | None = None
        if kind == "iperf3":
            if shutil.which("iperf3") is None:
                raise SystemExit("the iperf3 traffic needs iperf3: make bench-deps")
            server = subprocess.Popen(["ip", "netns", "exec", topo.b, "taskset", "-c",
                                       str(self.other_cpu()), "iperf3", "-s", "-B", DST],
                                      stdout=subprocess.DEVNULL, text=True)
            self.sink = server
            deadline = time.monotonic() + 10
            while not subprocess.run(["ip", "netns", "exec", topo.b, "ss", "-Hltn",
                                      f"sport = :{IPERF3_PORT}"], capture_output=True,
                                     text=True, check=True).stdout:
                if time.monotonic() > deadline or server.poll() is not None:
                    self.close()
                    raise SystemExit("the iperf3 server did not start")
                time.sleep(0.05)
        if kind == "tcp":
            self.sink = subprocess.Popen(["ip", "netns", "exec", topo.b, sys.executable, "-c",
                                          TCP_SINK], stdout=subprocess.PIPE, text=True)
            assert self.sink.stdout is not None
            self.sink.stdout.readline()

    def other_cpu(self) -> int:
        """A CPU other than the sender's, for a receiver."""
        return (self.cpu + 1) % (os.cpu_count() or 1)

    def one_flow_filter(self) -> list[str]:
        """pktpath arguments matching one flow of the 100 (udp, tcp)."""
        if self.kind == "udp":
            return ["--proto", "udp", "--port", "20000"]
        return ["--proto", "tcp", "--port", str(self.tcp_port)]

    tcp_port = 0

    def run(self, seconds: float, between: Callable[[], None] | None = None) -> float:
        """Rate of one run: packets/s (udp, iperf3) or bytes/s (tcp)."""
        if self.kind == "iperf3":
            out = subprocess.run(["ip", "netns", "exec", self.topo.a, "taskset", "-c",
                                  str(self.cpu), "iperf3", "-u", "-b", "0", "-l", "64", "-t",
                                  f"{seconds:g}", "-c", DST, "--json"],
                                 check=True, capture_output=True, text=True)
            sent = json.loads(out.stdout)["end"]["sum_sent"]
            return float(sent["packets"]) / float(sent["seconds"])
        if self.kind == "udp":
            out = subprocess.run(["ip", "netns", "exec", self.topo.a, "taskset", "-c",
                                  str(self.cpu), self.flood, DST, str(PORT), str(seconds), "18",
                                  str(FLOWS)], check=True, capture_output=True, text=True)
            return float(out.stdout.strip())
        sender = subprocess.Popen(["ip", "netns", "exec", self.topo.a, "taskset", "-c",
                                   str(self.cpu), sys.executable, "-c", TCP_SENDER,
                                   str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        assert sender.stdin is not None and sender.stdout is not None
        self.tcp_port = int(sender.stdout.readline())
        if between is not None:
            between()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        rate = float(sender.stdout.readline())
        sender.wait()
        return rate

    def close(self) -> None:
        if self.sink is not None:
            self.sink.kill()
            self.sink.wait()


def started(cmd: list[str], marker: str, out: str, cwd: str = REPO, wait: float = 0.0,
            marker_on_stdout: bool = False,
            stdout_pipe: bool = False) -> tuple[subprocess.Popen[str], float]:
    """Start a tracer; wait for marker on its stderr (or stdout), or wait seconds;
    (process, seconds it took)."""
    begin = time.monotonic()
    with open(out, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, text=True,
                                stdout=subprocess.PIPE if marker_on_stdout or stdout_pipe
                                else sink,
                                stderr=sink if marker_on_stdout else subprocess.PIPE)
    stream = proc.stdout if marker_on_stdout else proc.stderr
    assert stream is not None
    if marker:
        for line in stream:
            if marker in line:
                return proc, time.monotonic() - begin
        raise SystemExit(f"{cmd[0]} did not start")
    time.sleep(wait)
    return proc, time.monotonic() - begin


def stop(proc: subprocess.Popen[str], memory: dict[str, list[dict[str, int]]] | None = None,
         mode: str = "") -> None:
    """End a tracer; an agent-N one prints its memory on stdout, kept in memory[mode]."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if memory is not None and out:
        memory.setdefault(mode, []).append(json.loads(out.strip().splitlines()[-1]))


def baseline_command(checkout: str, python: str = sys.executable) -> list[str]:
    """`trace` of an earlier pktpath checked out in checkout, run from its own source."""
    source = os.path.join(checkout, "agent")
    package = "pktpath" if os.path.isdir(os.path.join(source, "pktpath")) else "agent"
    return ["env", f"PYTHONPATH={source if package == 'pktpath' else checkout}",
            python, "-m", package, "trace"]


def netns_inode(name: str) -> str:
    return str(os.stat(f"/run/netns/{name}").st_ino)


def tracer(mode: str, traffic: Traffic, workdir: str,
           baseline: str | None = None) -> list[str] | None:
    """The command of a mode (None for untraced)."""
    pktpath = [sys.executable, "-m", "pktpath", "trace"]
    if mode.startswith("agent-") and mode.endswith("-baseline"):
        command = tracer(mode.removesuffix("-baseline"), traffic, workdir)
        assert command is not None and baseline
        script = os.path.join(baseline, "bench", "agent_scale.py")
        return ["env", f"PYTHONPATH={os.path.join(baseline, 'agent')}", command[0], script,
                *command[2:]]
    if mode.endswith("-baseline") and mode != "expr-baseline":
        command = tracer(mode.removesuffix("-baseline"), traffic, workdir)
        assert command is not None and command[:len(pktpath)] == pktpath, mode
        return [*baseline_command(baseline or ""), *command[len(pktpath):]]
    if mode.startswith("agent-"):
        own = ["--own"] if mode.startswith("agent-own-") else []
        return [sys.executable, os.path.join(REPO, "bench", "agent_scale.py"), *own,
                mode.rsplit("-", 1)[1], netns_inode(traffic.topo.a), netns_inode(traffic.topo.b)]
    return {
        "untraced": None,
        "nomatch": [*pktpath, "--host", "10.200.99.99"],
        "one-in-100": [*pktpath, *traffic.one_flow_filter(), "--json"],
        "all-to-file": [*pktpath, "--json"],
        "all-no-track": [*pktpath, "--json", "--no-track"],
        "one-no-track": [*pktpath, *traffic.one_flow_filter(), "--json", "--no-track"],
        "floor": [sys.executable, os.path.join(REPO, "bench", "floor.py")],
        "bpftrace": ["bpftrace", "-e", f"{TRACEPOINTS} {{ @[probe] = count(); }}"],
        "perf-trace": ["perf", "trace", "-a", "-e", "net:*", "-o",
                       os.path.join(workdir, "perf.out")],
        "expr-nomatch": [*pktpath, "host 10.200.99.99"],
        "conn-nomatch": [*pktpath, "--host", "10.200.99.99"],
        "drop-watch": [sys.executable, "-m", "pktpath", "drops", "--json", "--interval", "1"],
        "expr-baseline": [*baseline_command(baseline or ""), "host 10.200.99.99"],
    }[mode]


ONE_FLOW = ("one-in-100", "one-no-track")  # modes whose filter is one flow of the traffic
MARKERS = {"bpftrace": "Attaching", "perf-trace": "", "drop-watch": "counting drops"}


def nat_connection() -> None:
    """One datagram to 10.200.99.99 through a DNAT, in two namespaces of its own: the trace
    (--host 10.200.99.99) sees it translated and tracks its connection."""
    c1, c2 = f"ppb-{os.getpid()}-c1", f"ppb-{os.getpid()}-c2"
    commands = [
        ["ip", "netns", "add", c1], ["ip", "netns", "add", c2],
        ["ip", "-n", c1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
         "netns", c2],
        ["ip", "-n", c1, "addr", "add", "10.200.98.1/24", "dev", "eth0"],
        ["ip", "-n", c2, "addr", "add", "10.200.98.2/24", "dev", "eth0"],
        ["ip", "-n", c1, "link", "set", "eth0", "up"],
        ["ip", "-n", c2, "link", "set", "eth0", "up"],
        ["ip", "-n", c1, "route", "add", "10.200.99.99/32", "via", "10.200.98.2"],
        ["ip", "netns", "exec", c2, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["ip", "netns", "exec", c2, "iptables", "-t", "nat", "-A", "PREROUTING", "-d",
         "10.200.99.99", "-j", "DNAT", "--to-destination", "10.200.98.1"],
        ["ip", "netns", "exec", c1, sys.executable, "-c", "import socket; socket.socket("
         "socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.200.99.99', 9))"],
    ]
    try:
        for cmd in commands:
            subprocess.run(cmd, check=True, capture_output=True)
        time.sleep(0.2)
    finally:
        for ns in (c1, c2):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def bpf_run_time_ns() -> int:
    """Nanoseconds all loaded BPF programs have run so far (with kernel.bpf_stats_enabled)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], check=True,
                         capture_output=True, text=True).stdout
    return sum(int(prog.get("run_time_ns", 0)) for prog in json.loads(out))


def measure(mode: str, traffic: Traffic, seconds: float, workdir: str,
            startup: list[float], baseline: str | None = None,
            memory: dict[str, list[dict[str, int]]] | None = None,
            cost: dict[str, list[float]] | None = None) -> float:
    """One run of a mode: the traffic's rate; its BPF time per packet appended to cost[mode]
    when cost is given."""
    out = os.path.join(workdir, f"{mode}.out")
    if mode == "untraced":
        return traffic.run(seconds)
    holder: list[subprocess.Popen[str]] = []

    def start() -> None:
        # the command when it starts: a TCP flow's filter needs the port of this run's sender
        cmd = tracer(mode, traffic, workdir, baseline)
        assert cmd is not None
        proc, took = started(cmd, MARKERS.get(mode, "tracing"), out, wait=2.0,
                             marker_on_stdout=mode == "bpftrace",
                             stdout_pipe=mode.startswith("agent-"))
        holder.append(proc)
        if mode == "nomatch":
            startup.append(took)

    try:
        if traffic.kind == "udp" or mode.removesuffix("-baseline") not in ONE_FLOW:
            start()
            if mode.removesuffix("-baseline") == "conn-nomatch":
                nat_connection()
            if cost is None:
                return traffic.run(seconds)
            before = bpf_run_time_ns()
            rate = traffic.run(seconds)
            cost.setdefault(mode, []).append((bpf_run_time_ns() - before) / (rate * seconds))
            return rate
        return traffic.run(seconds, between=start)  # the filter needs the flow's port
    finally:
        for proc in holder:
            stop(proc, memory if mode.startswith("agent-") else None, mode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--traffic", default="udp,tcp",
                        help="udp, tcp, iperf3, or several separated by commas")
    parser.add_argument("--modes",
                        default="floor,nomatch,one-in-100,all-to-file,bpftrace,perf-trace")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("--baseline", metavar="DIR",
                        help="an earlier pktpath checkout, for the -baseline modes")
    parser.add_argument("--bpf-stats", action="store_true",
                        help="also the BPF programs' run time per packet (not tcp)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the benchmark needs root (namespaces and BPF)")
    # untraced is always measured, once (dict: each mode once, in the order given)
    modes = list(dict.fromkeys(["untraced", *filter(None, args.modes.split(","))]))
    for tool, mode in (("bpftrace", "bpftrace"), ("perf", "perf-trace")):
        if mode in modes and shutil.which(tool) is None:
            print(f"{tool} is not installed: leaving out {mode}", file=sys.stderr)
            modes.remove(mode)
    unknown = set(args.traffic.split(",")) - {"udp", "tcp", "iperf3"}
    if unknown:
        parser.error(f"unknown traffic {', '.join(sorted(unknown))}: udp, tcp or iperf3")
    if any(m.endswith("-baseline") for m in modes) and not args.baseline:
        parser.error("a -baseline mode needs --baseline DIR (an earlier pktpath checkout)")
    if not os.path.exists("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    # as `pip install` leaves it: every module compiled (else each start compiles them anew
    # wherever PYTHONDONTWRITEBYTECODE is set, ~35 ms of it)
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "agent")],
                   check=False, stdout=subprocess.DEVNULL)
    startup: list[float] = []
    memory: dict[str, list[dict[str, int]]] = {}
    results: dict[str, dict[str, list[float]]] = {}
    cost: dict[str, dict[str, list[float]]] | None = None
    if args.bpf_stats:
        cost = {}
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        run_all(args, modes, startup, memory, results, cost)
    finally:
        if args.bpf_stats:
            subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    report(args, results, memory, startup, cost)
    return 0


def run_all(args: argparse.Namespace, modes: list[str], startup: list[float],
            memory: dict[str, list[dict[str, int]]], results: dict[str, dict[str, list[float]]],
            cost: dict[str, dict[str, list[float]]] | None) -> None:
    """Every round of every traffic kind; rates into results."""
    with tempfile.TemporaryDirectory() as workdir, Topology() as topo:
        for kind in args.traffic.split(","):
            traffic = Traffic(kind, topo, workdir, args.cpu)
            try:
                traffic.run(1.0)  # warm up
                kept = [m for m in modes
                        if kind != "iperf3" or m.removesuffix("-baseline") not in ONE_FLOW]
                if kept != modes:
                    print("iperf3 is one flow: the one-flow modes run on udp and tcp only",
                          file=sys.stderr)
                rates: dict[str, list[float]] = {m: [] for m in kept}
                for r in range(args.rounds):
                    for mode in kept[r % len(kept):] + kept[:r % len(kept)]:
                        rates[mode].append(measure(
                            mode, traffic, args.seconds, workdir, startup, args.baseline,
                            memory, cost.setdefault(kind, {}) if cost is not None and
                            kind != "tcp" else None))
                        time.sleep(0.3)
                    print(f"{kind} round {r + 1}/{args.rounds}: " + ", ".join(
                        f"{m} {rates[m][-1]:,.0f}" for m in kept), file=sys.stderr)
                results[kind] = rates
            finally:
                traffic.close()


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]],
           memory: dict[str, list[dict[str, int]]], startup: list[float],
           cost: dict[str, dict[str, list[float]]] | None) -> None:
    """Print the medians, ratios, BPF time, memory, start and user-space figures."""
    print(f"{args.rounds} interleaved rounds of {args.seconds:g} s; ratio = median of "
          "per-round ratios to untraced")
    for kind, rates in results.items():
        unit = "MB/s" if kind == "tcp" else "packets/s"
        scale = 1e-6 if kind == "tcp" else 1.0
        width = max(14, *(len(mode) + 1 for mode in rates))
        spent_ns = (cost or {}).get(kind, {})
        ns = " BPF ns/packet" if spent_ns else ""
        print(f"\n{kind:<{width}}{unit:>14}{'ratio':>8}{ns}")
        base = rates["untraced"]
        for mode, values in rates.items():
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            spent = (f"{statistics.median(spent_ns[mode]):>14.0f}" if mode in spent_ns
                     else "")
            print(f"{mode:<{width}}{statistics.median(values) * scale:>14,.0f}{ratio:>8.3f}"
                  f"{spent}")
    for mode, runs in memory.items():
        rss = statistics.median(r["peak_rss_kib"] for r in runs) / 1024
        maps = statistics.median(r["map_kib"] for r in runs) / 1024
        print(f"{mode}: peak RSS median {rss:.0f} MiB, BPF maps {maps:.1f} MiB")
    if startup:
        print(f"\nstart to 'tracing': median {statistics.median(startup) * 1000:.0f} ms "
              f"({len(startup)} starts)")
    consumer = subprocess.run([sys.executable, os.path.join(REPO, "bench", "consumer.py")],
                              capture_output=True, text=True, check=False)
    print("\nuser-space path (bench/consumer.py):\n" + (consumer.stdout or consumer.stderr))


if __name__ == "__main__":
    sys.exit(main())
