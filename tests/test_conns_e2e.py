"""End-to-end: a connection followed through NAT, both directions, judged by captures.

dumpcap captures in every namespace (tests/capture.py); for the request and the reply
direction separately, the places (namespace, interface, in or out) pktpath reports must be
exactly those where the capture saw the connection's packets.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

from capture import Seen, capture
from conftest import need
from netlab import Netlab, Ns, routed, tcp_listener, vxlan_pods

Place = tuple[int, str, str]
HOOK_DIRECTION = {"net_dev_queue": "out", "netif_receive_skb": "in"}


def connect(client: Ns, address: str, port: int) -> None:
    client.sh(sys.executable, "-c", "import socket; c=socket.create_connection("
              f"('{address}', {port}), timeout=2); c.sendall(b'hi'); c.close()")


def places(events: list[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool]) -> set[Place]:
    return {(e["netns"], e["ifname"], HOOK_DIRECTION[e["hook"]]) for e in events
            if e["hook"] in HOOK_DIRECTION and e.get("src") and wanted(e)}


def seen(captured: list[Seen], wanted: Callable[[dict[str, Any]], bool]) -> set[Place]:
    return {s.place for s in captured
            if wanted({"src": s.src, "dst": s.dst, "sport": s.sport, "dport": s.dport,
                       "icmp_type": s.icmp_type, "icmp_id": s.sport})}


def service(node: Ns, address: str, backend: str, *match: str) -> None:
    need(shutil.which("iptables") is not None, "iptables is not installed")
    for chain in ("PREROUTING", "OUTPUT"):
        node.sh("iptables", "-t", "nat", "-A", chain, "-d", address, *match, "-j", "DNAT",
                "--to-destination", backend)


def test_a_tcp_connection_to_a_service_address_is_followed_both_ways(
        lab: Netlab, trace: Any) -> None:
    a, b, db = vxlan_pods(lab, 82, 83)
    web, svc = a.pods["web"], "10.200.92.100"
    service(a.ns, svc, f"{db}:8080", "-p", "tcp", "--dport", "80")
    spaces = [web, a.ns, b.ns, b.pods["db"]]
    captured: list[Seen] = []
    with tcp_listener(b.pods["db"], 8080) as server:
        tracked = trace("tcp and dst host " + svc, "--json")
        plain = trace("tcp and dst host " + svc, "--json", "--no-track")
        with capture(spaces, captured):
            connect(web, svc, 80)
            server.wait(5)
        events, untracked = tracked.stop().events(), plain.stop().events()

    def request(e: dict[str, Any]) -> bool:
        return e["src"] == "10.200.82.10" and e["dst"] in (svc, db)

    def reply(e: dict[str, Any]) -> bool:
        return e["dst"] == "10.200.82.10" and e["src"] in (svc, db)

    assert seen(captured, reply), "the capture saw the replies"
    assert places(events, request) == seen(captured, request)
    assert places(events, reply) == seen(captured, reply)
    assert not places(untracked, reply), "without tracking no reply matches the filter"
    # one connection, its id on every hop from the translation on
    conns = {e.get("conn") for e in events if reply(e)}
    assert conns == {1}
    dnat = [e for e in events if e.get("rewrite")]
    assert dnat and dnat[0]["nat"] == [{"type": "DNAT", "from": f"{svc}:80",
                                        "to": f"{db}:8080"}]
    assert dnat[0]["ct_nat"] == "DNAT" and dnat[0]["ct_state"] == "new"
    assert {e["ct_state"] for e in events if reply(e) and e["netns"] == a.ns.inode
            and e["hook"] == "net_dev_queue"} == {"established-reply"}


def test_an_echo_to_a_service_address_is_followed_both_ways(lab: Netlab, trace: Any) -> None:
    a, b, db = vxlan_pods(lab, 84, 85)
    web, svc = a.pods["web"], "10.200.94.100"
    service(a.ns, svc, db, "-p", "icmp")
    captured: list[Seen] = []
    tracked = trace("icmp and dst host " + svc, "--json")
    with capture([web, a.ns, b.ns, b.pods["db"]], captured):
        web.sh("ping", "-c2", "-i0.3", "-W2", svc)
    events = tracked.stop().events()

    def request(e: dict[str, Any]) -> bool:
        return e.get("icmp_type") == 8

    def reply(e: dict[str, Any]) -> bool:
        return e.get("icmp_type") == 0

    assert len(seen(captured, reply)) == 10, "5 places each way: eth0, veth, cni0, flannel.1"
    assert places(events, request) == seen(captured, request)
    assert places(events, reply) == seen(captured, reply)


def test_a_masqueraded_connection_is_followed_both_ways(lab: Netlab, trace: Any) -> None:
    need(shutil.which("iptables") is not None, "iptables is not installed")
    net = routed(lab, 86, 87)
    net.router.sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "to-c2", "-j",
                  "MASQUERADE")
    captured: list[Seen] = []
    with tcp_listener(net.c2, 80) as server:
        tracked = trace(f"tcp and src host {net.c1_addr}", "--json")
        with capture([net.c1, net.router, net.c2], captured):
            connect(net.c1, net.c2_addr, 80)
            server.wait(5)
        events = tracked.stop().events()

    def request(e: dict[str, Any]) -> bool:
        return e["dst"] == net.c2_addr

    def reply(e: dict[str, Any]) -> bool:
        return e["src"] == net.c2_addr

    assert places(events, request) == seen(captured, request)
    assert places(events, reply) == seen(captured, reply) == {
        (net.c2.inode, "eth0", "out"), (net.router.inode, "to-c2", "in"),
        (net.router.inode, "to-c1", "out"), (net.c1.inode, "eth0", "in")}
    first = next(e for e in events if request(e))
    snat = [e for e in events if e.get("rewrite") == "SNAT"]
    assert snat[0]["nat"] == [{"type": "SNAT", "from": f"{net.c1_addr}:{first['sport']}",
                               "to": f"10.200.87.1:{snat[0]['sport']}"}]
    assert {e.get("conn") for e in events if reply(e)} == {1}


def test_a_masqueraded_ipv6_connection_is_followed_both_ways(lab: Netlab, trace: Any) -> None:
    need(shutil.which("ip6tables") is not None, "ip6tables is not installed")
    net = routed(lab, 95, 96)
    c1, c2, out = "fd00:200:0:95::2", "fd00:200:0:96::2", "fd00:200:0:96::1"
    for ns, dev, addr in ((net.c1, "eth0", c1), (net.router, "to-c1", "fd00:200:0:95::1"),
                          (net.c2, "eth0", c2), (net.router, "to-c2", out)):
        ns.ip("addr", "add", f"{addr}/64", "dev", dev, "nodad")
    net.c1.ip("-6", "route", "add", "default", "via", "fd00:200:0:95::1")
    net.c2.ip("-6", "route", "add", "default", "via", out)
    net.router.sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    net.router.sh("ip6tables", "-t", "nat", "-A", "POSTROUTING", "-o", "to-c2", "-j",
                  "MASQUERADE")
    captured: list[Seen] = []
    with tcp_listener(net.c2, 80, "::") as server:
        tracked = trace(f"tcp and src host {c1}", "--json")
        with capture([net.c1, net.router, net.c2], captured):
            connect(net.c1, c2, 80)
            server.wait(5)
        events = tracked.stop().events()

    def request(e: dict[str, Any]) -> bool:
        return e["dst"] == c2

    def reply(e: dict[str, Any]) -> bool:
        return e["src"] == c2

    assert places(events, request) == seen(captured, request)
    assert places(events, reply) == seen(captured, reply) == {
        (net.c2.inode, "eth0", "out"), (net.router.inode, "to-c2", "in"),
        (net.router.inode, "to-c1", "out"), (net.c1.inode, "eth0", "in")}
    snat = [e for e in events if e.get("rewrite") == "SNAT"]
    assert snat and snat[0]["src"] == out
    assert {e.get("conn") for e in events if reply(e)} == {1}


def test_the_cli_names_a_service_address_from_the_kubeconfig(
        lab: Netlab, trace: Any, cluster: Any) -> None:
    svc = "10.200.249.50"
    cluster.kubectl("create", "service", "clusterip", "db", "-n", "default", "--tcp=80:8080",
                    f"--clusterip={svc}")
    try:
        a, b, db = vxlan_pods(lab, 88, 89)
        service(a.ns, svc, f"{db}:8080", "-p", "tcp", "--dport", "80")
        with tcp_listener(b.pods["db"], 8080) as server:
            run = trace("tcp and dst host " + svc, "--kubeconfig", cluster.admin_kubeconfig,
                        "--no-drops")
            connect(a.pods["web"], svc, 80)
            server.wait(5)
            lines = run.stop().lines()
    finally:
        cluster.kubectl("delete", "service", "db", "-n", "default")
    syn = next(line for line in lines if line.endswith("[S]"))
    assert " tcp 10.200.88.10:" in syn and syn.endswith(" -> svc default/db:80 [S]")
    synack_home = [line for line in lines if "[S.]" in line and "svc default/db:80 ->" in line]
    assert synack_home, "the reply after its translation back comes from the Service"
    assert any(f"DNAT {svc}:80 -> {db}:8080" in line for line in lines)
