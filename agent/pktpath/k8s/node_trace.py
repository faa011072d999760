"""One PacketTrace on one node: trace, probe, and write this node's part of the status.

A session runs on its own thread. It attaches the tracing core filtered on the trace's two
addresses and on this node's namespaces, sends the probes when the source pod is here, writes
its part (batched, at most every WRITE_EVERY seconds) and the merged view, and ends at the
timeout, when the probes are done (here or, seen in the status, on the source pod's node), or
at once when stopped (the trace was deleted, or the agent is shutting down).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from pktpath.core.expression import compile_expression
from pktpath.core.filters import TraceFilter, probe_filter
from pktpath.core.symbols import Symbols
from pktpath.core.tracer import Hop, Tracer
from pktpath.host.probing import Prober, probe_identity
from pktpath.k8s.kube import MERGE_MANAGER, Conflict, Kube, now_rfc3339
from pktpath.k8s.node_tracer import NodeTracer, Subscription
from pktpath.k8s.podmap import NodeNamespaces
from pktpath.k8s.spec import TraceSpec
from pktpath.k8s.status import Ends, merge, node_part, parse_time
from pktpath.view.hops import Rewrites, status_object

log = logging.getLogger("pktpath.agent")

WRITE_EVERY = 0.5  # seconds between status writes while hops come in
REPLY_WAIT = 1.0  # seconds to wait for the last probe's reply
GRACE = 1.0  # seconds a non-probing node keeps tracing after the probes are done
PEER_WAIT = 10.0  # seconds the first probe waits for the destination pod's node to trace
REFRESH_EVERY = 2.0  # seconds between looks for new pods on this node
SESSION_RING_BYTES = 1 << 20  # a trace's filter is narrow: 1 MiB holds ~2700 events
# a trace follows few flows, and a node has at most a few hundred namespaces: smaller maps
# than the CLI's defaults keep each running trace's kernel memory (charged to the agent's pod)
# at ~1.4 MiB instead of ~3 MiB
SESSION_MAP_ENTRIES = {"tracked": 1024, "netns_set": 1024}
DEFAULT_MAX_TRACES = 20
FINAL_RETRY_SECONDS = 300.0  # how long the last status write is retried while the API is away


class Counters(Protocol):
    """What a session reports to the agent's metrics."""

    def add(self, name: str, value: int = 1) -> None: ...


@dataclass
class AgentContext:
    """What every session of an agent shares."""

    kube: Kube
    node: str
    namespaces: NodeNamespaces
    metrics: Counters
    hook_type: str = "auto"
    symbols: Symbols | None = None  # /proc/kallsyms, read once for every session
    reasons: dict[int, str] | None = None  # the kernel's drop reasons, read once
    # one BPF object loads at a time: each load parses the kernel's BTF (megabytes), and 50
    # traces starting together would hold 50 copies at once
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    # how many traces run at once; the others wait for a slot (each running trace holds BPF
    # maps and a ring buffer: the pod's memory limit bounds how many fit)
    slots: threading.Semaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(DEFAULT_MAX_TRACES))
    # the node's one program set, shared by the traces without a tcpdump expression (None:
    # every trace loads its own)
    node_tracer: NodeTracer | None = None


def manager(node: str) -> str:
    """The field manager of a node's part of the status."""
    return f"pktpath-agent-{node}"


