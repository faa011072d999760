"""End-to-end: real BPF programs, real namespaces and traffic, `pktpath trace` as users run it.

Each test asserts the exact hops a user would read: namespace inode, interface, and what the
packet was, in order.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import kernel_sends_icmp_events, reason
from netlab import DockerLike, Netlab, docker_like, tcp_listener

ECHO = {8: "request", 0: "reply", 128: "request", 129: "reply"}
ARP = {"request": "request", "reply": "reply"}


def hop(event: dict[str, Any]) -> tuple[int, str, str]:
    """(netns, interface, what) of a JSON event; a free is "delivered" or "dropped REASON"."""
    if event["hook"] == "kfree_skb":
        what = f"dropped {event['drop_reason']}" if event["drop"] else "delivered"
    elif "arp_op" in event:
        what = f"arp-{event['arp_op']}"
    elif "icmp_type" in event:
        what = ECHO.get(event["icmp_type"], f"icmp-{event['icmp_type']}")
    else:
        what = f"{event['proto']}-{event.get('tcp_flags', '')}"
    return event["netns"], event["ifname"], what


def article_path(net: DockerLike, request: str, reply: str) -> list[tuple[int, str, str]]:
    """The six hops of the article: host bridge, veth, container eth0, and back."""
    h, c = net.host.inode, net.container.inode
    return [(h, net.bridge, request), (h, net.veth, request), (c, "eth0", request),
            (c, "eth0", reply), (h, net.veth, reply), (h, net.bridge, reply)]


def delivered_at(ns: Any, ifname: str) -> tuple[int, str, str]:
    """ping's raw socket takes a copy of the reply; the kernel frees the original (NO_SOCKET)."""
    return ns.inode, ifname, "delivered"


@pytest.mark.parametrize("hook_type", ["tp_btf", "raw_tp"])
def test_ping_into_container_crosses_bridge_veth_eth0_and_back(
        lab: Netlab, trace: Any, hook_type: str) -> None:
    net = docker_like(lab, 11)
    run = trace("--proto", "icmp", "--host", net.container_addr, "--json",
                "--hook-type", hook_type)
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    events = run.stop().events()

    assert [hop(e) for e in events] == [*article_path(net, "request", "reply"),
                                        delivered_at(net.host, net.bridge)]
    assert [e["hook"] for e in events] == ["net_dev_queue", "net_dev_queue", "netif_receive_skb",
                                           "net_dev_queue", "netif_receive_skb",
                                           "netif_receive_skb", "kfree_skb"]
    free = events[-1]
    assert (free["drop"], free["drop_reason"]) == (False, reason("NO_SOCKET"))
    assert free["location"].startswith("icmp_rcv+0x") or free["location"].startswith("ping_rcv")
    assert {(e["src"], e["dst"]) for e in events[:3]} == {(net.host_addr, net.container_addr)}
    assert {(e["src"], e["dst"]) for e in events[3:]} == {(net.container_addr, net.host_addr)}
    assert {(e["family"], e["proto"], e["icmp_seq"]) for e in events} == {("ipv4", "icmp", 1)}
    assert len({e["icmp_id"] for e in events}) == 1
    assert len({e["skb"] for e in events[:3]}) == 1, "one skb from host to container"
    since = [e["since_first_ns"] for e in events]
    assert since[0] == 0 and since[3] == 0, "the request and the reply each start at 0"
    assert since[:3] == sorted(since[:3]) and since[3:] == sorted(since[3:])
    assert since[2] > 0
    assert all(e["len"] == 98 for e in events[:6]), "14 Ethernet + 20 IP + 64 ICMP bytes"
    assert run.returncode == 0
    assert f"({hook_type})" in run.stderr
    assert "7 events shown, 0 lost" in run.stderr


def test_text_output_is_the_articles(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 12)
    run = trace("--proto", "icmp", "--host", net.container_addr)
    net.host.sh("ping", "-c2", "-i0.2", "-W2", net.container_addr)
    lines = run.stop().lines()

    ident = re.search(r"#(\d+)\.001", lines[0])
    assert ident, lines
    h, c, i = net.host.name, net.container.name, ident.group(1)
    req = f"request #{i}.{{seq}} {net.host_addr} -> {net.container_addr}"
    rep = f"  reply #{i}.{{seq}} {net.container_addr} -> {net.host_addr}"
    expected = []
    for seq in ("001", "002"):
        expected += [
            f"[{h:>12}]          docker0 {req.format(seq=seq)}",
            f"[{h:>12}] {net.veth:>16} {req.format(seq=seq)}",
            f"[{c:>12}]             eth0 {req.format(seq=seq)}",
            f"[{c:>12}]             eth0 {rep.format(seq=seq)}",
            f"[{h:>12}] {net.veth:>16} {rep.format(seq=seq)}",
            f"[{h:>12}]          docker0 {rep.format(seq=seq)}",
            f"[{h:>12}]          docker0 {rep.format(seq=seq)}  delivered "
            "(the pinging raw socket received a copy)",
        ]
    assert lines == expected


