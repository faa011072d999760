"""The agent's operator: kopf watches PacketTraces and hands each one to a session.

Every node's agent handles the same PacketTrace, so kopf keeps no state in the object: the
handler is a watching (``on.event``) handler (no progress or diff-base annotations, no
finalizer), peering is off (standalone), and each agent writes only its own part of the status
under its own field manager. An agent restarted mid-trace finds its part still Running and
resumes it until the trace's timeout, or closes it if the timeout has passed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pktpath.core.errors import UsageError
from pktpath.core.expression import compile_expression
from pktpath.core.libbpf import Libbpf
from pktpath.core.symbols import Symbols, drop_reasons
from pktpath.k8s.drops import DropSettings, NodeDrops
from pktpath.k8s.kube import GROUP, PLURAL, VERSION, Kube, PodInfo, ServiceInfo
from pktpath.k8s.metrics import Metrics, serve
from pktpath.k8s.node_trace import (
    DEFAULT_MAX_TRACES,
    AgentContext,
    TraceSession,
    manager,
    write_merged,
)
from pktpath.k8s.node_tracer import NodeTracer
from pktpath.k8s.podmap import NodeNamespaces
from pktpath.k8s.spec import Endpoint, SpecError, TraceSpec, parse_spec
from pktpath.k8s.status import STALE_AFTER, Ends, node_part, parse_time

log = logging.getLogger("pktpath.agent")
FINISHED = ("Succeeded", "Failed")


class Session(Protocol):
    """What the agent needs of a trace's session (a :class:`TraceSession` thread)."""

    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def observe(self, body: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


SessionFactory = Callable[[AgentContext, Mapping[str, Any], TraceSpec, Ends,
                           Mapping[str, Any] | None], Session]


class Agent:
    """The traces of one node."""

    def __init__(self, ctx: AgentContext, session: SessionFactory = TraceSession) -> None:
        self.ctx = ctx
        self._session = session  # how a trace's session is made (tests pass a fake one)
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._traces: dict[str, Mapping[str, Any]] = {}  # latest body by uid, for the reaper

    # -- events --------------------------------------------------------------------------

    def on_event(self, event: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """Handle one watch event of a PacketTrace."""
        uid = body["metadata"]["uid"]
        if event.get("type") == "DELETED":
            self._traces.pop(uid, None)
            with self._lock:
                session = self.sessions.pop(uid, None)
            if session:
                session.stop()
                log.info("trace %s deleted: stopped on node %s", _ref(body), self.ctx.node)
            return
        self._traces[uid] = body
        with self._lock:
            session = self.sessions.get(uid)
            if session is not None:
                if session.is_alive():
                    session.observe(body)
                return  # it ran here: this is a late event of a version older than its end
        status = body.get("status") or {}
        if status.get("phase") in FINISHED:
            return
        mine = next((p for p in status.get("nodes") or [] if p.get("node") == self.ctx.node), None)
        if mine is not None and mine.get("phase") != "Running":
            return  # this node is done with it
        self._start(body, mine)

    def _start(self, body: Mapping[str, Any], mine: Mapping[str, Any] | None) -> None:
        meta = body["metadata"]
        try:
            spec = parse_spec(body.get("spec") or {}, meta["namespace"])
            ends = self.resolve(spec)
        except SpecError as exc:
            if (body.get("status") or {}).get("phase") != "Failed":
                log.info("trace %s is invalid: %s", _ref(body), exc)
                write_merged(self.ctx, meta["namespace"], meta["name"], None, None, str(exc))
                self.ctx.kube.event(body, "InvalidSpec", str(exc), "Warning")
            return
        if not self.concerns(ends):
            return
        if mine is not None:  # this agent restarted while the trace ran
            started = parse_time((body.get("status") or {}).get("startTime")) or time.time()
            if time.time() >= started + spec.timeout:
                self._close_after_restart(body, mine)
                return
            log.info("resuming trace %s after a restart", _ref(body))
        session = self._session(self.ctx, body, spec, ends, mine)
        with self._lock:
            if meta["uid"] in self.sessions:
                return  # running, or ran, in this process: never twice
            self.sessions[meta["uid"]] = session
        session.start()

    def _close_after_restart(self, body: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        part = node_part(self.ctx.node, "Done", list(mine.get("hops") or []),
                         probes_sent=int(mine.get("probesSent", 0)),
                         probes_done=bool(mine.get("probesDone")),
                         message="the agent restarted after the trace's timeout")
        self.ctx.kube.apply_status(meta["namespace"], meta["name"], {"nodes": [part]},
                                   manager(self.ctx.node))
        spec = parse_spec(body.get("spec") or {}, meta["namespace"])
        write_merged(self.ctx, meta["namespace"], meta["name"], spec, self.resolve(spec))

    # -- endpoints -----------------------------------------------------------------------

    def resolve(self, spec: TraceSpec) -> Ends:
        """Addresses and pods of both ends; SpecError when one cannot be traced."""
        source, source_ip = self._endpoint(spec.source, "source")
        if spec.destination.service:
            service = self._service(spec.destination, spec)
            assert service.cluster_ip is not None
            destination, destination_ip = None, service.cluster_ip
        else:
            service = None
            destination, destination_ip = self._endpoint(spec.destination, "destination")
        if ipaddress.ip_address(source_ip).version != ipaddress.ip_address(destination_ip).version:
            raise SpecError(f"source {source_ip} and destination {destination_ip} are not of "
                            "the same IP family")
        if spec.filter:
            try:
                compile_expression(spec.filter)
            except UsageError as exc:
                raise SpecError(f"spec.filter: {exc}") from None
        if spec.probe_count and source is None:
            raise SpecError("probes are sent from the source pod: give spec.source.pod, or "
                            "omit spec.probe to only watch")
        return Ends(source_ip, destination_ip, source, destination, service, spec.port)

    def _service(self, end: Endpoint, spec: TraceSpec) -> ServiceInfo:
        assert end.service and end.namespace
        service = self.ctx.kube.get_service(end.namespace, end.service)
        if service is None:
            raise SpecError(f"destination service {end.namespace}/{end.service} does not exist")
        if service.cluster_ip is None:
            raise SpecError(f"service {service.ref} is headless (no ClusterIP): trace to one "
                            "of its pods instead")
        if (spec.port, spec.protocol) not in service.ports:
            offered = ", ".join(f"{port}/{proto}" for port, proto in service.ports) or "none"
            raise SpecError(f"service {service.ref} has no port {spec.port}/{spec.protocol} "
                            f"(it has {offered})")
        return service

    def _endpoint(self, end: Endpoint, what: str) -> tuple[PodInfo | None, str]:
        if end.ip:
            return self.ctx.kube.pod_with_ip(end.ip), end.ip
        assert end.pod and end.namespace
        pod = self.ctx.kube.get_pod(end.namespace, end.pod)
        if pod is None:
            raise SpecError(f"{what} pod {end.namespace}/{end.pod} does not exist")
        if not pod.ips:
            raise SpecError(f"{what} pod {pod.ref} has no IP yet")
        if not pod.node:
            raise SpecError(f"{what} pod {pod.ref} is not scheduled on a node yet")
        return pod, pod.ips[0]

    def concerns(self, ends: Ends) -> bool:
        """True when this node may see the trace's packets."""
        nodes = {ends.source_node, ends.destination_node}
        return self.ctx.node in nodes or None in nodes  # an IP end: could be anywhere

    # -- upkeep --------------------------------------------------------------------------

    def reap(self) -> None:
        """Fail traces whose nodes stopped reporting long after their timeout."""
        now = time.time()
        for body in list(self._traces.values()):
            status = body.get("status") or {}
            started = parse_time(status.get("startTime"))
            if status.get("phase") != "Running" or started is None:
                continue
            try:
                spec = parse_spec(body.get("spec") or {}, body["metadata"]["namespace"])
                if now > started + spec.timeout + STALE_AFTER:
                    write_merged(self.ctx, body["metadata"]["namespace"],
                                 body["metadata"]["name"], spec, self.resolve(spec))
            except Exception as exc:
                log.warning("could not reap %s: %s", _ref(body), exc)

    def stop_all(self) -> None:
        """Stop every session (the agent is shutting down): programs detach with them."""
        with self._lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            session.stop()
        for session in sessions:
            session.join(5)


def _ref(body: Mapping[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def run(node: str, host_netns: str, listen: str, hook_type: str = "auto",
        max_traces: int = DEFAULT_MAX_TRACES, drops: DropSettings | None = None) -> int:
    """Run the agent until SIGINT or SIGTERM."""
    import kopf

    metrics = Metrics()
    kube = Kube(errors=lambda: metrics.add("api_errors"))
    ctx = AgentContext(kube, node, NodeNamespaces(node, host_netns), metrics, hook_type,
                       Symbols(), drop_reasons(Libbpf()),
                       slots=threading.BoundedSemaphore(max_traces))
    ctx.node_tracer = NodeTracer(ctx.namespaces, metrics, hook_type, ctx.symbols, ctx.reasons,
                                 ctx.load_lock)
    agent = Agent(ctx)
    watch = None
    if drops is not None:  # the drop watch: on unless the chart turns it off
        watch = NodeDrops(node, ctx.namespaces, metrics, kube,
                          lambda: ctx.namespaces.refresh(kube.pods_on_node(node)),
                          ctx.reasons or {}, drops)
        watch.start()
        # attached before the agent says it is ready: no drop after that is missed
        if not watch.ready.wait(60):
            log.warning("the drop watch is not attached after 60 s; starting without it")
    ready = threading.Event()
    server = serve(listen, metrics, ready)
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # every node's agent handles every trace
        settings.scanning.disabled = True  # no CRD or namespace watching: no RBAC for them
        settings.posting.enabled = False  # events are the agent's own, not kopf's logs
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 8

    kopf.on.login(registry=registry)(kopf.login_via_client)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def on_trace(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        try:
            agent.on_event(event, body)
        except Exception:
            metrics.add("api_errors")
            log.exception("handling %s failed", _ref(body))

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        agent.stop_all()

    stop_reaper = threading.Event()

    def reaper() -> None:
        while not stop_reaper.wait(5):
            agent.reap()

    threading.Thread(target=reaper, name="reaper", daemon=True).start()
    log.info("pktpath agent starting on node %s (host netns %s)", node, host_netns)
    try:
        asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                  ready_flag=ready))
    finally:
        stop_reaper.set()
        if watch is not None:
            watch.stop()
        agent.stop_all()
        ctx.node_tracer.close()
        server.shutdown()
    return 0
