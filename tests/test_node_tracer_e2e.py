"""End-to-end: the agent's one program set, shared by its traces (k8s/node_tracer.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

from conftest import SLOWDOWN
from netlab import Netlab, docker_like
from pktpath.core.tracer import Hop
from pktpath.k8s.node_tracer import NodeTracer


class Spaces:
    def __init__(self, *inodes: int) -> None:
        self._inodes = set(inodes)

    def inodes(self) -> set[int]:
        return self._inodes


class Counts:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, name: str, value: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + value


def collect(sub: Any, stop: threading.Event, into: list[Hop]) -> threading.Thread:
    thread = threading.Thread(target=sub.follow, args=(stop, into.append), daemon=True)
    thread.start()
    return thread


def echoes_of(hops: list[Hop]) -> list[tuple[int, str, int | None]]:
    return [(h.event.netns, h.event.ifname, h.packet.icmp_type) for h in list(hops)
            if h.packet.icmp_type in (0, 8) and h.fate is None]


def test_each_trace_gets_the_hops_of_its_addresses_and_only_those(
        lab: Netlab, e2e: None) -> None:
    net = docker_like(lab, 90)
    counts = Counts()
    node = NodeTracer(Spaces(net.host.inode, net.container.inode), counts)  # type: ignore[arg-type]
    first = node.subscribe([net.host_addr, net.container_addr])
    second = node.subscribe(["10.200.91.1", "10.200.91.2"])  # nobody sends there
    assert first is not None and second is not None and first.bit != second.bit
    attached = counts.values["programs_attached"]
    assert attached >= 3, "one program set, attached once"
    third = node.subscribe([net.host_addr, net.container_addr])  # the same pair again
    assert third is not None
    assert counts.values["programs_attached"] == attached, "no program loaded for a trace"
    stop = threading.Event()
    hops: dict[str, list[Hop]] = {"first": [], "second": [], "third": []}
    threads = [collect(sub, stop, hops[name])
               for name, sub in (("first", first), ("second", second), ("third", third))]
    net.host.sh("ping", "-c2", "-i0.2", "-W1", net.container_addr)
    # the node's reader hands hops on from its own thread: on a slow (emulated) kernel they
    # came after the ping had ended and the traces had been stopped
    deadline = time.monotonic() + 10 * SLOWDOWN
    while (len(echoes_of(hops["first"])) < 12 or len(echoes_of(hops["third"])) < 12) and (
            time.monotonic() < deadline):
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(5)

    echoes = echoes_of(hops["first"])
    assert len(echoes) == 2 * 6, "2 requests and 2 replies at docker0, the veth and eth0"
    assert echoes_of(hops["third"]) == echoes
    assert hops["second"] == []
    for sub in (first, second):
        sub.close()
    assert counts.values["programs_attached"] == attached, "attached while a trace runs"
    third.close()
    assert counts.values["programs_attached"] == 0, "detached with the last trace"


def test_a_namespace_not_the_nodes_is_not_traced(lab: Netlab, e2e: None) -> None:
    """The node's namespaces bound every trace: the container's is left out of them here, so
    its hops of the traced echoes are not shown, the host's are."""
    net = docker_like(lab, 92)
    node = NodeTracer(Spaces(net.host.inode), Counts())  # type: ignore[arg-type]
    sub = node.subscribe([net.host_addr, net.container_addr])
    assert sub is not None
    stop = threading.Event()
    hops: list[Hop] = []
    thread = collect(sub, stop, hops)
    net.host.sh("ping", "-c2", "-i0.2", "-W1", net.container_addr)
    deadline = time.monotonic() + 10 * SLOWDOWN
    while len(echoes_of(hops)) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3 * SLOWDOWN)  # a hop in the container's namespace would come by now
    stop.set()
    thread.join(5)
    sub.close()

    echoes = echoes_of(hops)
    assert len(echoes) == 2 * 4, "2 requests and 2 replies at docker0 and the veth"
    assert {(netns, ifname) for netns, ifname, _ in echoes} == {
        (net.host.inode, "docker0"), (net.host.inode, net.veth)}