def test_ipv6_echo(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 13)
    run = trace("--proto", "icmp6", "--host", net.container_addr6, "--json")
    net.host.sh("ping", "-6", "-c1", "-W2", net.container_addr6)
    events = [e for e in run.stop().events() if e["icmp_type"] in (128, 129)]

    assert [hop(e) for e in events] == [*article_path(net, "request", "reply"),
                                        delivered_at(net.host, net.bridge)]
    assert {(e["family"], e["proto"]) for e in events} == {("ipv6", "icmpv6")}
    assert events[0]["src"] == net.host_addr6 and events[0]["dst"] == net.container_addr6
    assert events[3]["src"] == net.container_addr6 and events[3]["dst"] == net.host_addr6
    assert all(e["len"] == 118 for e in events[:6]), "14 Ethernet + 40 IPv6 + 64 ICMPv6 bytes"


def test_loopback_inside_a_namespace(lab: Netlab, trace: Any) -> None:
    ns = lab.ns("lo")
    run = trace("--netns", ns.name, "--proto", "icmp", "--json")
    ns.sh("ping", "-c1", "-W2", "127.0.0.1")
    events = run.stop().events()

    assert [hop(e) for e in events] == [(ns.inode, "lo", "request"), (ns.inode, "lo", "reply"),
                                        delivered_at(ns, "lo")]
    assert all(e["src"] == e["dst"] == "127.0.0.1" for e in events)


def test_routed_hop_through_a_forwarding_namespace(lab: Netlab, trace: Any) -> None:
    c1, router, c2 = lab.ns("c1"), lab.ns("router"), lab.ns("c2")
    lab.veth(c1, "eth0", router, "to-c1")
    lab.veth(c2, "eth0", router, "to-c2")
    c1.ip("addr", "add", "10.200.21.2/24", "dev", "eth0")
    c2.ip("addr", "add", "10.200.22.2/24", "dev", "eth0")
    router.ip("addr", "add", "10.200.21.1/24", "dev", "to-c1")
    router.ip("addr", "add", "10.200.22.1/24", "dev", "to-c2")
    c1.ip("route", "add", "default", "via", "10.200.21.1")
    c2.ip("route", "add", "default", "via", "10.200.22.1")
    router.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")

    run = trace("--proto", "icmp", "--host", "10.200.22.2", "--json", "--routes")
    c1.sh("ping", "-c1", "-W2", "10.200.22.2")
    events = run.stop().events()

    a, r, b = c1.inode, router.inode, c2.inode
    assert [hop(e) for e in events] == [
        (a, "eth0", "request"), (r, "to-c1", "request"), (r, "to-c2", "request"),
        (b, "eth0", "request"), (b, "eth0", "reply"), (r, "to-c2", "reply"),
        (r, "to-c1", "reply"), (a, "eth0", "reply"), delivered_at(c1, "eth0")]
    assert [e["ttl"] for e in events] == [64, 64, 63, 63, 64, 64, 63, 63, 63]
    forwarded = events[2]
    assert forwarded["route"] == {"table": "main", "interface": "to-c2"}
    assert events[6]["route"] == {"table": "main", "interface": "to-c1"}


def test_udp_datagram_with_its_ports(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 14)
    run = trace("--proto", "udp", "--port", "5353", "--json")
    send_udp(net, b"hello", 40000, 5353)
    events = run.stop().events()

    h, c = net.host.inode, net.container.inode
    assert [hop(e) for e in events] == [
        (h, "docker0", "udp-"), (h, net.veth, "udp-"), (c, "eth0", "udp-"),
        (c, "eth0", f"dropped {reason('NO_SOCKET')}")]
    assert {(e["proto"], e["src"], e["sport"], e["dst"], e["dport"]) for e in events} == {
        ("udp", net.host_addr, 40000, net.container_addr, 5353)}
    assert "icmp_type" not in events[0] and "tcp_flags" not in events[0]
    if reason("NO_SOCKET") == "NO_SOCKET" and kernel_sends_icmp_events():
        assert events[-1]["explain"] == ("no socket was listening; ICMP destination unreachable "
                                         f"(port unreachable) sent to {net.host_addr}")


