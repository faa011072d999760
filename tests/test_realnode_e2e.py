"""End-to-end on a real node: pktpath installed by helm into a cluster with a real kubelet,
containerd, bridge CNI and kube-proxy (tests/realcluster.py), tracing real pods.

Pods run the workload image built here (deps/images.sh). What is asserted is what an operator
sees with kubectl; the veth names are the kernel's, read from the pods' namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from typing import Any

import pytest

import deps

WORKLOAD = "localhost/pktpath/workload:test"
# TCP 5432: accept and close; UDP 5353: echo
LISTENER = """
import socket, threading
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("", 5353))
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(data, peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("", 5432))
t.listen(64)
while True:
    t.accept()[0].close()
"""
_names = itertools.count(1)


def namespace(node: Any) -> str:
    """A namespace of the test's own, with its default ServiceAccount made."""
    name = f"rn-{int(time.time()) % 100000}-{next(_names)}"
    node.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while node.kubectl("get", "serviceaccount", "default", "-n", name,
                       check=False).returncode != 0:
        assert time.monotonic() < deadline, "kube-controller-manager made no ServiceAccount"
        time.sleep(0.2)
    return name


def workload(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod of the workload image running the listeners; it may change its own nftables."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
                     "containers": [{
                         "name": "main", "image": WORKLOAD, "imagePullPolicy": "Never",
                         "command": ["python3", "-c", LISTENER],
                         "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}}


def run_pods(node: Any, ns: str, *pods: dict[str, Any]) -> dict[str, str]:
    """Create pods, wait until Ready; their IPs by name."""
    node.kubectl("apply", "-n", ns, "-f", "-",
                 stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(pods)}))
    names = [f"pod/{p['metadata']['name']}" for p in pods]
    node.kubectl("wait", "-n", ns, "--for=condition=Ready", "--timeout=90s", *names)
    return {p["metadata"]["name"]: node.kubectl(
        "get", "pod", p["metadata"]["name"], "-n", ns, "-o", "jsonpath={.status.podIP}"
    ).stdout for p in pods}


def host_veth(ip: str) -> str:
    """The host end of the veth of the pod with this IP (found in /run/netns/cni-*)."""
    for name in os.listdir("/run/netns"):
        addrs = json.loads(subprocess.run(["ip", "-n", name, "-j", "addr"], capture_output=True,
                                          text=True).stdout or "[]")
        for link in addrs:
            if any(a.get("local") == ip for a in link.get("addr_info", [])):
                index = link["link_index"]
                host = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                                 text=True, check=True).stdout)
                return next(h["ifname"] for h in host if h["ifindex"] == index)
    raise AssertionError(f"no pod namespace has {ip}")


def packet_trace(name: str, source: str, destination: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "pktpath.dev/v1alpha1", "kind": "PacketTrace",
                       "metadata": {"name": name},
                       "spec": {"source": {"pod": source}, "destination": {"pod": destination},
                                "probe": {"count": 3, "interval": "200ms"}, "timeout": "30s",
                                **spec}})


def wait_phase(node: Any, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = json.loads(node.kubectl("get", "packettrace", name, "-n", ns, "-o",
                                         "json").stdout).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"{name} did not finish: {json.dumps(status)}\n"
                         f"{node.describe_agent()}")


def path_of(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["netns"], h["interface"], h["direction"]) for h in status["path"]]


def agent_pod(node: Any) -> dict[str, Any]:
    pods = json.loads(node.kubectl("get", "pods", "-n", "pktpath-system", "-l",
                                   "app.kubernetes.io/name=pktpath-agent", "-o",
                                   "json").stdout)["items"]
    running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    return dict(running[0])


def pod_memory(pod: dict[str, Any]) -> tuple[int, int]:
    """(peak usage, limit) in bytes of the pod's memory cgroup (cgroup v1)."""
    from realcluster import CGROUP_ROOT

    uid = pod["metadata"]["uid"]
    top = f"/sys/fs/cgroup/memory/{CGROUP_ROOT}/kubepods"
    folder = next(os.path.join(d, f"pod{uid}") for d, subdirs, _ in os.walk(top)
                  if f"pod{uid}" in subdirs)
    values = []
    for name in ("memory.max_usage_in_bytes", "memory.limit_in_bytes"):
        with open(os.path.join(folder, name)) as f:
            values.append(int(f.read()))
    return values[0], values[1]


