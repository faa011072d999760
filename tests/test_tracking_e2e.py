"""End-to-end: a matched packet is followed where the filter no longer matches it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest
from conftest import need
from netlab import Netlab, docker_like, tcp_listener, vxlan_pods


def test_vxlan_underlay_hops_are_followed_and_decoded(lab: Netlab, trace: Any) -> None:
    a, b, db = vxlan_pods(lab, 74, 75)
    tracked = trace("--host", db, "--proto", "icmp", "--json")
    untracked = trace("--host", db, "--proto", "icmp", "--json", "--no-track")
    a.pods["web"].sh("ping", "-c1", "-W2", db)
    requests = [e for e in tracked.stop().events() if e.get("icmp_type") == 8]
    plain = [e for e in untracked.stop().events() if e.get("icmp_type") == 8]

    path = [(e["netns"], e["ifname"]) for e in requests]
    assert path == [
        (a.pods["web"].inode, "eth0"), (a.ns.inode, a.veths["web"]), (a.ns.inode, "cni0"),
        (a.ns.inode, "flannel.1"), (a.ns.inode, "eth0"), (b.ns.inode, "eth0"),
        (b.ns.inode, "flannel.1"), (b.ns.inode, "cni0"), (b.ns.inode, b.veths["db"]),
        (b.pods["db"].inode, "eth0")]
    underlay = [e for e in requests if e.get("tunnel")]
    assert [e["netns"] for e in underlay] == [a.ns.inode, b.ns.inode]
    assert underlay[0]["tunnel"] == {"type": "vxlan", "vni": 1, "src": "10.200.250.1",
                                     "dst": "10.200.250.2"}
    assert {(e["src"], e["dst"]) for e in requests} == {("10.200.74.10", db)}, "inner addresses"
    assert len({e["packet"] for e in requests}) == 1, "one packet all the way"
    # the kernel filter looks inside VXLAN too, so even untracked the underlay hops match
    assert [(e["netns"], e["ifname"]) for e in plain] == path


def test_docker_port_mapping_is_followed_through_dnat(lab: Netlab, trace: Any) -> None:
    need(shutil.which("iptables") is not None, "iptables is not installed")
    net = docker_like(lab, 76)
    client = lab.ns("client")
    lab.veth(client, "eth0", net.host, "to-client")
    client.ip("addr", "add", "10.200.77.2/24", "dev", "eth0")
    net.host.ip("addr", "add", "10.200.77.1/24", "dev", "to-client")
    client.ip("route", "add", "default", "via", "10.200.77.1")
    net.container.ip("route", "add", "default", "via", net.host_addr)
    net.host.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    net.host.sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080",
                "-j", "DNAT", "--to-destination", f"{net.container_addr}:80")
    with tcp_listener(net.container, 80) as server:
        run = trace("tcp and dst port 8080", "--json")
        untracked = trace("tcp and dst port 8080", "--json", "--no-track")
        client.sh(sys.executable, "-c", "import socket; c=socket.create_connection("
                  "('10.200.77.1', 8080), timeout=2); c.sendall(b'hi'); c.close()")
        server.wait(5)
        events = run.stop().events()
        plain = [e for e in untracked.stop().events() if e.get("tcp_flags") == "S"]

    syn = [e for e in events if e.get("tcp_flags") == "S"]
    assert [(e["netns"], e["ifname"], e["dst"], e["dport"]) for e in syn] == [
        (client.inode, "eth0", "10.200.77.1", 8080),
        (net.host.inode, "to-client", "10.200.77.1", 8080),
        (net.host.inode, "docker0", net.container_addr, 80),
        (net.host.inode, net.veth, net.container_addr, 80),
        (net.container.inode, "eth0", net.container_addr, 80)]
    assert len({e["packet"] for e in syn}) == 1
    assert [e.get("rewrite") for e in syn] == [None, None, "DNAT", None, None]
    assert [(e["ifname"], e["dport"]) for e in plain] == [("eth0", 8080), ("to-client", 8080)], \
        "without tracking, the packet is lost from sight at the DNAT"


def test_text_marks_the_rewrite_and_the_tunnel(lab: Netlab, trace: Any) -> None:
    a, _, db = vxlan_pods(lab, 78, 79)
    run = trace("--host", db, "--proto", "icmp", "--no-drops")
    a.pods["web"].sh("ping", "-c1", "-W2", db)
    lines = [line for line in run.stop().lines() if "request" in line]
    assert lines[4] == (f"[{a.ns.name:>12}]             eth0 request "
                        f"#{lines[0].split('#')[1].split()[0]} 10.200.78.10 -> {db} "
                        "(in vxlan vni 1 10.200.250.1 -> 10.200.250.2)")


def test_bridge_flood_clones_are_the_same_packet(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 80)
    other = lab.ns("other")
    lab.veth(net.host, "vethother", other, "eth0")
    net.host.ip("link", "set", "vethother", "master", "docker0")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)  # learn the container's MAC
    net.host.ip("link", "set", "docker0", "type", "bridge", "ageing_time", "0")  # a hub now
    run = trace("--host", net.container_addr, "--proto", "icmp", "--json")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    requests = [e for e in run.stop().events() if e.get("icmp_type") == 8]

    flooded = {e["ifname"]: e for e in requests if e["netns"] == net.host.inode}
    assert {net.veth, "vethother"} <= set(flooded), "the bridge floods both ports"
    assert flooded[net.veth]["skb"] != flooded["vethother"]["skb"], "a clone"
    assert flooded[net.veth]["packet"] == flooded["vethother"]["packet"], "tied to its parent"


def _track_table_sizes(trace_filter: Any, **kwargs: Any) -> list[int]:
    """max_entries of the tracking tables the kernel holds for a Tracer of trace_filter."""
    from pktpath.core.loader import TRACK_TABLES
    from pktpath.core.tracer import Tracer

    def tables() -> dict[int, int]:
        out = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True,
                             check=True).stdout
        return {m["id"]: m["max_entries"] for m in json.loads(out)
                if m.get("name") in TRACK_TABLES}

    before = tables()
    with Tracer(trace_filter, **kwargs):
        return sorted(n for i, n in tables().items() if i not in before)


def test_tracking_tables_are_the_size_asked() -> None:
    """The agent's traces ask for small tracking tables (map_entries "tracked"), the CLI's
    are 8192 slots, a trace that tracks nothing gets one slot, and a size that is not a power
    of two (the programs mask the hash with it) is refused before anything loads."""
    from pktpath.core.errors import PktpathError
    from pktpath.core.event import Proto
    from pktpath.core.filters import TraceFilter
    from pktpath.core.tracer import Tracer

    need(shutil.which("bpftool") is not None, "bpftool is not installed")
    icmp = TraceFilter(proto=Proto.ICMP)
    assert _track_table_sizes(icmp, map_entries={"tracked": 1024}) == [1024, 1024]
    assert _track_table_sizes(icmp) == [8192, 8192]
    assert _track_table_sizes(TraceFilter(proto=Proto.ICMP, track=False)) == [1, 1]
    with pytest.raises(PktpathError, match="power of two of slots, not 1000"):
        Tracer(icmp, map_entries={"tracked": 1000})
