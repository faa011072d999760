"""The agent's drop watch without a kernel: naming by pod, bounded series, Events."""

from __future__ import annotations

from pktpath.core.dropwatch import DropCounts, DropPlace
from pktpath.k8s.drops import OTHER, DropSettings, NodeDrops
from pktpath.k8s.metrics import Metrics
from pktpath.k8s.podmap import Place

HOST, WEB, DB, ELSEWHERE = 100, 200, 300, 999
NETFILTER_DROP, NO_SOCKET = 2, 3


class Spaces:
    def place(self, inode: int) -> Place | None:
        pods = {HOST: None, WEB: "shop/web-0", DB: "shop/db-1"}
        if inode not in pods:
            return None
        return Place("node-a", inode, pods[inode], pods[inode] or "host")


class Events:
    def __init__(self) -> None:
        self.told: list[tuple[str, str, str, str]] = []

    def pod_event(self, namespace: str, name: str, reason: str, message: str,
                  kind: str = "Warning") -> None:
        self.told.append((namespace, name, reason, message))


def drops(settings: DropSettings) -> tuple[NodeDrops, Events]:
    events = Events()
    watch = NodeDrops("node-a", Spaces(), Metrics(), events, lambda: None,  # type: ignore[arg-type]
                      {NETFILTER_DROP: "NETFILTER_DROP", NO_SOCKET: "NO_SOCKET"}, settings)
    watch._interfaces = lambda inode, index: f"if{index}"  # type: ignore[assignment,method-assign]
    return watch, events


def counts(*items: tuple[int, int, int, int]) -> DropCounts:
    return DropCounts({DropPlace(ns, index, reason, 0xffff0000): n
                       for ns, index, reason, n in items}, 0)


def test_drops_are_named_by_pod_and_only_this_nodes_count() -> None:
    watch, _ = drops(DropSettings())
    watch.tally(counts((DB, 2, NETFILTER_DROP, 3), (HOST, 7, NO_SOCKET, 1),
                       (ELSEWHERE, 2, NETFILTER_DROP, 50)), 5)
    assert watch.series == {("shop", "db-1", "if2", "NETFILTER_DROP"): 3,
                            ("", "", "if7", "NO_SOCKET"): 1}


def test_drops_of_a_pod_not_known_yet_are_counted_once_it_is() -> None:
    watch, _ = drops(DropSettings())
    known = watch.namespaces.place
    watch.namespaces.place = lambda inode: None if inode == DB else known(inode)  # type: ignore[method-assign]
    watch.tally(counts((DB, 2, NETFILTER_DROP, 3)), 5)
    assert watch.series == {}
    watch.namespaces.place = known  # type: ignore[method-assign]
    watch.tally(counts((DB, 2, NETFILTER_DROP, 5)), 5)
    assert watch.series == {("shop", "db-1", "if2", "NETFILTER_DROP"): 5}


def test_series_beyond_the_bound_go_to_other_and_every_series_only_grows() -> None:
    watch, _ = drops(DropSettings(top=1))
    watch.tally(counts((DB, 2, NETFILTER_DROP, 3)), 5)
    watch.tally(counts((DB, 2, NETFILTER_DROP, 4), (WEB, 2, NO_SOCKET, 10)), 5)
    assert watch.series == {("shop", "db-1", "if2", "NETFILTER_DROP"): 4, OTHER: 10}
    metrics = Metrics()
    metrics.set_drops("node-a", watch.series, 2)
    text = metrics.render()
    assert ('pktpath_drops_total{node="node-a",namespace="shop",pod="db-1",interface="if2",'
            'reason="NETFILTER_DROP"} 4') in text
    assert ('pktpath_drops_total{node="node-a",namespace="",pod="",interface="",'
            'reason="other"} 10') in text
    assert "pktpath_drops_not_counted_total 2" in text


def test_an_event_when_a_pod_drops_faster_than_the_threshold_once_per_place() -> None:
    watch, events = drops(DropSettings(event_rate=1.0))
    watch.tally(counts((DB, 2, NETFILTER_DROP, 4)), 5)  # 0.8/s: below
    assert events.told == []
    watch.tally(counts((DB, 2, NETFILTER_DROP, 14), (HOST, 1, NO_SOCKET, 100)), 5)  # 2/s
    assert [(ns, pod, reason) for ns, pod, reason, _ in events.told] == [
        ("shop", "db-1", "PacketsDropped")]
    assert events.told[0][3] == ("10 packets dropped in 5 s at if2 on node node-a "
                                 "(NETFILTER_DROP). Trace them: kubectl pktpath -n shop "
                                 "SOURCE-POD db-1")
    watch.tally(counts((DB, 2, NETFILTER_DROP, 30)), 5)
    assert len(events.told) == 1, "at most one Event per place every 5 minutes"


def test_no_events_by_default() -> None:
    watch, events = drops(DropSettings())
    watch.tally(counts((DB, 2, NETFILTER_DROP, 1000)), 5)
    assert events.told == []