def test_the_agent_runs_as_the_chart_deploys_it(realnode: Any) -> None:
    ds = json.loads(realnode.kubectl("get", "daemonset", "pktpath-agent", "-n",
                                     "pktpath-system", "-o", "json").stdout)
    assert (ds["status"]["desiredNumberScheduled"], ds["status"]["numberReady"]) == (1, 1)
    pod = agent_pod(realnode)
    container = pod["spec"]["containers"][0]
    assert container["image"] == realnode.images["agent"][0]
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_ADMIN", "NET_RAW"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"memory": "384Mi"}
    assert container["args"][3:] == ["--host-netns", "/proc/self/ns/net", "--max-traces", "20",
                                     "--drop-series", "50", "--drop-event-rate", "0"]
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    from urllib.request import urlopen

    from realcluster import NODE_IP
    with urlopen(f"http://{NODE_IP}:9900/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    assert "pktpath_traces_running 0" in metrics
    _peak, limit = pod_memory(pod)
    assert limit == 384 * 1024 * 1024


@pytest.mark.parametrize("protocol, port", [("icmp", None), ("tcp", 5432), ("udp", 5353)])
def test_pod_to_pod_on_the_real_node(realnode: Any, protocol: str, port: int | None) -> None:
    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    web, db = host_veth(ips["web-0"]), host_veth(ips["db-1"])
    extra = {"protocol": protocol, "port": port} if port else {}
    realnode.kubectl("apply", "-n", ns, "-f", "-",
                     stdin=packet_trace("web-to-db", "web-0", "db-1", **extra))
    status = wait_phase(realnode, ns, "web-to-db")

    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))  # on failure
    assert status["phase"] == "Succeeded"
    assert path_of(status) == [
        (f"{ns}/web-0", "eth0", "request"), ("host", web, "request"),
        ("host", db, "request"), (f"{ns}/db-1", "eth0", "request"),
        (f"{ns}/db-1", "eth0", "reply"), ("host", db, "reply"),
        ("host", web, "reply"), (f"{ns}/web-0", "eth0", "reply")]
    assert {h["node"] for h in status["path"]} == {"pktpath-node"}
    assert status["result"] == "delivered (3/3 probes answered)"
    table = realnode.kubectl("get", "packettraces", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "SOURCE", "DESTINATION", "PHASE", "HOPS", "RESULT", "AGE"]
    assert table[1].split()[:10] == [
        "web-to-db", f"{ns}/web-0", f"({ips['web-0']})", f"{ns}/db-1", f"({ips['db-1']})",
        "Succeeded", "8", "delivered", "(3/3", "probes"]


def test_a_drop_by_nftables_in_the_destination_pod(realnode: Any) -> None:
    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    web, db = host_veth(ips["web-0"]), host_veth(ips["db-1"])
    realnode.kubectl("exec", "-n", ns, "db-1", "--", "nft", "add table inet guard ; "
                     "add chain inet guard input { type filter hook input priority 0 ; } ; "
                     "add rule inet guard input icmp type echo-request drop")
    realnode.kubectl("apply", "-n", ns, "-f", "-", stdin=packet_trace("blocked", "web-0", "db-1"))
    status = wait_phase(realnode, ns, "blocked")

    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))
    assert status["phase"] == "Failed"
    last = status["path"][-1]
    assert (last["netns"], last["interface"], last["direction"], last["drop"],
            last["dropReason"]) == (f"{ns}/db-1", "eth0", "request", True, "NETFILTER_DROP")
    assert status["result"].startswith(f"dropped at pktpath-node {ns}/db-1 eth0 (request): "
                                       "NETFILTER_DROP")
    assert path_of(status) == [
        (f"{ns}/web-0", "eth0", "request"), ("host", web, "request"), ("host", db, "request"),
        (f"{ns}/db-1", "eth0", "request"), (f"{ns}/db-1", "eth0", "request")]
    assert [h.get("drop", False) for h in status["path"]] == [False] * 4 + [True]


