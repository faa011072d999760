"""End-to-end: `pktpath drops` counts every real drop once, with its reason, namespace and
interface, and never a packet that was delivered.

Each test disables IPv6 in its namespaces (their multicast listener reports would be dropped
too, and counted, as they should) and narrows the watch to the namespace it checks.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from conftest import REPO, reason
from netlab import Netlab, Ns, docker_like, routed, tcp_listener

KEYS = {"netns", "netns_name", "ifname", "reason", "location", "count", "total"}


def quiet(*spaces: Ns) -> None:
    """No IPv6 and no reports of link-local multicast groups: the listener reports (MLD, and
    the IGMP report to 224.0.0.22 an address change sends) would be dropped by peers that do
    not listen, and counted, rightly."""
    for ns in spaces:
        ns.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        ns.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        ns.sh("sysctl", "-qw", "net.ipv4.igmp_link_local_mcast_reports=0")


def counted(run: Any, settle: float = 0.8) -> Counter[tuple[str, str, str]]:
    """Stop the watch (after the last interval has passed) and sum its intervals' counts by
    (namespace, interface, reason); checks every interval's schema on the way."""
    time.sleep(settle)
    intervals = run.stop().events()
    assert intervals, run.stderr
    totals: Counter[tuple[str, str, str]] = Counter()
    print(intervals)  # on failure: where each drop was
    for body in intervals:
        assert set(body) <= {"time", "interval_s", "drops", "not_counted"}
        assert datetime.datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
        assert body["interval_s"] > 0
        for drop in body["drops"]:
            assert {"reason", "location", "count", "total"} <= set(drop) <= KEYS, drop
            assert drop["count"] > 0 and drop["total"] >= drop["count"]
            totals[(drop.get("netns_name", ""), drop.get("ifname", ""), drop["reason"])] += (
                drop["count"])
    return totals


def test_a_netfilter_drop_is_counted_once_per_packet(lab: Netlab, drops: Any) -> None:
    net = docker_like(lab, 81)
    quiet(net.host, net.container)
    net.container.sh("iptables", "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    run = drops("--json", "--interval", "0.3", "--netns", net.container.name)
    net.host.sh("ping", "-c5", "-i0.2", "-W1", net.container_addr, check=False)
    assert counted(run) == {(net.container.name, "eth0", reason("NETFILTER_DROP")): 5}


def test_a_route_to_nowhere(lab: Netlab, drops: Any) -> None:
    net = routed(lab, 82, 83)
    quiet(net.c1, net.router, net.c2)
    net.router.ip("route", "add", "unreachable", "10.200.84.0/24")
    run = drops("--json", "--interval", "0.3", "--netns", net.router.name)
    net.c1.sh("ping", "-c3", "-i0.2", "-W1", "10.200.84.9", check=False)
    assert counted(run) == {(net.router.name, "to-c1", reason("NOT_SPECIFIED")): 3}


def test_a_ttl_of_one(lab: Netlab, drops: Any) -> None:
    net = routed(lab, 85, 86)
    quiet(net.c1, net.router, net.c2)
    run = drops("--json", "--interval", "0.3", "--netns", net.router.name)
    net.c1.sh("ping", "-c4", "-i0.2", "-W1", "-t1", net.c2_addr, check=False)
    assert counted(run) == {(net.router.name, "to-c1", reason("IP_INHDR")): 4}


def test_a_neighbour_that_never_answers(lab: Netlab, drops: Any) -> None:
    net = routed(lab, 87, 88)
    quiet(net.c1, net.router, net.c2)
    run = drops("--json", "--interval", "0.3", "--netns", net.c1.name)
    net.c1.sh("ping", "-c1", "-W5", "10.200.87.99", check=False)  # ARP gives up after ~3 s
    assert counted(run) == {(net.c1.name, "eth0", reason("NEIGH_FAILED")): 1}


def test_delivered_packets_are_never_counted(lab: Netlab, drops: Any) -> None:
    net = docker_like(lab, 89)
    quiet(net.host, net.container)
    host_run = drops("--json", "--interval", "0.3", "--netns", net.host.name)
    ctr_run = drops("--json", "--interval", "0.3", "--netns", net.container.name)
    # ping replies (ping's raw socket gets its copy: the original finds no socket)
    net.host.sh("ping", "-c5", "-i0.2", "-W1", net.container_addr)
    # a TCP connection opened, used and closed
    with tcp_listener(net.container, 5432) as server:
        net.host.sh(sys.executable, "-c",
                    f"import socket; s = socket.create_connection(('{net.container_addr}', "
                    "5432)); s.sendall(b'hello'); s.close()")
        server.wait(10)
    # a UDP socket closed with datagrams unread: its queue is purged
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", net.container.name, sys.executable, "-c",
         "import socket, time; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "u.bind(('0.0.0.0', 5353)); print('bound', flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "bound"
    net.host.sh(sys.executable, "-c",
                "import socket; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                + "; ".join(f"u.sendto(b'x', ('{net.container_addr}', 5353))" for _ in range(3)))
    receiver.wait(10)
    assert counted(host_run) == {}
    assert counted(ctr_run, settle=0) == {}


def test_the_map_full_counts_the_rest_as_not_counted(lab: Netlab, drops: Any) -> None:
    net = routed(lab, 90, 91)
    quiet(net.c1, net.router, net.c2)
    net.router.ip("route", "add", "unreachable", "10.200.92.0/24")
    net.router.sh("iptables", "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    run = drops("--json", "--interval", "0.3", "--map-size", "1")
    net.c1.sh("ping", "-c3", "-i0.2", "-W1", "10.200.92.9", check=False)  # no route
    net.c1.sh("ping", "-c3", "-i0.2", "-W1", "-t1", net.c2_addr, check=False)  # TTL
    net.c1.sh("ping", "-c3", "-i0.2", "-W1", "10.200.90.1", check=False)  # netfilter
    time.sleep(0.8)
    intervals = run.stop().events()
    assert run.returncode == 0, run.stderr
    places = {(d.get("netns_name"), d.get("ifname"), d["reason"])
              for body in intervals for d in body["drops"]}
    assert len(places) <= 1, "one place fits in the map"
    assert sum(body.get("not_counted", 0) for body in intervals) >= 6
    assert "more not counted: the map was full" in run.stderr


def test_bad_reason_and_namespace_are_told(e2e: None) -> None:
    def drops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pktpath", "drops", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=30)

    bad = drops("--reason", "NETFILTER", "-c", "1")
    assert bad.returncode == 2
    assert "this kernel has no drop reason NETFILTER (did you mean NETFILTER_DROP?)" in bad.stderr
    gone = drops("--netns", "no-such-namespace-here", "-c", "1")
    assert gone.returncode == 2 and "no-such-namespace-here" in gone.stderr
