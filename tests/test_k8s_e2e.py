"""End-to-end: PacketTraces against a real API server, agents per simulated node, real BPF.

Each test asserts what `kubectl get ... -o json` shows a cluster operator.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any

import pytest
from conftest import SLOWDOWN, rss_mib
from netlab import Netlab, k8s_node, k8s_pod, vxlan_join

import deps

_namespaces = itertools.count(1)


def fresh_namespace(cluster: Any) -> str:
    """A namespace of its own for each test (deleted ones would stay Terminating here)."""
    name = f"shop-{int(time.time()) % 100000}-{next(_namespaces)}"
    cluster.namespace(name)
    return name


def packet_trace(name: str, namespace: str, source: dict[str, Any], destination: dict[str, Any],
                 **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pktpath.dev/v1alpha1", "kind": "PacketTrace",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": source, "destination": destination, **spec}}


def wait_phase(cluster: Any, namespace: str, name: str, phases: tuple[str, ...],
               timeout: float = 40 * SLOWDOWN) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = cluster.get("packettrace", name, "-n", namespace)
        if (body.get("status") or {}).get("phase") in phases:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{name} never reached {phases}: {json.dumps(body.get('status'))}")


def path_of(body: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(h["node"], h["netns"], h["interface"], h["direction"])
            for h in body["status"]["path"]]


def events_of(cluster: Any, namespace: str, name: str) -> list[str]:
    events = cluster.get("events", "-n", namespace,
                         "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])]


def one_node_with_two_pods(cluster: Any, lab: Netlab, subnet: int) -> tuple[str, Any]:
    ns = fresh_namespace(cluster)
    node = k8s_node(lab, "node-a", subnet)
    cluster.node("node-a")
    cluster.pod(ns, "web-0", "node-a", k8s_pod(lab, node, "web-0", 10))
    cluster.pod(ns, "db-1", "node-a", k8s_pod(lab, node, "db-1", 11))
    return ns, node


def test_pod_to_pod_on_one_node(cluster: Any, agents: Any, lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 61)
    web, db = "10.200.61.10", "10.200.61.11"
    agent = agents("node-a", node.ns.path)

    cluster.apply(packet_trace("web-to-db", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 3, "interval": "200ms"},
                               timeout=f"{round(20 * SLOWDOWN)}s"))
    body = wait_phase(cluster, ns, "web-to-db", ("Succeeded", "Failed"), 60 * SLOWDOWN)

    status = body["status"]
    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))  # on failure
    assert status["phase"] == "Succeeded", status
    vw, vd = node.veths["web-0"], node.veths["db-1"]
    assert path_of(body) == [
        ("node-a", f"{ns}/web-0", "eth0", "request"), ("node-a", "host", vw, "request"),
        ("node-a", "host", vd, "request"), ("node-a", f"{ns}/db-1", "eth0", "request"),
        ("node-a", f"{ns}/db-1", "eth0", "reply"), ("node-a", "host", vd, "reply"),
        ("node-a", "host", vw, "reply"), ("node-a", f"{ns}/web-0", "eth0", "reply")], (
        agent.log()[-3000:])
    assert status["path"][0]["sinceNs"] == 0
    assert [h["sinceNs"] for h in status["path"]] == sorted(h["sinceNs"] for h in status["path"])
    assert status["result"] == "delivered (3/3 probes answered)"
    assert status["hops"] == 8
    assert (status["from"], status["to"]) == (f"{ns}/web-0 ({web})", f"{ns}/db-1 ({db})")
    assert [(r["interface"], r["seen"], r["sent"], r["loss"]) for r in status["summary"]][:2] == [
        ("eth0", 3, 3, "0.0%"), (vw, 3, 3, "0.0%")]
    assert [p["node"] for p in status["nodes"]] == ["node-a"]
    assert status["nodes"][0]["probesSent"] == 3
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Valid": "True", "Complete": "True"}

    table = cluster.kubectl("get", "packettraces", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "SOURCE", "DESTINATION", "PHASE", "HOPS", "RESULT", "AGE"]
    assert table[1].split()[:8] == ["web-to-db", f"{ns}/web-0", f"({web})", f"{ns}/db-1",
                                    f"({db})", "Succeeded", "8", "delivered"]
    assert sorted(events_of(cluster, ns, "web-to-db")) == ["Finished", "NodeJoined", "Started"]
    metrics = agent.metrics()
    assert metrics["pktpath_probes_sent_total"] == 3
    assert metrics["pktpath_traces_running"] == 0
    assert metrics["pktpath_programs_attached"] == 0


def test_pod_to_pod_across_two_nodes_over_vxlan(cluster: Any, agents: Any, lab: Netlab) -> None:
    ns = fresh_namespace(cluster)
    a, b = k8s_node(lab, "node-a", 62), k8s_node(lab, "node-b", 63)
    vxlan_join(lab, a, b)
    web, db = k8s_pod(lab, a, "web-0", 10), k8s_pod(lab, b, "db-1", 10)
    for node in ("node-a", "node-b"):
        cluster.node(node)
    cluster.pod(ns, "web-0", "node-a", web)
    cluster.pod(ns, "db-1", "node-b", db)
    agents("node-a", a.ns.path)
    # the destination's agent starts after the trace runs on the source's: the probes wait
    # for it (else they cross node-b before it traces and its hops are missing)
    cluster.apply(packet_trace("web-to-db", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 2, "interval": "200ms"}, timeout="20s"))
    time.sleep(1)
    agents("node-b", b.ns.path)
    body = wait_phase(cluster, ns, "web-to-db", ("Succeeded", "Failed"))

    status = body["status"]
    assert status["phase"] == "Succeeded", status
    va, vb = a.veths["web-0"], b.veths["db-1"]
    # the vxlan underlay (eth0 of each node) is followed too: tracking, tunnel decoded
    assert path_of(body) == [
        ("node-a", f"{ns}/web-0", "eth0", "request"), ("node-a", "host", va, "request"),
        ("node-a", "host", "cni0", "request"), ("node-a", "host", "flannel.1", "request"),
        ("node-a", "host", "eth0", "request"), ("node-b", "host", "eth0", "request"),
        ("node-b", "host", "flannel.1", "request"), ("node-b", "host", "cni0", "request"),
        ("node-b", "host", vb, "request"), ("node-b", f"{ns}/db-1", "eth0", "request"),
        ("node-b", f"{ns}/db-1", "eth0", "reply"), ("node-b", "host", vb, "reply"),
        ("node-b", "host", "cni0", "reply"), ("node-b", "host", "flannel.1", "reply"),
        ("node-b", "host", "eth0", "reply"), ("node-a", "host", "eth0", "reply"),
        ("node-a", "host", "flannel.1", "reply"), ("node-a", "host", "cni0", "reply"),
        ("node-a", "host", va, "reply"), ("node-a", f"{ns}/web-0", "eth0", "reply")]
    assert status["result"] == "delivered (2/2 probes answered)"
    assert sorted(p["node"] for p in status["nodes"]) == ["node-a", "node-b"]
    assert all(p["phase"] == "Done" for p in status["nodes"])
    parts = {p["node"]: p for p in status["nodes"]}
    assert {h["node"] for h in parts["node-b"]["hops"]} == {"node-b"}, "each agent its own hops"
    for node in ("node-a", "node-b"):  # two writers, nothing lost or overwritten
        probes = sorted(h["probe"] for h in parts[node]["hops"])
        assert probes == [1] * 10 + [2] * 10, (node, probes)
    full = cluster.get("packettrace", "web-to-db", "-n", ns, "--show-managed-fields")
    managers = {m["manager"] for m in full["metadata"]["managedFields"]}
    assert {"pktpath-agent-node-a", "pktpath-agent-node-b", "pktpath-merge"} <= managers


@pytest.mark.parametrize("spec, message", [
    ({"source": {"pod": "web-0", "ip": "10.200.1.1"}, "destination": {"pod": "db-1"}},
     "give exactly one of pod, ip or service"),
    ({"source": {"pod": "web-0"}, "destination": {"ip": "10.200.1.300"}},
     "must be an IPv4 or IPv6 address"),
    ({"source": {"pod": "web-0"}, "destination": {"pod": "db-1"}, "protocol": "sctp"},
     'Unsupported value: "sctp"'),
    ({"source": {"pod": "web-0"}, "destination": {"pod": "db-1"}, "protocol": "tcp"},
     "port (or destination.port of a Service) is required for tcp and udp, and not allowed "
     "for icmp"),
    ({"source": {"pod": "web-0"}, "destination": {"service": "db", "port": 5432}},
     "a Service is traced with tcp or udp and its port"),
    ({"source": {"service": "db"}, "destination": {"pod": "db-1"}},
     "the source is a pod or an IP (probes start there), not a Service"),
    ({"source": {"pod": "web-0"}, "destination": {"pod": "db-1", "port": 80}, "port": 80,
      "protocol": "tcp"}, "port goes with service"),
    ({"source": {"pod": "web-0"}, "destination": {"pod": "db-1"}, "timeout": "soon"},
     "spec.timeout in body should match"),
    ({"source": {"pod": "web-0"}}, "spec.destination: Required value"),
    ({"source": {"pod": "web-0"}, "destination": {"pod": "db-1"}, "probe": {"count": 0}},
     "spec.probe.count in body should be greater than or equal to 1"),
])
def test_invalid_spec_is_rejected_by_the_schema(cluster: Any, spec: dict[str, Any],
                                                message: str) -> None:
    body = {"apiVersion": "pktpath.dev/v1alpha1", "kind": "PacketTrace",
            "metadata": {"name": "bad", "namespace": "default"}, "spec": spec}
    proc = cluster.apply(body, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_missing_pod_ends_failed_with_a_condition(cluster: Any, agents: Any, lab: Netlab) -> None:
    ns = fresh_namespace(cluster)
    node = k8s_node(lab, "node-a", 64)
    web = k8s_pod(lab, node, "web-0", 10)
    cluster.node("node-a")
    cluster.pod(ns, "web-0", "node-a", web)
    agents("node-a", node.ns.path)

    cluster.apply(packet_trace("to-nowhere", ns, {"pod": "web-0"}, {"pod": "db-9"},
                               probe={"count": 1}))
    body = wait_phase(cluster, ns, "to-nowhere", ("Failed",))
    valid = next(c for c in body["status"]["conditions"] if c["type"] == "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"] == f"destination pod {ns}/db-9 does not exist"
    assert body["status"]["result"] == f"invalid: destination pod {ns}/db-9 does not exist"
    assert "InvalidSpec" in events_of(cluster, ns, "to-nowhere")


def wait_for(what: str, check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


def probes_sent(cluster: Any, ns: str, name: str) -> int:
    parts = (cluster.get("packettrace", name, "-n", ns).get("status") or {}).get("nodes") or []
    return sum(int(p.get("probesSent", 0)) for p in parts)


def test_deleting_a_running_trace_stops_its_probes_at_once(cluster: Any, agents: Any,
                                                          lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 65)
    agent = agents("node-a", node.ns.path)
    cluster.apply(packet_trace("long", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 500, "interval": "100ms"}, timeout="60s"))
    wait_for("probes", lambda: probes_sent(cluster, ns, "long") >= 3)
    # transmit, receive, drops, ICMP errors, frees after use (tracking)
    assert agent.metrics()["pktpath_programs_attached"] == 5

    cluster.kubectl("delete", "packettrace", "long", "-n", ns)
    wait_for("the session to end", lambda: agent.metrics()["pktpath_traces_running"] == 0, 5)
    sent = agent.metrics()["pktpath_probes_sent_total"]
    time.sleep(1)
    metrics = agent.metrics()
    assert metrics["pktpath_probes_sent_total"] == sent, "no probe after the delete"
    assert metrics["pktpath_programs_attached"] == 0
    assert sent < 100


def test_agent_killed_mid_trace_resumes_and_finishes(cluster: Any, agents: Any,
                                                     lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 66)
    first = agents("node-a", node.ns.path)
    cluster.apply(packet_trace("resume", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 12, "interval": "250ms"}, timeout="30s"))
    wait_for("probes", lambda: probes_sent(cluster, ns, "resume") >= 3)
    first.stop(kill=True)
    before = probes_sent(cluster, ns, "resume")
    assert before < 12
    assert cluster.get("packettrace", "resume", "-n", ns)["status"]["phase"] == "Running"

    agents("node-a", node.ns.path)
    body = wait_phase(cluster, ns, "resume", ("Succeeded", "Failed"), timeout=40)
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert status["nodes"][0]["probesSent"] == 12
    assert status["result"] in ("delivered (12/12 probes answered)", "11/12 probes answered",
                                "10/12 probes answered"), status["result"]
    probes = {h["probe"] for h in status["nodes"][0]["hops"]}
    assert {1, 12} <= probes, "hops from before and after the restart"
    assert status["hops"] == 8


def test_watch_only_to_an_ip_names_the_pods_it_finds(cluster: Any, agents: Any,
                                                    lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 67)
    agents("node-a", node.ns.path)
    cluster.apply(packet_trace("watch", ns, {"pod": "web-0"}, {"ip": "10.200.67.11"},
                               timeout="4s"))
    wait_for("the agent to join", lambda: (cluster.get("packettrace", "watch", "-n", ns)
                                           .get("status") or {}).get("phase") == "Running")
    node.pods["web-0"].sh("ping", "-c2", "-i0.2", "-W2", "10.200.67.11")
    body = wait_phase(cluster, ns, "watch", ("Succeeded", "Failed"), timeout=20)

    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert status["to"] == f"{ns}/db-1 (10.200.67.11)", "the IP's pod is found"
    assert [(h["netns"], h["direction"]) for h in status["path"]] == [
        (f"{ns}/web-0", "request"), ("host", "request"), ("host", "request"),
        (f"{ns}/db-1", "request"), (f"{ns}/db-1", "reply"), ("host", "reply"),
        ("host", "reply"), (f"{ns}/web-0", "reply")]
    assert status["result"] == "16 hops of 2 packets seen"


def test_a_drop_is_reported_at_its_hop_with_the_reason(cluster: Any, agents: Any,
                                                       lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 68)
    node.pods["db-1"].sh("iptables", "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    agents("node-a", node.ns.path)
    cluster.apply(packet_trace("blocked", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 2, "interval": "200ms"}, timeout="20s"))
    body = wait_phase(cluster, ns, "blocked", ("Succeeded", "Failed"))

    status = body["status"]
    assert status["result"] == (f"dropped at node-a {ns}/db-1 eth0 (request): NETFILTER_DROP "
                                "(netfilter, ip family, input hook)")
    last = status["path"][-1]
    assert (last["netns"], last["interface"], last["drop"], last["dropReason"]) == (
        f"{ns}/db-1", "eth0", True, "NETFILTER_DROP")
    assert [h["direction"] for h in status["path"]] == ["request"] * 5
    assert "Dropped" in events_of(cluster, ns, "blocked")


def test_the_drop_watch_counts_a_pods_drops_and_tells_the_pod(cluster: Any, agents: Any,
                                                               lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 74)
    for space in (node.ns, *node.pods.values()):  # no IPv6 listener reports to be dropped
        space.sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    node.pods["db-1"].sh("iptables", "-A", "INPUT", "-p", "icmp", "-j", "DROP")
    agent = agents("node-a", node.ns.path, "--drop-event-rate", "2")
    series = (f'pktpath_drops_total{{node="node-a",namespace="{ns}",pod="db-1",'
              'interface="eth0",reason="NETFILTER_DROP"}')
    node.pods["web-0"].sh("ping", "-c", "40", "-i", "0.1", "-W", "1", "10.200.74.11",
                          check=False)
    def drops_of_db() -> dict[str, float]:
        return {k: v for k, v in agent.metrics().items() if k.startswith("pktpath_drops")}

    try:
        wait_for("the drop counts", lambda: agent.metrics().get(series) == 40, 30)
    except AssertionError:
        raise AssertionError(f"{series} is not 40: {drops_of_db()}\n"
                             f"{agent.log()[-3000:]}") from None
    # other series may be there (IGMP reports dropped by pods that do not listen): all of
    # this node's namespaces, none of another test's
    for name in (k for k in agent.metrics() if k.startswith("pktpath_drops_total")):
        assert 'node="node-a"' in name and (f'namespace="{ns}"' in name
                                            or 'namespace="",pod=""' in name), name
    events = cluster.get("events", "-n", ns, "--field-selector",
                         "involvedObject.kind=Pod,involvedObject.name=db-1")["items"]
    assert [e["reason"] for e in events] == ["PacketsDropped"]
    assert events[0]["type"] == "Warning"
    assert events[0]["message"].endswith(f"on node node-a (NETFILTER_DROP). Trace them: "
                                         f"kubectl pktpath -n {ns} SOURCE-POD db-1")


def test_filter_expression_narrows_the_trace(cluster: Any, agents: Any, lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 69)
    agents("node-a", node.ns.path)
    cluster.apply(packet_trace("requests", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 2, "interval": "200ms"}, timeout="20s",
                               filter="icmp[icmptype] == icmp-echo"))
    cluster.apply(packet_trace("bad-filter", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               filter="icmp and nonsense"))
    body = wait_phase(cluster, ns, "requests", ("Succeeded", "Failed"))
    assert {h["direction"] for h in body["status"]["path"]} == {"request"}, "no echo replies"
    assert body["status"]["hops"] == 4
    bad = wait_phase(cluster, ns, "bad-filter", ("Failed",))
    assert bad["status"]["result"] == ("invalid: spec.filter: bad filter expression 'icmp and "
                                       "nonsense': syntax error in filter expression")


def test_kubectl_plugin_prints_the_table_with_pod_names(cluster: Any, agents: Any,
                                                        lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 70)
    agents("node-a", node.ns.path)
    plugin_dir = os.path.dirname(shutil.which("kubectl-pktpath") or "")
    assert plugin_dir, "kubectl-pktpath is not installed (pip install -e .)"
    kubectl_dir = os.path.dirname(deps.path("kubectl"))
    env = dict(os.environ, PATH=f"{kubectl_dir}:{plugin_dir}:{os.environ['PATH']}",
               KUBECONFIG=cluster.admin_kubeconfig)
    done = subprocess.run(["kubectl", "pktpath", "web-0", "db-1", "-n", ns, "-c", "3",
                           "--interval", "200ms", "--timeout", "20s"],
                          capture_output=True, text=True, env=env, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[-7:] == ["Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"]
    vw, vd = node.veths["web-0"], node.veths["db-1"]
    assert [line.split()[:5] for line in lines[2:10]] == [
        ["1.|--", f"node-a/{ns}/web-0", "eth0", "request", "0.0%"],
        ["2.|--", "node-a/host", vw, "request", "0.0%"],
        ["3.|--", "node-a/host", vd, "request", "0.0%"],
        ["4.|--", f"node-a/{ns}/db-1", "eth0", "request", "0.0%"],
        ["5.|--", f"node-a/{ns}/db-1", "eth0", "reply", "0.0%"],
        ["6.|--", "node-a/host", vd, "reply", "0.0%"],
        ["7.|--", "node-a/host", vw, "reply", "0.0%"],
        ["8.|--", f"node-a/{ns}/web-0", "eth0", "reply", "0.0%"]]
    assert all(line.split()[5] == "3" for line in lines[2:10])
    assert lines[-1] == "Succeeded: delivered (3/3 probes answered)"
    arrows = [re.sub(r"<-+", "<---", re.sub(r"-+>", "--->", line)).split() for line in lines]
    assert ["|", "eth0", "--->", vw, "--->", vd, "--->", "eth0", "|"] in arrows, done.stdout
    assert ["|", "eth0", "<---", vw, "<---", vd, "<---", "eth0", "|"] in arrows, done.stdout
    name = done.stderr.split("packettrace ")[1].split(" created")[0].split("/")[1]
    assert cluster.get("packettrace", name, "-n", ns)["status"]["phase"] == "Succeeded"

    done = subprocess.run(["kubectl", "pktpath", "web-0", "db-1", "-n", ns, "-c", "1",
                           "--interval", "200ms", "--timeout", "20s", "--rm"],
                          capture_output=True, text=True, env=env, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    gone = cluster.kubectl("get", "packettraces", "-n", ns, "-o", "name").stdout.split()
    assert gone == [f"packettrace.pktpath.dev/{name}"], "--rm deleted the second trace"


def test_fifty_traces_at_once_on_one_agent(cluster: Any, agents: Any, lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 82)
    agent = agents("node-a", node.ns.path)
    names = [f"t{i:02d}" for i in range(50)]
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        packet_trace(name, ns, {"pod": "web-0"}, {"pod": "db-1"},
                     probe={"count": 2, "interval": "200ms"}, timeout="90s") for name in names]}
    writes_before = agent.metrics().get("pktpath_status_writes_total", 0)
    peak = 0.0
    cluster.apply(manifest)
    deadline = time.monotonic() + 150
    bodies: dict[str, Any] = {}
    while time.monotonic() < deadline and len(bodies) < len(names):
        assert agent.proc is not None
        peak = max(peak, rss_mib(agent.proc.pid))
        items = cluster.get("packettraces", "-n", ns)["items"]
        bodies = {b["metadata"]["name"]: b for b in items
                  if (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")}
        time.sleep(1)
    assert len(bodies) == 50, f"{len(bodies)}/50 finished"
    for name, body in bodies.items():
        status = body["status"]
        if status["result"] != "delivered (2/2 probes answered)":
            print(name, json.dumps(status, indent=1))
        assert (status["phase"], status["hops"], status["result"]) == (
            "Succeeded", 8, "delivered (2/2 probes answered)"), (name, [
                (h["probe"], h["netns"], h["interface"], h["direction"]) for p in status["nodes"]
                for h in p["hops"]], [{k: v for k, v in p.items() if k != "hops"}
                                      for p in status["nodes"]])
        assert sum(len(p["hops"]) for p in status["nodes"]) == 16, "2 probes x 8 hops, none lost"
    writes = agent.metrics()["pktpath_status_writes_total"] - writes_before
    print(f"\n50 traces: {writes / 50:.1f} status writes per trace, agent peak RSS {peak:.0f} MiB")
    assert writes / 50 <= 12, f"{writes / 50:.1f} status writes per trace: not batched"
    assert agent.metrics()["pktpath_programs_attached"] == 0


def test_api_server_away_for_20_seconds_mid_trace(cluster: Any, agents: Any,
                                                  lab: Netlab) -> None:
    ns, node = one_node_with_two_pods(cluster, lab, 83)
    agent = agents("node-a", node.ns.path)
    cluster.apply(packet_trace("outage", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 15, "interval": "1s"}, timeout="120s"))
    wait_phase(cluster, ns, "outage", ("Running",))
    cluster.pause_apiserver(20)  # the probes end while it is away
    body = wait_phase(cluster, ns, "outage", ("Succeeded", "Failed"), timeout=60)
    status = body["status"]
    assert (status["phase"], status["result"]) == (
        "Succeeded", "delivered (15/15 probes answered)"), status
    assert sum(len(p["hops"]) for p in status["nodes"]) == 15 * 8
    assert agent.metrics()["pktpath_api_errors_total"] > 0, "the outage was noticed"


def test_agent_killed_leaves_nothing_attached(cluster: Any, agents: Any, lab: Netlab) -> None:
    from test_trace_e2e import loaded_programs, programs_gone

    ns, node = one_node_with_two_pods(cluster, lab, 84)
    before = {p["id"] for p in loaded_programs()}
    agent = agents("node-a", node.ns.path)
    cluster.apply(packet_trace("killed", ns, {"pod": "web-0"}, {"pod": "db-1"},
                               probe={"count": 50, "interval": "1s"}, timeout="60s"))
    wait_phase(cluster, ns, "killed", ("Running",))
    ours = {p["id"] for p in loaded_programs() if p["id"] not in before}
    assert len(ours) == 6, "the trace's 5 programs and the drop watch's are attached"
    agent.stop(kill=True)
    assert programs_gone(ours), "SIGKILL left programs attached"


def test_agent_service_account_is_least_privilege(cluster: Any) -> None:
    def can(*args: str) -> str:
        done = subprocess.run([deps.path("kubectl"), "--kubeconfig",
                               cluster.agent_kubeconfig, "auth", "can-i", *args],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip()

    assert can("get", "secrets", "-A") == "no"
    assert can("list", "secrets", "-n", "pktpath-system") == "no"
    assert can("patch", "packettraces.pktpath.dev", "--subresource=status", "-A") == "yes"
    assert can("watch", "packettraces.pktpath.dev", "-A") == "yes"
    for verb in ("create", "update", "patch", "delete"):
        assert can(verb, "packettraces.pktpath.dev", "-A") == "no", verb
        assert can(verb, "pods", "-A") == "no", verb
    assert can("list", "pods", "-A") == "yes"
    assert can("create", "events", "-A") == "yes"
    assert can("create", "configmaps", "-A") == "no"