def test_the_drop_watch_names_the_pod_in_the_agents_metrics(realnode: Any) -> None:
    from urllib.request import urlopen

    from realcluster import NODE, NODE_IP

    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    realnode.kubectl("exec", "-n", ns, "db-1", "--", "nft", "add table inet guard ; "
                     "add chain inet guard input { type filter hook input priority 0 ; } ; "
                     "add rule inet guard input icmp type echo-request drop")
    realnode.kubectl("exec", "-n", ns, "web-0", "--", "ping", "-c", "6", "-i", "0.2", "-W", "1",
                     ips["db-1"], check=False)
    series = (f'pktpath_drops_total{{node="{NODE}",namespace="{ns}",pod="db-1",'
              'interface="eth0",reason="NETFILTER_DROP"}')

    def value() -> float | None:
        with urlopen(f"http://{NODE_IP}:9900/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(series + " "):
                    return float(line.rsplit(" ", 1)[1])
        return None

    deadline = time.monotonic() + 30  # the agent reads the counts every 5 s
    while value() != 6:
        assert time.monotonic() < deadline, f"{series} is {value()}, not 6"
        time.sleep(1)


def service(node: Any, ns: str, name: str) -> str:
    """A ClusterIP Service (TCP 5432, pods labelled app=NAME); its ClusterIP."""
    node.kubectl("create", "service", "clusterip", name, "-n", ns, "--tcp=5432:5432")
    cluster_ip = node.kubectl("get", "service", name, "-n", ns, "-o",
                              "jsonpath={.spec.clusterIP}").stdout
    assert cluster_ip.startswith("10.200.200.")
    return cluster_ip


def connect_from(node: Any, ns: str, pod: str, address: str) -> subprocess.CompletedProcess[str]:
    """Connect from pod to address:5432 until kube-proxy has programmed it (30 s at most)."""
    connect = (f"import socket; s = socket.create_connection(('{address}', 5432), timeout=5); "
               "print(s.getpeername()[0])")
    deadline = time.monotonic() + 30
    while True:
        done = node.kubectl("exec", "-n", ns, pod, "--", "python3", "-c", connect, check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


def test_a_pod_reaches_a_service_through_kube_proxy(realnode: Any) -> None:
    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1", {"app": "db"}))
    cluster_ip = service(realnode, ns, "db")
    done = connect_from(realnode, ns, "web-0", cluster_ip)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == cluster_ip
    endpoints = realnode.kubectl("get", "endpointslices", "-n", ns, "-l",
                                 "kubernetes.io/service-name=db", "-o",
                                 "jsonpath={.items[*].endpoints[*].addresses[*]}").stdout
    assert endpoints.split() == [ips["db-1"]]


def service_trace(name: str, service_name: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "pktpath.dev/v1alpha1", "kind": "PacketTrace",
                       "metadata": {"name": name},
                       "spec": {"source": {"pod": "web-0"}, "protocol": "tcp",
                                "destination": {"service": service_name, "port": 5432},
                                "probe": {"count": 3, "interval": "200ms"}, "timeout": "30s",
                                **spec}})


def test_a_trace_to_a_service_names_the_endpoint_kube_proxy_chose(realnode: Any) -> None:
    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1", {"app": "db"}),
                   workload("db-2", {"app": "db"}))
    cluster_ip = service(realnode, ns, "db")
    assert connect_from(realnode, ns, "web-0", cluster_ip).returncode == 0
    realnode.kubectl("apply", "-n", ns, "-f", "-", stdin=service_trace("to-db", "db"))
    status = wait_phase(realnode, ns, "to-db")

    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))
    assert status["phase"] == "Succeeded"
    assert status["to"] == f"svc {ns}/db:5432 ({cluster_ip})"
    translated = [h for h in status["path"] if h.get("translation")]
    assert [h["direction"] for h in translated] == ["request", "reply"]
    chosen = translated[0]["endpoint"]
    assert chosen in (f"{ns}/db-1", f"{ns}/db-2")
    chosen_ip = ips[chosen.split("/")[1]]
    assert translated[0]["translation"] == f"DNAT {cluster_ip}:5432 -> {chosen_ip}:5432"
    # the reply's source is translated back, where it leaves the host for web-0
    assert translated[1]["translation"] == f"SNAT {chosen_ip}:5432 -> {cluster_ip}:5432"
    web, db = host_veth(ips["web-0"]), host_veth(chosen_ip)
    assert (translated[1]["netns"], translated[1]["interface"]) == ("host", web)
    # the bridge itself shows only when the host had to resolve the endpoint's address: with
    # bridge netfilter, a translated packet to a known neighbour is bridged straight on
    assert [p for p in path_of(status) if p[1] != "pktpath-cni0"] == [
        (f"{ns}/web-0", "eth0", "request"), ("host", web, "request"),
        ("host", db, "request"), (chosen, "eth0", "request"),
        (chosen, "eth0", "reply"), ("host", db, "reply"),
        ("host", web, "reply"), (f"{ns}/web-0", "eth0", "reply")]
    chosen_all = sorted({h["endpoint"] for n in status["nodes"] for h in n["hops"]
                         if h.get("endpoint")})
    assert set(chosen_all) <= {f"{ns}/db-1", f"{ns}/db-2"}
    assert status["result"] == (f"delivered via Service {ns}/db:5432 to "
                                f"{', '.join(chosen_all)} (3/3 probes answered)")


