"""The merged PacketTrace status and the spec checks, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest
from pktpath.k8s.kube import PodInfo, ServiceInfo
from pktpath.k8s.spec import Endpoint, SpecError, TraceSpec, parse_duration, parse_spec
from pktpath.k8s.status import STALE_AFTER, Ends, merge, node_part

WEB = PodInfo("shop", "web-0", "node-a", ("10.200.1.10",))
DB = PodInfo("shop", "db-1", "node-b", ("10.200.2.10",))
ENDS = Ends("10.200.1.10", "10.200.2.10", WEB, DB)
SPEC = TraceSpec(Endpoint("web-0", "shop"), Endpoint("db-1", "shop"), probe_count=2, timeout=30)
START = "2026-01-01T00:00:00Z"
T0 = 1767225600.0  # START as seconds


def hop(node: str, netns: str, iface: str, direction: str, t: int, probe: int = 1,
        hook: str = "net_dev_queue") -> dict[str, Any]:
    return {"node": node, "pod": netns if "/" in netns else "", "netns": netns,
            "netnsInode": hash(netns) & 0xFFFF, "interface": iface, "direction": direction,
            "hook": hook, "probe": probe, "timeNs": t}


def body(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"status": {"startTime": START, "nodes": list(parts)}}


def test_hops_are_ordered_along_the_path_not_by_clock() -> None:
    # node-b's clock runs 1 ms behind: its request hops carry earlier times than node-a's
    a = node_part("node-a", "Done", [
        hop("node-a", "shop/web-0", "eth0", "request", 5_000_000),
        hop("node-a", "host", "flannel.1", "request", 5_010_000),
        hop("node-a", "host", "flannel.1", "reply", 5_200_000),
        hop("node-a", "shop/web-0", "eth0", "reply", 5_210_000)], probes_sent=1)
    b = node_part("node-b", "Done", [
        hop("node-b", "host", "flannel.1", "request", 4_050_000),
        hop("node-b", "shop/db-1", "eth0", "request", 4_060_000),
        hop("node-b", "shop/db-1", "eth0", "reply", 4_070_000),
        hop("node-b", "host", "flannel.1", "reply", 4_080_000)])
    merged = merge(body(b, a), SPEC, ENDS, now=T0 + 5)
    path = [(h["node"], h["interface"], h["direction"]) for h in merged.status["path"]]
    assert path == [("node-a", "eth0", "request"), ("node-a", "flannel.1", "request"),
                    ("node-b", "flannel.1", "request"), ("node-b", "eth0", "request"),
                    ("node-b", "eth0", "reply"), ("node-b", "flannel.1", "reply"),
                    ("node-a", "flannel.1", "reply"), ("node-a", "eth0", "reply")]
    assert merged.status["phase"] == "Succeeded" and merged.finished
    assert merged.status["result"] == "delivered (1/1 probes answered)"
    assert merged.status["path"][1]["since"] == "0.010ms"


def test_a_probe_without_reply_says_where_it_was_last_seen() -> None:
    a = node_part("node-a", "Done", [hop("node-a", "shop/web-0", "eth0", "request", 1),
                                     hop("node-a", "shop/web-0", "eth0", "request", 9, 2)],
                  probes_sent=2)
    b = node_part("node-b", "Done", [hop("node-b", "host", "flannel.1", "request", 5)])
    merged = merge(body(a, b), SPEC, ENDS, now=T0 + 5)
    assert merged.status["result"] == "no reply: last seen at node-b host flannel.1 (request)"
    summary = [(r["interface"], r["seen"], r["sent"], r["loss"]) for r in merged.status["summary"]]
    assert summary == [("eth0", 2, 2, "0.0%"), ("flannel.1", 1, 2, "50.0%")]
    # not one probe answered: the trace failed, and says why
    assert merged.status["phase"] == "Failed" and merged.finished
    complete = next(c for c in merged.status["conditions"] if c["type"] == "Complete")
    assert (complete["reason"], complete["message"]) == ("NotDelivered", merged.status["result"])


def test_one_probe_answered_of_two_succeeds() -> None:
    a = node_part("node-a", "Done", [hop("node-a", "shop/web-0", "eth0", "request", 1),
                                     hop("node-a", "shop/web-0", "eth0", "request", 9, 2),
                                     hop("node-a", "shop/web-0", "eth0", "reply", 20, 2)],
                  probes_sent=2)
    merged = merge(body(a), SPEC, ENDS, now=T0 + 5)
    assert (merged.status["phase"], merged.status["result"]) == ("Succeeded",
                                                                 "1/2 probes answered")


def test_a_probe_sent_twice_counts_once() -> None:
    hops = [hop("node-a", "shop/web-0", "eth0", "request", t) for t in (1, 2)]
    merged = merge(body(node_part("node-a", "Running", hops, probes_sent=1)), SPEC, ENDS,
                   now=T0 + 1)
    assert merged.status["hops"] == 1


def test_running_parts_long_after_the_timeout_fail_the_trace() -> None:
    part = node_part("node-b", "Running", [])
    assert merge(body(part), SPEC, ENDS, now=T0 + 30 + STALE_AFTER - 1).status["phase"] == "Running"
    late = merge(body(part), SPEC, ENDS, now=T0 + 30 + STALE_AFTER + 1)
    assert late.status["phase"] == "Failed" and late.finished
    complete = next(c for c in late.status["conditions"] if c["type"] == "Complete")
    assert complete["message"] == "node node-b did not finish (its agent is gone?)"


def test_invalid_spec_is_a_failed_condition() -> None:
    merged = merge({}, None, None, invalid="destination pod shop/db-9 does not exist")
    assert merged.status["phase"] == "Failed"
    valid = merged.status["conditions"][0]
    assert (valid["type"], valid["status"], valid["message"]) == (
        "Valid", "False", "destination pod shop/db-9 does not exist")


def test_spec_defaults_and_durations() -> None:
    spec = parse_spec({"source": {"pod": "web-0"}, "destination": {"ip": "10.200.2.10"}}, "shop")
    assert spec == TraceSpec(Endpoint("web-0", "shop"), Endpoint(ip="10.200.2.10"))
    assert [parse_duration(d) for d in ("200ms", "1.5s", "2m")] == [0.2, 1.5, 120.0]


@pytest.mark.parametrize("spec, message", [
    ({"source": {"pod": "a"}, "destination": {"pod": "b"}, "protocol": "tcp"}, "spec.port"),
    ({"source": {"pod": "a"}, "destination": {"pod": "b"}, "port": 80}, "not allowed with icmp"),
    ({"source": {"pod": "a", "ip": "10.0.0.1"}, "destination": {"pod": "b"}}, "exactly one"),
    ({"source": {"pod": "a"}, "destination": {"ip": "nope"}}, "is not an IP address"),
    ({"source": {"pod": "a"}, "destination": {"pod": "b"}, "timeout": "1h"}, "not a duration"),
])
def test_spec_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec, "shop")


@pytest.mark.parametrize("spec, message", [
    ({"source": {"pod": "a"}, "destination": {"service": "db", "port": 5432}},
     "tcp or udp and its port"),
    ({"source": {"service": "db"}, "destination": {"pod": "b"}}, "exactly one of pod or ip"),
    ({"source": {"pod": "a"}, "destination": {"pod": "b", "port": 80}, "protocol": "tcp"},
     "port goes with service"),
    ({"source": {"pod": "a"}, "destination": {"service": "db", "port": 80}, "protocol": "tcp",
      "port": 81}, "differ"),
    ({"source": {"pod": "a"}, "destination": {"service": "db", "pod": "b"}, "protocol": "udp",
      "port": 53}, "exactly one of pod, ip or service"),
])
def test_service_spec_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(spec, "shop")


def test_a_service_destination_takes_its_port() -> None:
    spec = parse_spec({"source": {"pod": "web-0"}, "protocol": "tcp",
                       "destination": {"service": "db", "namespace": "data", "port": 5432}},
                      "shop")
    assert (spec.destination, spec.port) == (Endpoint(service="db", namespace="data"), 5432)
    assert str(spec.destination) == "svc data/db"


SVC = ServiceInfo("shop", "db", "10.200.200.10", ((5432, "tcp"),), ("10.200.2.10", "10.200.2.11"))
SVC_ENDS = Ends("10.200.1.10", "10.200.200.10", WEB, None, SVC, 5432)
SVC_SPEC = TraceSpec(Endpoint("web-0", "shop"), Endpoint(service="db", namespace="shop"),
                     protocol="tcp", port=5432, probe_count=2, timeout=30)


def test_through_a_service_the_result_names_it_and_the_chosen_endpoint() -> None:
    translated = {**hop("node-a", "host", "cni0", "request", 2),
                  "translation": "DNAT 10.200.200.10:5432 -> 10.200.2.11:5432",
                  "endpoint": "shop/db-2"}
    hops = [hop("node-a", "shop/web-0", "eth0", "request", 1), translated,
            hop("node-a", "shop/web-0", "eth0", "reply", 3)]
    hops += [dict(h, probe=2, timeNs=h["timeNs"] + 10) for h in hops]
    merged = merge(body(node_part("node-a", "Done", hops, probes_sent=2)), SVC_SPEC, SVC_ENDS,
                   now=T0 + 5)
    assert merged.status["to"] == "svc shop/db:5432 (10.200.200.10)"
    assert merged.status["result"] == (
        "delivered via Service shop/db:5432 to shop/db-2 (2/2 probes answered)")
    assert merged.status["path"][1]["translation"] == (
        "DNAT 10.200.200.10:5432 -> 10.200.2.11:5432")


def test_a_service_without_ready_endpoints_says_so() -> None:
    empty = Ends("10.200.1.10", "10.200.200.10", WEB, None,
                 ServiceInfo("shop", "db", "10.200.200.10", ((5432, "tcp"),)), 5432)
    dropped = {**hop("node-a", "host", "cni0", "request", 2, hook="kfree_skb"), "drop": True,
               "dropReason": "NETFILTER_DROP"}
    part = node_part("node-a", "Done", [hop("node-a", "shop/web-0", "eth0", "request", 1),
                                        dropped], probes_sent=2)
    merged = merge(body(part), SVC_SPEC, empty, now=T0 + 5)
    assert merged.status["phase"] == "Failed"
    assert merged.status["result"] == (
        "Service shop/db:5432 has no ready endpoints; dropped at node-a host cni0 (request): "
        "NETFILTER_DROP")