def write_merged(ctx: AgentContext, namespace: str, name: str, spec: TraceSpec | None,
                 ends: Ends | None, invalid: str | None = None) -> dict[str, Any] | None:
    """Recompute and apply the merged view from the latest object; retry on conflicts."""
    for _ in range(8):
        body = ctx.kube.get_trace(namespace, name)
        if body is None:
            return None
        merged = merge(body, spec, ends, invalid)
        try:
            result = ctx.kube.apply_status(namespace, name, merged.status, MERGE_MANAGER,
                                           body["metadata"]["resourceVersion"])
        except Conflict:
            continue
        ctx.metrics.add("status_writes")
        before = (body.get("status") or {}).get("phase")
        if merged.status["phase"] == "Running" and before in (None, "Pending"):
            ctx.kube.event(body, "Started", f"tracing {merged.status['from']} -> "
                                            f"{merged.status['to']}")
        if merged.finished and before not in ("Succeeded", "Failed"):
            reason = "Finished" if merged.status["phase"] == "Succeeded" else "Failed"
            ctx.kube.event(body, reason, f"{merged.status['phase']}: {merged.status['result']}",
                           "Normal" if reason == "Finished" else "Warning")
        return result
    log.warning("gave up merging the status of %s/%s after repeated conflicts", namespace, name)
    return None