def test_a_trace_to_a_service_without_endpoints_says_so(realnode: Any) -> None:
    ns = namespace(realnode)
    run_pods(realnode, ns, workload("web-0"))
    cluster_ip = service(realnode, ns, "nobody")  # selects app=nobody: no pod has it
    done = connect_from(realnode, ns, "web-0", cluster_ip)
    assert done.returncode != 0
    realnode.kubectl("apply", "-n", ns, "-f", "-", stdin=service_trace("to-nobody", "nobody"))
    status = wait_phase(realnode, ns, "to-nobody")

    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))
    assert status["phase"] == "Failed"
    drop = status["path"][-1]
    assert (drop["netns"], drop["direction"], drop["drop"]) == ("host", "request", True)
    assert status["result"].startswith(
        f"Service {ns}/nobody:5432 has no ready endpoints; dropped at pktpath-node host "
        f"{drop['interface']} (request): {drop['dropReason']}")


def test_the_agent_pod_deleted_mid_trace_is_recreated_and_the_trace_resumes(
        realnode: Any) -> None:
    ns = namespace(realnode)
    run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    first = agent_pod(realnode)["metadata"]["name"]
    realnode.kubectl("apply", "-n", ns, "-f", "-", stdin=packet_trace(
        "resume", "web-0", "db-1", probe={"count": 16, "interval": "500ms"}, timeout="45s"))

    def probes_sent() -> int:
        status = json.loads(realnode.kubectl("get", "packettrace", "resume", "-n", ns, "-o",
                                             "json").stdout).get("status") or {}
        return sum(int(p.get("probesSent", 0)) for p in status.get("nodes") or [])

    deadline = time.monotonic() + 30
    while probes_sent() < 3:
        assert time.monotonic() < deadline, "no probes sent"
        time.sleep(0.2)
    realnode.kubectl("delete", "pod", "-n", "pktpath-system", first, "--wait=true")
    assert probes_sent() < 16
    realnode.kubectl("rollout", "status", "daemonset/pktpath-agent", "-n", "pktpath-system",
                     "--timeout=60s")
    assert agent_pod(realnode)["metadata"]["name"] != first
    status = wait_phase(realnode, ns, "resume", 90)

    print(json.dumps({k: v for k, v in status.items() if k != "conditions"}))
    assert status["phase"] == "Succeeded"
    assert status["nodes"][0]["probesSent"] == 16
    probes = {h["probe"] for h in status["nodes"][0]["hops"]}
    assert {1, 16} <= probes, "hops from before and after the restart"
    assert status["hops"] == 8


def test_twenty_traces_at_once_on_the_real_agent_stay_under_its_memory_limit(
        realnode: Any) -> None:
    ns = namespace(realnode)
    run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    pod = agent_pod(realnode)
    names = [f"t{i:02d}" for i in range(20)]
    realnode.kubectl("apply", "-n", ns, "-f", "-", stdin="\n---\n".join(
        packet_trace(name, "web-0", "db-1", timeout="60s") for name in names))
    results = {name: wait_phase(realnode, ns, name, 120) for name in names}

    assert {n: (s["phase"], s["hops"]) for n, s in results.items()} == {
        n: ("Succeeded", 8) for n in names}
    peak, limit = pod_memory(pod)
    print(f"agent pod memory: peak {peak / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB")
    assert peak < limit
    again = agent_pod(realnode)
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]
    assert again["status"]["containerStatuses"][0]["restartCount"] == 0


