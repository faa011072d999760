#!/usr/bin/env python3
"""N PacketTrace sessions' worth of tracing in one process, as the agent runs them: each a
share of the node's one program set (k8s/node_tracer.py), or with --own each its own Tracer
(BPF object, maps and ring buffer sized as the agent sized them before, filter on two
addresses and the node's namespace set), followed on its own thread. The traces' addresses
match nothing the benchmark sends. Prints "tracing N" once all are attached, then, when stopped
(SIGTERM), the process's peak RSS and the kernel memory of the BPF maps it holds (their
memlock), both on stdout as one JSON object.

    sudo python3 bench/agent_scale.py [--own] N NETNS-INODE...
                                        (bench/suite.py's agent-N and agent-own-N modes)
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import threading

from pktpath.core.filters import probe_filter
from pktpath.core.tracer import Tracer
from pktpath.k8s.node_trace import SESSION_MAP_ENTRIES, SESSION_RING_BYTES
from pktpath.k8s.node_tracer import NodeTracer, Subscription


def map_memory() -> int:
    """Bytes of kernel memory (memlock) of the BPF maps this process holds open."""
    total = 0
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue
        if "map_type" in fields:
            total += int(fields.get("memlock", "0").strip() or 0)
    return total


class Namespaces:
    """The node's namespaces, as the node tracer asks for them."""

    def __init__(self, inodes: list[int]) -> None:
        self._inodes = set(inodes)

    def inodes(self) -> set[int]:
        return self._inodes


class NoMetrics:
    def add(self, name: str, value: int = 1) -> None:
        pass


def main() -> int:
    args = sys.argv[1:]
    own = args[:1] == ["--own"]
    count, inodes = int(args[own]), [int(i) for i in args[own + 1:]]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tracers: list[Tracer | Subscription] = []
    node = NodeTracer(Namespaces(inodes), NoMetrics())  # type: ignore[arg-type]
    for n in range(count):
        hosts = (ipaddress.ip_address(f"10.200.{97 + n // 250}.{n % 250 + 1}"),
                 ipaddress.ip_address("10.200.99.99"))
        if own:
            tracer = Tracer(probe_filter(hosts, "icmp", netns_set=True),
                            ring_bytes=SESSION_RING_BYTES, map_entries=SESSION_MAP_ENTRIES).open()
            tracer.set_netns(inodes)
            tracers.append(tracer)
        else:
            sub = node.subscribe(str(h) for h in hosts)
            assert sub is not None
            tracers.append(sub)
    threads = [threading.Thread(target=t.follow, args=(stop, lambda hop: None), daemon=True)
               for t in tracers]
    for thread in threads:
        thread.start()
    print(f"tracing {count}", file=sys.stderr, flush=True)
    stop.wait()
    for thread in threads:
        thread.join(5)
    with open(f"/proc/{os.getpid()}/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"traces": count, "peak_rss_kib": peak,
                      "map_kib": map_memory() // 1024}), flush=True)
    for each in tracers:
        each.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
