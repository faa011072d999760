"""End-to-end: tcpdump expressions run in the kernel select exactly the right packets.

One batch of mixed traffic (TCP to an open and a closed port, UDP over IPv4 and IPv6, ICMP
and ICMPv6 echo, ARP, VLAN-tagged ICMP) crosses a docker-like network while one trace per
expression from the pcap-filter manual runs. Each is checked both ways: every event it shows
satisfies the expression, and the packets that should appear do.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import REPO
from netlab import DockerLike, Netlab, docker_like, tcp_listener
from test_trace_e2e import send_udp, udp_sink

Event = dict[str, Any]
VLAN_HOST, VLAN_CTR = "10.200.72.1", "10.200.72.2"


def mixed_traffic(net: DockerLike) -> None:
    with tcp_listener(net.container, 8080) as server:
        net.host.sh(sys.executable, "-c",
                    "import socket; c=socket.create_connection("
                    f"('{net.container_addr}', 8080), timeout=2); c.sendall(b'hi'); c.close()")
        net.host.sh(sys.executable, "-c",  # closed port: SYN answered by RST
                    "import socket\ntry: socket.create_connection("
                    f"('{net.container_addr}', 22), timeout=2)\nexcept OSError: pass")
        server.wait(5)
    with udp_sink(net, 53):
        send_udp(net, b"v4", 40053, 53)
        for port in (53, 5353):
            net.host.sh(sys.executable, "-c",
                        "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM);"
                        f"s.sendto(b'v6', ('{net.container_addr6}', {port}))")
        net.host.ip("neigh", "flush", "all")
        net.host.sh("ping", "-c1", "-W2", net.container_addr)
        net.host.sh("ping", "-6", "-c1", "-W2", net.container_addr6)
        send_tagged_echo(net)
        time.sleep(0.2)


def send_tagged_echo(net: DockerLike) -> None:
    """An ICMP echo in a VLAN 72 frame, written onto the veth with a packet socket (this
    kernel has no VLAN devices; the tag is inside the frame, as libpcap's code checks)."""
    net.host.sh(sys.executable, "-c", f"""
import socket, struct
from pktpath.host.pinger import checksum
echo = struct.pack('!BBHHH', 8, 0, 0, 7272, 1) + b'tagged'
echo = echo[:2] + struct.pack('!H', checksum(echo)) + echo[4:]
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(echo), 1, 0, 64, 1, 0,
                 socket.inet_aton('{VLAN_HOST}'), socket.inet_aton('{VLAN_CTR}'))
ip = ip[:10] + struct.pack('!H', checksum(ip)) + ip[12:]
frame = bytes.fromhex('ffffffffffff020000000001') + struct.pack('!HHH', 0x8100, 72, 0x0800)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('{net.veth}', 0))
s.send(frame + ip + echo)
""", cwd=REPO)


def is_syn(e: Event) -> bool:
    return "S" in e.get("tcp_flags", "")


CASES: list[tuple[str, Callable[[Event], bool], Callable[[list[Event]], None]]] = []


def case(expression: str, accepts: Callable[[Event], bool]) -> Callable[..., Any]:
    def register(expect: Callable[[list[Event]], None]) -> Callable[[list[Event]], None]:
        CASES.append((expression, accepts, expect))
        return expect
    return register


@case("tcp[tcpflags] & tcp-syn != 0", is_syn)
def _syn(events: list[Event]) -> None:
    flags = {(e["dport"] if e["tcp_flags"] == "S" else e["sport"], e["tcp_flags"])
             for e in events}
    assert flags == {(8080, "S"), (8080, "S."), (22, "S")}


@case("icmp[icmptype] == icmp-echo", lambda e: e.get("proto") == "icmp" and e["icmp_type"] == 8)
def _echo(events: list[Event]) -> None:
    # on the wire the tagged echo has ethertype 0x8100, so `icmp` does not match it there
    # (its drop, seen after the kernel moved the tag out of the frame, is a bare IP packet)
    wire = {e["dst"] for e in events if e["hook"] != "kfree_skb"}
    assert wire == {"10.200.71.2"}


@case("ip6 and udp port 53",
      lambda e: e["family"] == "ipv6" and e.get("proto") == "udp" and 53 in (e["sport"],
                                                                             e["dport"]))
def _dns6(events: list[Event]) -> None:
    assert [e["ifname"] for e in events if e["hook"] != "kfree_skb"][:3] == [
        "docker0", "veth071ab6", "eth0"]


@case("arp", lambda e: e["family"] == "arp")
def _arp(events: list[Event]) -> None:
    assert {e["arp_op"] for e in events} == {"request", "reply"}


@case("vlan", lambda e: e.get("vlan") == 72)
def _vlan(events: list[Event]) -> None:
    assert [(e["ifname"], e["hook"]) for e in events][:2] == [
        ("veth071ab6", "net_dev_queue"), ("eth0", "netif_receive_skb")]


@case("net 10.200.0.0/16 and not port 22",
      lambda e: e["family"] in ("ipv4", "arp") and 22 not in (e.get("sport"), e.get("dport")))
def _net(events: list[Event]) -> None:
    kinds = {e.get("proto") or e["family"] for e in events}
    # the kernel's own IGMP reports (the namespaces' addresses joining multicast, at a random
    # delay after they came up) match too, when one falls inside the trace
    assert kinds - {"ip-proto-2"} == {"tcp", "udp", "icmp", "arp"}
    assert any(e.get("dport") == 8080 for e in events)


def test_expressions_select_exactly_the_right_packets(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 71)
    # --no-track: the expression alone (tracking would add a matched packet's later hops)
    runs = [(trace(expression, "--json", "--no-track"), accepts, expect)
            for expression, accepts, expect in CASES]
    mixed_traffic(net)
    ours = {net.host.inode, net.container.inode}
    for run, accepts, expect in runs:
        run.stop()
        events = run.events()
        wrong = [e for e in events if not accepts(e)]
        assert not wrong, f"{run.args[0]!r} let through {wrong[:3]}"
        # the traces are system-wide: what else this machine sends may match too
        expect([e for e in events if e["netns"] in ours])


def test_expression_combines_with_flags(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 73)
    run = trace("icmp", "--netns", net.container.name, "--json")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    events = run.stop().events()
    assert {(e["netns"], e["ifname"]) for e in events} == {(net.container.inode, "eth0")}
    assert "tracing icmp in netns" in run.stderr


@pytest.mark.parametrize("args, message", [
    (["tcp and garbage"], "bad filter expression 'tcp and garbage': syntax error"),
    (["port 99999"], "illegal port number 99999"),
    ([" or ".join(f"host 10.200.0.{i}" for i in range(1, 201))], "eBPF instructions; pktpath "
     "has room for 2048 in the kernel: simplify it"),
])
def test_bad_expressions_are_refused_before_anything_attaches(args: list[str],
                                                              message: str) -> None:
    from test_cli import pktpath

    proc = pktpath("trace", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
