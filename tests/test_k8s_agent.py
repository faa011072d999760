"""The agent's handling of PacketTrace watch events, with a fake Kube and fake sessions.

What each event does to the node's sessions and to the status, without an API server or BPF:
a new trace starts a session once, an update reaches the running session, a delete stops it,
a restarted agent resumes its Running part (or closes it after the timeout), a finished trace
is never traced again, an invalid spec fails the trace once.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from pktpath.k8s.kube import PodInfo
from pktpath.k8s.node_trace import AgentContext
from pktpath.k8s.operator import Agent
from pktpath.k8s.podmap import NodeNamespaces

WEB = PodInfo("shop", "web-0", "node-a", ("10.200.1.10",))
DB = PodInfo("shop", "db-1", "node-b", ("10.200.2.10",))
FAR = PodInfo("shop", "far-2", "node-c", ("10.200.3.10",))


def now_text(offset: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.isoformat().replace("+00:00", "Z")


class FakeKube:
    """Pods and PacketTraces in memory; status writes merged into the stored trace."""

    def __init__(self, *pods: PodInfo) -> None:
        self.pods = {(p.namespace, p.name): p for p in pods}
        self.traces: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []  # (field manager, status)
        self.events: list[tuple[str, str]] = []  # (reason, message)

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        return self.pods.get((namespace, name))

    def pods_on_node(self, node: str) -> list[PodInfo]:
        return [p for p in self.pods.values() if p.node == node]

    def pod_with_ip(self, ip: str) -> PodInfo | None:
        return next((p for p in self.pods.values() if ip in p.ips), None)

    def get_trace(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.traces.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any], manager: str,
                     resource_version: str | None = None) -> dict[str, Any] | None:
        trace = self.traces.get((namespace, name))
        if trace is None:
            return None
        self.writes.append((manager, dict(status)))
        current = trace.setdefault("status", {})
        for key, value in status.items():
            if key == "nodes":
                others = [p for p in current.get("nodes", [])
                          if p["node"] not in {n["node"] for n in value}]
                current["nodes"] = others + list(value)
            else:
                current[key] = value
        trace["metadata"]["resourceVersion"] = str(int(trace["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(trace)

    def event(self, trace: Mapping[str, Any], reason: str, message: str,
              kind: str = "Normal") -> None:
        self.events.append((reason, message))


@dataclass
class FakeSession:
    """Records what the agent asked of a session; runs nothing."""

    body: Mapping[str, Any]
    resume: Mapping[str, Any] | None
    alive: bool = False
    observed: list[Mapping[str, Any]] = field(default_factory=list)
    stopped: bool = False

    def start(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def observe(self, body: Mapping[str, Any]) -> None:
        self.observed.append(body)

    def stop(self) -> None:
        self.stopped, self.alive = True, False

    def join(self, timeout: float | None = None) -> None:
        pass


class Counters:
    def add(self, name: str, value: int = 1) -> None:
        pass


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube(WEB, DB, FAR)


@pytest.fixture
def started() -> list[FakeSession]:
    return []


@pytest.fixture
def agent(kube: FakeKube, started: list[FakeSession]) -> Agent:
    ctx = AgentContext(kube, "node-a", NodeNamespaces("node-a", "/proc/self/ns/net"),
                       Counters())  # type: ignore[arg-type]

    def session(_ctx: Any, body: Mapping[str, Any], _spec: Any, _ends: Any,
                resume: Mapping[str, Any] | None) -> FakeSession:
        made = FakeSession(body, resume)
        started.append(made)
        return made

    return Agent(ctx, session)


def trace(kube: FakeKube, name: str = "t1", source: str = "web-0", destination: str = "db-1",
          status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "pktpath.dev/v1alpha1", "kind": "PacketTrace",
            "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                         "resourceVersion": "1"},
            "spec": {"source": {"pod": source}, "destination": {"pod": destination},
                     "probe": {"count": 3}, "timeout": "30s", **spec}}
    if status is not None:
        body["status"] = status
    kube.traces[("shop", name)] = body
    return copy.deepcopy(body)


def test_a_new_trace_of_this_node_starts_one_session(agent: Agent, kube: FakeKube,
                                                     started: list[FakeSession]) -> None:
    body = trace(kube)
    agent.on_event({"type": "ADDED"}, body)
    agent.on_event({"type": "MODIFIED"}, body)
    assert [(s.body["metadata"]["name"], s.resume) for s in started] == [("t1", None)]
    assert started[0].observed == [body], "the update reached the running session"
    assert kube.writes == []


def test_a_trace_between_other_nodes_is_left_alone(agent: Agent, kube: FakeKube,
                                                   started: list[FakeSession]) -> None:
    agent.on_event({"type": "ADDED"}, trace(kube, source="db-1", destination="far-2"))
    assert started == []


def test_delete_stops_the_session(agent: Agent, kube: FakeKube,
                                  started: list[FakeSession]) -> None:
    body = trace(kube)
    agent.on_event({"type": "ADDED"}, body)
    agent.on_event({"type": "DELETED"}, body)
    assert started[0].stopped
    assert agent.sessions == {}


def test_a_trace_that_ran_here_is_never_run_again(agent: Agent, kube: FakeKube,
                                                  started: list[FakeSession]) -> None:
    body = trace(kube)
    agent.on_event({"type": "ADDED"}, body)
    started[0].alive = False  # the session finished
    agent.on_event({"type": "MODIFIED"}, body)  # a late event of an older version
    assert len(started) == 1
    assert started[0].observed == []


@pytest.mark.parametrize("status", [
    {"phase": "Succeeded"},
    {"phase": "Failed"},
    {"phase": "Running", "nodes": [{"node": "node-a", "phase": "Done"}]},
])
def test_finished_traces_and_finished_parts_start_nothing(agent: Agent, kube: FakeKube,
                                                          started: list[FakeSession],
                                                          status: dict[str, Any]) -> None:
    agent.on_event({"type": "ADDED"}, trace(kube, status={"startTime": now_text(), **status}))
    assert started == []
    assert kube.writes == []


def test_a_restarted_agent_resumes_its_running_part(agent: Agent, kube: FakeKube,
                                                    started: list[FakeSession]) -> None:
    mine = {"node": "node-a", "phase": "Running", "probesSent": 2, "hops": [{"probe": 1}]}
    body = trace(kube, status={"phase": "Running", "startTime": now_text(-5), "nodes": [mine]})
    agent.on_event({"type": "ADDED"}, body)
    assert [s.resume for s in started] == [mine]


def test_a_restarted_agent_closes_its_part_after_the_timeout(agent: Agent, kube: FakeKube,
                                                             started: list[FakeSession]) -> None:
    mine = {"node": "node-a", "phase": "Running", "probesSent": 3, "probesDone": True,
            "hops": [{"node": "node-a", "netns": "shop/web-0", "netnsInode": 1,
                      "interface": "eth0", "direction": "request", "probe": 1, "timeNs": 5}]}
    body = trace(kube, status={"phase": "Running", "startTime": now_text(-60), "nodes": [mine]})
    agent.on_event({"type": "ADDED"}, body)
    assert started == []
    manager, part = kube.writes[0]
    assert manager == "pktpath-agent-node-a"
    assert part["nodes"][0]["phase"] == "Done"
    assert part["nodes"][0]["hops"] == mine["hops"]
    assert part["nodes"][0]["message"] == "the agent restarted after the trace's timeout"
    assert kube.writes[1][0] == "pktpath-merge"


def test_an_invalid_spec_fails_the_trace_once(agent: Agent, kube: FakeKube,
                                              started: list[FakeSession]) -> None:
    body = trace(kube, destination="nobody")
    agent.on_event({"type": "ADDED"}, body)
    assert started == []
    status = kube.traces[("shop", "t1")]["status"]
    assert (status["phase"], status["result"]) == (
        "Failed", "invalid: destination pod shop/nobody does not exist")
    assert kube.events == [
        ("Failed", "Failed: invalid: destination pod shop/nobody does not exist"),
        ("InvalidSpec", "destination pod shop/nobody does not exist")]
    agent.on_event({"type": "MODIFIED"}, kube.get_trace("shop", "t1") or {})
    assert len(kube.writes) == 1, "a failed trace is not written again"