def test_kubectl_pktpath_against_the_real_node(realnode: Any) -> None:
    ns = namespace(realnode)
    ips = run_pods(realnode, ns, workload("web-0"), workload("db-1"))
    web, db = host_veth(ips["web-0"]), host_veth(ips["db-1"])
    plugin_dir = os.path.dirname(shutil.which("kubectl-pktpath") or "")
    assert plugin_dir, "kubectl-pktpath is not installed (pip install -e .)"
    env = dict(os.environ, KUBECONFIG=realnode.admin_kubeconfig,
               PATH=f"{os.path.dirname(deps.path('kubectl'))}:{plugin_dir}:{os.environ['PATH']}")
    done = subprocess.run(["kubectl", "pktpath", "web-0", "db-1", "-n", ns, "-c", "3",
                           "--interval", "200ms", "--timeout", "30s"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    node = "pktpath-node"
    assert [line.split()[:5] for line in lines[2:10]] == [
        ["1.|--", f"{node}/{ns}/web-0", "eth0", "request", "0.0%"],
        ["2.|--", f"{node}/host", web, "request", "0.0%"],
        ["3.|--", f"{node}/host", db, "request", "0.0%"],
        ["4.|--", f"{node}/{ns}/db-1", "eth0", "request", "0.0%"],
        ["5.|--", f"{node}/{ns}/db-1", "eth0", "reply", "0.0%"],
        ["6.|--", f"{node}/host", db, "reply", "0.0%"],
        ["7.|--", f"{node}/host", web, "reply", "0.0%"],
        ["8.|--", f"{node}/{ns}/web-0", "eth0", "reply", "0.0%"]], done.stdout
    assert lines[-1] == "Succeeded: delivered (3/3 probes answered)"
    cluster_ip = service(realnode, ns, "db")
    realnode.kubectl("label", "pod", "db-1", "-n", ns, "app=db", "--overwrite")
    assert connect_from(realnode, ns, "web-0", cluster_ip).returncode == 0
    done = subprocess.run(["kubectl", "pktpath", "web-0", "svc/db", "--tcp", "--port", "5432",
                           "-n", ns, "-c", "3", "--interval", "200ms", "--timeout", "30s"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"Succeeded: delivered via Service {ns}/db:5432 to {ns}/db-1 (3/3 probes answered)")


# what the agent's ServiceAccount may do (charts/pktpath/templates/rbac.yaml), and some of
# what it may not
RBAC = [("list", "pods", "yes"), ("watch", "nodes", "yes"),
        ("watch", "packettraces.pktpath.dev", "yes"),
        ("patch", "packettraces.pktpath.dev/status", "yes"), ("create", "events", "yes"),
        ("get", "secrets", "no"), ("list", "configmaps", "no"), ("create", "pods", "no"),
        ("delete", "pods", "no"), ("patch", "packettraces.pktpath.dev", "no"),
        ("create", "packettraces.pktpath.dev", "no"), ("delete", "packettraces.pktpath.dev", "no"),
        ("update", "nodes", "no"), ("create", "pods/exec", "no"), ("get", "services", "yes"),
        ("list", "services", "no"), ("list", "endpointslices.discovery.k8s.io", "yes"),
        ("update", "services", "no")]


def test_the_agents_token_as_its_pod_gets_it_can_do_what_rbac_allows(realnode: Any) -> None:
    pod = agent_pod(realnode)["metadata"]["name"]
    token = realnode.kubectl("exec", "-n", "pktpath-system", pod, "--", "cat",
                             "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout.strip()
    who = realnode.kubectl("auth", "whoami", "--token", token, "-o",
                           "jsonpath={.status.userInfo.username}").stdout
    assert who == "system:serviceaccount:pktpath-system:pktpath-agent"
    answers = []
    for verb, resource, _ in RBAC:
        args = [verb, resource.split("/")[0], "-A"]
        if "/" in resource:
            args.append(f"--subresource={resource.split('/')[1]}")
        done = realnode.kubectl("auth", "can-i", *args, "--token", token, check=False)
        answers.append((verb, resource, done.stdout.strip()))
    assert answers == RBAC
