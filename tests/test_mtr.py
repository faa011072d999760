"""The mtr table, its report shapes, the path diagram, and the kubectl plugin's reading of a
PacketTrace status."""

from __future__ import annotations

import csv
import io

from pktpath.core.hopstats import Place, Table
from pktpath.k8s.kubectl_plugin import endpoint, table_of
from pktpath.view.diagram import Stop, draw
from pktpath.view.mtr import report_csv, report_json, report_text, vanish_index

A = Place("host", "docker0", "request", 1)
B = Place("ctr", "eth0", "request", 2)
C = Place("ctr", "eth0", "reply", 2)


def table(*sightings: tuple[int, Place, float]) -> Table:
    t = Table(timeout_ns=1_000_000)
    for probe in range(1, 5):
        t.probe_sent(probe, probe * 10_000_000)
    for probe, place, ms in sightings:
        t.seen(probe, place, time_ns=probe * 10_000_000 + int(ms * 1e6))
    return t


def test_statistics_and_path_order() -> None:
    t = table(*[(p, C, 0.3 + p / 100) for p in range(1, 5)],
              *[(p, A, 0.1) for p in range(1, 5)], (1, B, 0.2), (2, B, 0.25))
    hubs = t.hubs()
    assert [h["host"] for h in hubs] == ["docker0@host", "eth0@ctr", "eth0@ctr"]
    assert [h["dir"] for h in hubs] == ["request", "request", "reply"]
    first, middle, last = hubs
    assert (first["Loss%"], first["Snt"], first["Avg"], first["StDev"]) == (0.0, 4, 0.1, 0.0)
    assert (middle["Loss%"], middle["Best"], middle["Wrst"], middle["Last"]) == (
        50.0, 0.2, 0.25, 0.25)
    assert (last["Best"], last["Avg"], last["Wrst"]) == (0.31, 0.325, 0.34)
    assert vanish_index(hubs) == 0, "loss grows after the first hop"


def test_probes_not_yet_due_are_not_lost() -> None:
    t = table((1, A, 0.1))
    assert t.hubs(now_ns=10_500_000)[0]["Loss%"] == 0.0  # only probe 1 is due
    assert t.hubs()[0]["Loss%"] == 75.0


def test_unknown_probes_are_ignored_and_reset_forgets() -> None:
    t = table((1, A, 0.1))
    t.seen(99, B, time_ns=5)
    assert len(t.rows) == 1
    t.reset()
    assert (t.sent, t.rows) == (0, {})


def test_a_drop_marks_its_row() -> None:
    t = table((1, A, 0.1), (1, B, 0.2))
    t.seen(2, A, time_ns=20_100_000)
    t.seen(2, B, time_ns=20_200_000, drop_reason="NETFILTER_DROP", explain="input hook")
    hubs = t.hubs()
    assert (hubs[1]["drop_reason"], hubs[1]["drops"], hubs[1]["explain"]) == (
        "NETFILTER_DROP", 1, "input hook")
    assert vanish_index(hubs) == 1


def test_report_shapes() -> None:
    t = table((1, A, 0.1), (2, A, 0.3))
    obj = report_json(t, "host", "10.200.1.2")
    assert obj["report"]["mtr"] == {"src": "host", "dst": "10.200.1.2", "tos": 0, "tests": 4,
                                    "psize": "64", "bitpattern": "0x00"}
    assert set(obj["report"]["hubs"][0]) == {
        "count", "host", "Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev", "netns",
        "netns_name", "ifname", "dir"}
    rows = list(csv.reader(io.StringIO(report_csv(t, "host", "10.200.1.2", 1700000000))))
    assert rows[0][:8] == ["Mtr_Version", "Start_Time", "Status", "Host", "Hop", "Ip", "Loss%",
                           "Snt"]
    assert rows[1][4:8] == ["1", "docker0@host", "50.0", "4"]
    text = report_text(t, "host", "10.200.1.2", "now").splitlines()
    assert text[1].split()[-7:] == ["Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]
    assert text[2].split() == ["1.|--", "host", "docker0", "request", "50.0%", "4", "0.300",
                               "0.200", "0.100", "0.300", "0.100"]


def test_diagram_of_three_namespaces_with_a_drop() -> None:
    art = draw([Stop("c1", "eth0", "request"), Stop("router", "to-c1", "request"),
                Stop("router", "to-c2", "request"), Stop("c2", "eth0", "request", "NO_SOCKET")])
    assert art.splitlines() == [
        "    c1   |        router       |     c2",
        "+--------+---------------------+-----------+",
        "| eth0 ---> to-c1 ---> to-c2 ---> eth0 [X] |",
        "+--------+---------------------+-----------+",
        "  [X] eth0 in c2: dropped, NO_SOCKET",
    ]
    assert draw([]) == ""


def test_diagram_reply_path_reads_right_to_left() -> None:
    art = draw([Stop("host", "docker0", "request"), Stop("host", "veth1", "request"),
                Stop("container", "eth0", "request"), Stop("container", "eth0", "reply"),
                Stop("host", "veth1", "reply"), Stop("host", "docker0", "reply")])
    assert art.splitlines()[2:4] == ["| docker0 ---> veth1 ---> eth0      |",
                                     "| docker0 <--- veth1 <--- eth0      |"]


def test_kubectl_plugin_reads_a_status() -> None:
    hop = {"node": "node-a", "netns": "shop/web-0", "netnsInode": 7, "interface": "eth0"}
    status = {"nodes": [{"node": "node-a", "probesSent": 2, "hops": [
        {**hop, "direction": "request", "probe": 1, "timeNs": 1000},
        {**hop, "netns": "host", "interface": "veth1", "direction": "request", "probe": 1,
         "timeNs": 51000},
        {**hop, "direction": "request", "probe": 2, "timeNs": 5000},
        {**hop, "netns": "host", "interface": "veth1", "direction": "request", "probe": 2,
         "timeNs": 6000, "dropReason": "NETFILTER_DROP"},
    ]}]}
    hubs = table_of(status).hubs()
    assert [(h["host"], h["Snt"], h["Loss%"]) for h in hubs] == [
        ("eth0@node-a/shop/web-0", 2, 0.0), ("veth1@node-a/host", 2, 0.0)]
    assert (hubs[1]["Best"], hubs[1]["Wrst"], hubs[1]["drop_reason"]) == (
        0.001, 0.05, "NETFILTER_DROP")
    assert endpoint("shop/web-0", "x") == {"pod": "web-0", "namespace": "shop"}
    assert endpoint("db-1", "x") == {"pod": "db-1", "namespace": "x"}
    assert endpoint("fd00:200::1", "x") == {"ip": "fd00:200::1"}