class TraceSession(threading.Thread):
    """One PacketTrace traced on this node."""

    def __init__(self, ctx: AgentContext, body: Mapping[str, Any], spec: TraceSpec, ends: Ends,
                 resume: Mapping[str, Any] | None = None) -> None:
        meta = body["metadata"]
        super().__init__(name=f"trace:{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx, self.spec, self.ends = ctx, spec, ends
        self.namespace, self.trace_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.stop_flag = threading.Event()
        self._body = body
        self._body_lock = threading.Lock()
        self._resume = dict(resume or {})
        self.hops: list[dict[str, Any]] = list(self._resume.get("hops") or [])
        self.probes_sent = int(self._resume.get("probesSent", 0))
        self.started_at = self._resume.get("startedAt") or now_rfc3339()
        self._clock_offset = time.time_ns() - time.monotonic_ns()  # kernel time -> wall time
        self.icmp_ident = int(self.uid.replace("-", "")[:8], 16) & 0xFFFF  # of its probes
        self._flows: dict[tuple[Any, ...], int] = {}
        self._drop_reported = False
        self._rewrites = Rewrites()
        self._pods_by_ip: dict[str, str] = {}  # a translated destination's pod, asked once
        # on the node's program set, the filter its own programs would have had: its protocol
        # and port are checked here
        self._wants: TraceFilter | None = None
        self.prober: Prober | None = None

    # -- called from the operator's threads ----------------------------------------------

    def observe(self, body: Mapping[str, Any]) -> None:
        """A newer version of the trace arrived."""
        with self._body_lock:
            self._body = body

    def stop(self) -> None:
        """End at once (no more writes)."""
        self.stop_flag.set()

    # -- the session ---------------------------------------------------------------------

    def run(self) -> None:
        if not self.ctx.slots.acquire(blocking=False):
            log.info("trace %s/%s waits: the most traces this agent runs at once are running",
                     self.namespace, self.trace_name)
            while not self.ctx.slots.acquire(timeout=0.5):
                if self.stop_flag.is_set():
                    return
        try:
            self._run_in_slot()
        finally:
            self.ctx.slots.release()

    def _run_in_slot(self) -> None:
        self.ctx.metrics.add("traces_running")
        try:
            self._run()
        except Exception as exc:
            log.exception("trace %s/%s failed on node %s", self.namespace, self.trace_name,
                          self.ctx.node)
            if not self.stop_flag.is_set():
                self._write_part("Failed", message=f"{type(exc).__name__}: {exc}")
                write_merged(self.ctx, self.namespace, self.trace_name, self.spec, self.ends)
        finally:
            self.ctx.metrics.add("traces_running", -1)
            if self.prober:
                self.prober.close()

    def _filter(self) -> TraceFilter:
        hosts = tuple(ipaddress.ip_address(ip) for ip in
                      {self.ends.source_ip, self.ends.destination_ip})
        expression = compile_expression(self.spec.filter) if self.spec.filter else None
        return probe_filter(hosts, self.spec.protocol, self.spec.port, netns_set=True,
                            expression=expression)

    def _run(self) -> None:
        ctx = self.ctx
        status = self._body.get("status") or {}
        deadline = (parse_time(status.get("startTime")) or time.time()) + self.spec.timeout
        self._refresh_namespaces()
        shared = None
        if ctx.node_tracer is not None and not self.spec.filter:
            shared = ctx.node_tracer.subscribe({self.ends.source_ip, *self.ends.destinations})
        if shared is not None:
            self._wants = self._filter()  # what its own programs would have tested
            try:  # the node tracer counts its losses in the metrics, once
                self._trace(shared, deadline, shared.report.attached[0].hook_type or "")
            finally:
                shared.close()
            return
        tracer = Tracer(self._filter(), hook_type=ctx.hook_type, ring_bytes=SESSION_RING_BYTES,
                        symbols=ctx.symbols, reasons=ctx.reasons,
                        map_entries=SESSION_MAP_ENTRIES)
        with ctx.load_lock:
            tracer.open()
        try:
            tracer.set_netns(ctx.namespaces.inodes())
            hook_type = tracer.report.attached[0].hook_type or ""
            ctx.metrics.add("programs_attached", len(tracer.report.attached))
            try:
                self._trace(tracer, deadline, hook_type)
            finally:
                ctx.metrics.add("programs_attached", -len(tracer.report.attached))
                ctx.metrics.add("events_lost", tracer.lost())
        finally:
            tracer.close()

    def _trace(self, tracer: Tracer | Subscription, deadline: float, hook_type: str) -> None:
        ctx = self.ctx
        if self._write_part("Running", hook_type=hook_type) is None:
            return  # deleted meanwhile
        if not self._resume:
            places = len(ctx.namespaces.inodes())
            ctx.kube.event(self._body, "NodeJoined",
                           f"node {ctx.node} is tracing ({places} network namespaces)")
        write_merged(ctx, self.namespace, self.trace_name, self.spec, self.ends)
        probing = self._start_probing(deadline)
        finish_at: float | None = None
        last_write = last_refresh = time.monotonic()
        dirty = False
        done = threading.Event()

        def record(hop: Hop) -> None:
            nonlocal dirty
            dirty |= self._record(hop)

        def tick() -> int:
            nonlocal finish_at, last_write, last_refresh, dirty
            now = time.monotonic()
            if self.stop_flag.is_set() or time.time() >= deadline:
                done.set()
                return 0
            if finish_at is None:
                finish_at = self._finish_time(probing)
            elif now >= finish_at:
                done.set()
                return 0
            if now - last_refresh >= REFRESH_EVERY:
                last_refresh = now
                try:
                    if self._refresh_namespaces():
                        tracer.set_netns(ctx.namespaces.inodes())
                except (ApiException, HTTPError, OSError):
                    ctx.metrics.add("api_errors")  # the API server is away: keep tracing
            if dirty and now - last_write >= WRITE_EVERY:
                last_write = now
                if self._publish("Running", hook_type, tracer, retry_for=0):
                    dirty = False  # else the API server is away: try again next time
            return 100

        tracer.follow(done, record, tick)  # ends with what is left in the ring buffer
        if self.stop_flag.is_set():
            return
        self._publish("Done", hook_type, tracer, retry_for=FINAL_RETRY_SECONDS)

    def _publish(self, phase: str, hook_type: str, tracer: Tracer | Subscription,
                 retry_for: float) -> bool:
        """Write this node's part and the merged view; while the API server cannot be reached,
        retry (with back-off) for up to retry_for seconds. True when written."""
        give_up = time.monotonic() + retry_for
        delay = 0.5
        while True:
            try:
                self._write_part(phase, hook_type=hook_type, tracer=tracer)
                write_merged(self.ctx, self.namespace, self.trace_name, self.spec, self.ends)
                return True
            except (ApiException, HTTPError, OSError) as exc:
                self.ctx.metrics.add("api_errors")
                log.warning("writing the status of %s/%s failed (%s); %s", self.namespace,
                            self.trace_name, type(exc).__name__,
                            "retrying" if time.monotonic() < give_up else "later")
            if time.monotonic() >= give_up or self.stop_flag.wait(delay):
                return False
            delay = min(delay * 2, 5.0)

    def _parts(self) -> list[Mapping[str, Any]]:
        """The nodes' parts of the newest version of the trace seen."""
        with self._body_lock:
            return list((self._body.get("status") or {}).get("nodes") or [])

    def _finish_time(self, probing: threading.Thread | None) -> float | None:
        """When to stop, once that is known: after the probes and their replies."""
        if not self.spec.probe_count:
            return None
        if probing is not None:
            return None if probing.is_alive() else time.monotonic() + REPLY_WAIT
        source = self.ends.source_node
        if any(p.get("node") == source and p.get("probesDone") for p in self._parts()):
            return time.monotonic() + GRACE
        return None

    # -- probes --------------------------------------------------------------------------

    def _start_probing(self, deadline: float) -> threading.Thread | None:
        pod = self.ends.source_pod
        if not self.spec.probe_count or pod is None or pod.node != self.ctx.node:
            return None
        path = self.ctx.namespaces.path_of(pod)
        if path is None:
            raise RuntimeError(f"the network namespace of source pod {pod.ref} was not found "
                               f"on node {self.ctx.node}")
        self.prober = Prober(path, self.ends.destination_ip, self.spec.protocol, self.spec.port,
                             ident=self.icmp_ident)
        thread = threading.Thread(target=self._probe, args=(deadline,), daemon=True,
                                  name=f"probe:{self.trace_name}")
        thread.start()
        return thread

    def _destination_tracing(self) -> bool:
        """Whether the destination pod's node, when it is another, has reported (tracing, or
        failed): a probe sent before it traces would cross it unseen."""
        node = self.ends.destination_node
        if node is None or node == self.ctx.node:
            return True
        return any(p.get("node") == node for p in self._parts())

    def _probe(self, deadline: float) -> None:
        assert self.prober is not None
        wait = min(PEER_WAIT, (deadline - time.time()) / 2)
        give_up = time.monotonic() + wait
        while not self._destination_tracing():
            if time.monotonic() >= give_up:
                log.warning("trace %s/%s: node %s has not started tracing in %.0f s; probing "
                            "anyway", self.namespace, self.trace_name,
                            self.ends.destination_node, wait)
                break
            if self.stop_flag.wait(0.1):
                return
        while self.probes_sent < self.spec.probe_count and not self.stop_flag.is_set():
            if time.time() >= deadline:
                break
            self.prober.send(self.probes_sent + 1)
            self.probes_sent += 1
            self.ctx.metrics.add("probes_sent")
            if self.probes_sent < self.spec.probe_count:
                self.stop_flag.wait(self.spec.probe_interval)

    # -- hops ----------------------------------------------------------------------------

    def _record(self, hop: Hop) -> bool:
        """Keep a hop that belongs to this trace on this node; True when kept."""
        self.ctx.metrics.add("events_seen")
        place = self.ctx.namespaces.place(hop.event.netns)
        identity = self._identity(hop)
        if place is None or identity is None:
            return False
        probe, direction = identity
        rewrite = self._rewrites(hop)
        if hop.fate is not None and not hop.fate.drop:
            return False  # a free that is part of delivery: not a hop
        translated: dict[str, str] = {}
        if rewrite is not None:
            translated["translation"] = rewrite.text
            if "DNAT" in rewrite.kind and direction == "request" and hop.packet.dst:
                translated["endpoint"] = self._pod_name(hop.packet.dst)
        self.hops.append({
            "node": place.node, **({"pod": place.pod} if place.pod else {}),
            **status_object(hop, place.netns), **translated, "direction": direction,
            "probe": probe, "timeNs": hop.event.time_ns + self._clock_offset,
        })
        if hop.fate and not self._drop_reported:
            self._drop_reported = True
            where = f"{place.node} {place.netns} {hop.event.ifname or '-'}"
            self.ctx.kube.event(self._body, "Dropped", f"dropped at {where}: {hop.fate.reason}"
                                + (f" ({hop.fate.explain})" if hop.fate.explain else ""),
                                "Warning")
        return True

    def _wanted(self, hop: Hop) -> bool:
        """The trace's protocol and port (what its own programs would test in the kernel); a
        packet of a connection followed through NAT keeps its place whatever its ports."""
        p, wants = hop.packet, self._wants
        if wants is None or p.ip_proto != wants.proto:
            return False
        return not wants.port or wants.port in (p.sport, p.dport) or bool(hop.event.conn)

    def _pod_name(self, ip: str) -> str:
        """The pod with ip (namespace/name), else the ip: a Service's chosen endpoint."""
        if ip not in self._pods_by_ip:
            try:
                pod = self.ctx.kube.pod_with_ip(ip)
            except (ApiException, HTTPError, OSError):
                self.ctx.metrics.add("api_errors")
                return ip  # asked again next time
            self._pods_by_ip[ip] = pod.ref if pod else ip
        return self._pods_by_ip[ip]

    def _identity(self, hop: Hop) -> tuple[int, str] | None:
        """(probe or packet number, direction) of a hop, or None when it is not ours.

        Behind a Service, the destination is its ClusterIP until kube-proxy translates it to
        an endpoint's address: either one counts, as does any packet of the connection the
        kernel follows through the translation."""
        p = hop.packet
        if self._wants is not None and not self._wanted(hop):
            return None
        ours = self.ends.destinations
        if p.src == self.ends.source_ip and (p.dst in ours or hop.event.conn):
            direction = "request"
        elif p.dst == self.ends.source_ip and (p.src in ours or hop.event.conn):
            direction = "reply"
        else:
            return None
        if self.spec.probe_count and (self.spec.protocol == "icmp" or self.prober is not None):
            # ICMP probes are known anywhere by identifier; UDP/TCP ones by source port, which
            # only the sending node knows
            sports = self.prober.sports if self.prober is not None else {}
            found = probe_identity(p, self.spec.protocol, self.icmp_ident, sports)
            return found if found is not None and found[1] == direction else None
        if p.icmp_seq is not None:
            return p.icmp_seq, direction
        flow = (p.proto, *sorted([(p.src, p.sport), (p.dst, p.dport)], key=str))
        return self._flows.setdefault(flow, len(self._flows) + 1), direction

    # -- status --------------------------------------------------------------------------

    def _refresh_namespaces(self) -> bool:
        """Look for this node's pods again; True when the namespace set changed."""
        before = self.ctx.namespaces.inodes()
        self.ctx.namespaces.refresh(self.ctx.kube.pods_on_node(self.ctx.node))
        return self.ctx.namespaces.inodes() != before

    def _write_part(self, phase: str, *, message: str = "", hook_type: str = "",
                    tracer: Tracer | Subscription | None = None) -> dict[str, Any] | None:
        seen = lost = 0
        if tracer is not None:
            counters = tracer.counters()
            seen, lost = sum(counters.values()), tracer.lost()
        done = self.prober is not None and self.probes_sent >= self.spec.probe_count
        part = node_part(self.ctx.node, phase, self.hops, probes_sent=self.probes_sent,
                         probes_done=done or (phase == "Done" and self.prober is not None),
                         seen=seen, lost=lost, message=message, hook_type=hook_type,
                         started_at=self.started_at)
        result = self.ctx.kube.apply_status(self.namespace, self.trace_name, {"nodes": [part]},
                                            manager(self.ctx.node))
        self.ctx.metrics.add("status_writes")
        if result is not None:
            self.observe(result)
        return result