def test_latency_in_text(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 24)
    run = trace("--proto", "icmp", "--host", net.container_addr, "--latency", "--no-drops")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    lines = run.stop().lines()
    times = [float(re.search(r" \+(\d+\.\d{3})ms$", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert times[0] == 0.0 and times[3] == 0.0
    assert times[:3] == sorted(times[:3])


def test_udp_text_line(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 15)
    run = trace("--proto", "udp", "--host", net.container_addr, "-c", "1")
    send_udp(net, b"hello", 40001, 53)
    lines = run.wait().lines()
    assert lines == [f"[{net.host.name:>12}]          docker0 "
                     f"udp {net.host_addr}:40001 -> {net.container_addr}:53 len 5"]
    assert run.returncode == 0


def test_arp_request_and_reply(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 16)
    run = trace("--proto", "arp", "--host", net.container_addr, "--json")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    events = run.stop().events()

    assert [hop(e) for e in events] == article_path(net, "arp-request", "arp-reply")
    assert events[0]["src"] == net.host_addr and events[0]["dst"] == net.container_addr
    assert events[0]["eth_dst"] == "ff:ff:ff:ff:ff:ff"
    assert events[3]["src"] == net.container_addr and events[3]["dst"] == net.host_addr


def test_arp_text_lines(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 17)
    run = trace("--proto", "arp", "--netns", net.container.name)
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    lines = run.stop().lines()
    c = net.container.name
    assert lines[0] == (f"[{c:>12}]             eth0 arp who-has {net.container_addr} "
                        f"tell {net.host_addr}")
    assert re.fullmatch(rf"\[{c:>12}\]             eth0 arp reply {net.container_addr} is-at "
                        r"([0-9a-f]{2}:){5}[0-9a-f]{2}", lines[1])


def test_tcp_handshake_flags(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 18)
    with tcp_listener(net.container, 8080, net.container_addr) as server:
        run = trace("--proto", "tcp", "--port", "8080", "--json")
        net.host.sh(sys.executable, "-c",
                    "import socket; c=socket.create_connection("
                    f"('{net.container_addr}', 8080), timeout=2); c.sendall(b'hi'); c.close()")
        server.wait(5)
        events = run.stop().events()

    assert [hop(e) for e in events[:6]] == article_path(net, "tcp-S", "tcp-S.")
    assert events[0]["dport"] == 8080 and events[3]["sport"] == 8080


def test_filters_exclude_other_traffic(lab: Netlab, trace: Any) -> None:
    """Four traces at once, each with other flags, over the same mixed traffic."""
    net = docker_like(lab, 19)
    other = lab.ns("other")
    lab.veth(net.host, "vethother", other, "eth0")
    net.host.ip("link", "set", "vethother", "master", "docker0")
    other.ip("addr", "add", "10.200.19.3/24", "dev", "eth0")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)  # settle ARP before tracing
    net.host.sh("ping", "-c1", "-W2", "10.200.19.3")

    by_host = trace("--host", net.container_addr, "--proto", "icmp", "--json")
    by_port = trace("--port", "7777", "--json")
    by_iface = trace("-i", "eth0", "--proto", "icmp", "--json")
    by_netns = trace("--netns", net.container.name, "--host", net.container_addr, "--json")

    with udp_sink(net, 7777, 7778):  # no ICMP port-unreachable in the way
        net.host.sh("ping", "-c1", "-W2", "10.200.19.3")
        send_udp(net, b"x", 40002, 7777)
        send_udp(net, b"y", 40003, 7778)
        net.host.sh("ping", "-c1", "-W2", net.container_addr)
        time.sleep(0.2)
        for run in (by_host, by_port, by_iface, by_netns):
            run.stop()

    h, c, o = net.host.inode, net.container.inode, other.inode
    assert [hop(e) for e in by_host.events()] == [*article_path(net, "request", "reply"),
                                                  delivered_at(net.host, "docker0")]
    assert [(hop(e), e["dport"]) for e in by_port.events()] == [
        ((h, "docker0", "udp-"), 7777), ((h, net.veth, "udp-"), 7777), ((c, "eth0", "udp-"), 7777)]
    assert [hop(e) for e in by_iface.events()] == [
        (o, "eth0", "request"), (o, "eth0", "reply"), (c, "eth0", "request"), (c, "eth0", "reply")]
    assert [hop(e) for e in by_netns.events()] == [
        (c, "eth0", "udp-"), (c, "eth0", "udp-"), (c, "eth0", "request"), (c, "eth0", "reply")]


def test_count_stops_after_n_events(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 20)
    run = trace("--proto", "icmp", "--host", net.container_addr, "-c", "2", "--json")
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    run.wait()
    assert run.returncode == 0
    assert [hop(e) for e in run.events()] == article_path(net, "request", "reply")[:2]
    assert "2 events shown, 0 lost" in run.stderr


def test_sigterm_drains_and_summarises(lab: Netlab, trace: Any) -> None:
    net = docker_like(lab, 22)
    run = trace("--proto", "icmp", "--host", net.container_addr)
    net.host.sh("ping", "-c1", "-W2", net.container_addr)
    run.stop(signal.SIGTERM)
    assert run.returncode == 0
    assert len(run.lines()) == 7
    assert run.stderr_lines[-1] == "pktpath: 7 events shown, 0 lost"


def test_nothing_stays_attached_after_exit(lab: Netlab, trace: Any) -> None:
    before = {p["id"] for p in loaded_programs()}
    run = trace("--proto", "icmp", "--host", "10.200.23.9")
    ours = {p["id"]: p["name"] for p in loaded_programs() if p["id"] not in before}
    assert sorted(ours.values()) == ["tp_btf_consume_skb", "tp_btf_icmp_send",
                                     "tp_btf_kfree_skb", "tp_btf_net_dev_queue",
                                     "tp_btf_netif_receive_skb"]
    run.stop()
    assert programs_gone(set(ours)), "the kernel still holds pktpath's programs after exit"


def loaded_programs() -> list[dict[str, Any]]:
    """The kernel's BPF programs, as bpftool lists them."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    programs: list[dict[str, Any]] = json.loads(out)
    return programs


def programs_gone(ids: set[int], seconds: float = 5) -> bool:
    """Wait until none of the programs ids is loaded (the kernel frees them after RCU)."""
    deadline = time.monotonic() + seconds
    while ids & {p["id"] for p in loaded_programs()}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def send_udp(net: DockerLike, payload: bytes, sport: int, dport: int) -> None:
    net.host.sh(sys.executable, "-c",
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                f"s.bind(('{net.host_addr}', {sport})); s.sendto({payload!r}, "
                f"('{net.container_addr}', {dport}))")


@contextlib.contextmanager
def udp_sink(net: DockerLike, *ports: int) -> Iterator[None]:
    """UDP sockets bound in the container for the duration of the block."""
    binds = "".join(f"s{p}=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s{p}.bind(('{net.container_addr}', {p})); " for p in ports)
    sink = subprocess.Popen(["ip", "netns", "exec", net.container.name, sys.executable, "-c",
                             f"import socket, time; {binds}print('ready', flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        yield
    finally:
        sink.kill()
        sink.wait()


def test_every_lost_event_is_counted(lab: Netlab, trace: Any) -> None:
    """A ring buffer of one page under a burst: shown + lost is exactly what the hooks saw."""
    a, b = lab.ns("burst-a"), lab.ns("burst-b")
    lab.veth(a, "eth0", b, "eth0")
    a.ip("addr", "add", "10.200.30.1/24", "dev", "eth0")
    b.ip("addr", "add", "10.200.30.2/24", "dev", "eth0")
    a.sh("ping", "-c1", "-W2", "10.200.30.2")  # settle ARP
    datagrams = 20000
    run = trace("--proto", "udp", "--port", "7000", "--host", "10.200.30.2",
                "--buffer-size", "4096", "--no-drops")
    a.sh(sys.executable, "-c",
         "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
         f"[s.sendto(b'x', ('10.200.30.2', 7000)) for _ in range({datagrams})]")
    time.sleep(0.3)
    run.stop()
    summary = re.fullmatch(r"pktpath: (\d+) events shown, (\d+) lost", run.stderr_lines[-1])
    assert summary, run.stderr
    shown, lost = int(summary.group(1)), int(summary.group(2))
    assert lost > 0, "a 4 KiB ring buffer cannot hold this burst"
    assert shown == len(run.lines())
    assert shown + lost == 2 * datagrams, "each datagram is seen leaving a and entering b"
