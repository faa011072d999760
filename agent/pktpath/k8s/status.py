"""The PacketTrace status: each node's part, and the merged path computed from all parts.

Pure functions over dicts, so any agent can compute the same merged view from the same parts.

Order of a probe's hops across nodes: requests first, from the source pod's node to the
destination pod's node (nodes in between by time), then replies the other way; within a node,
by kernel time. Times between nodes come from wall clocks (kernel monotonic time plus the
node's offset to CLOCK_REALTIME), so they are as good as the nodes' clock synchronisation.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pktpath.core.hopstats import Place, Table
from pktpath.k8s.kube import PodInfo, ServiceInfo, now_rfc3339
from pktpath.k8s.spec import TraceSpec

STALE_AFTER = 15.0  # seconds past the deadline after which a Running part counts as failed
MAX_HOPS_PER_NODE = 1000


@dataclass(frozen=True)
class Ends:
    """The two ends of a trace, resolved: addresses, and pods where they are pods."""

    source_ip: str
    destination_ip: str
    source_pod: PodInfo | None = None
    destination_pod: PodInfo | None = None
    service: ServiceInfo | None = None  # the destination is this Service's ClusterIP
    port: int = 0  # the destination port (a Service's: shown with it)

    @property
    def destinations(self) -> frozenset[str]:
        """Addresses a request goes to: the destination's, and a Service's ready endpoints'
        (kube-proxy translates the ClusterIP to one of them)."""
        return frozenset((self.destination_ip, *(self.service.ready if self.service else ())))

    @property
    def service_label(self) -> str:
        """``Service shop/db:5432``, empty without one."""
        return f"Service {self.service.ref}:{self.port}" if self.service else ""

    @property
    def source_node(self) -> str | None:
        """Node of the source pod."""
        return self.source_pod.node if self.source_pod else None

    @property
    def destination_node(self) -> str | None:
        """Node of the destination pod."""
        return self.destination_pod.node if self.destination_pod else None

    def label(self, pod: PodInfo | None, ip: str) -> str:
        """How an end is shown: ``shop/web-0 (10.244.1.7)``, ``svc shop/db:5432
        (10.96.0.12)`` or the IP."""
        if self.service and ip == self.destination_ip and pod is None:
            return f"svc {self.service.ref}:{self.port} ({ip})"
        return f"{pod.ref} ({ip})" if pod else ip


def duration_text(ns: int) -> str:
    """A time in the unit that reads best: ``0.214ms``, ``1.52s``."""
    if abs(ns) >= 1_000_000_000:
        return f"{ns / 1e9:.3g}s"
    return f"{ns / 1e6:.3f}ms"


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time, or None."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _rank(node: str, ends: Ends) -> int:
    if node == ends.source_node:
        return 0
    if node == ends.destination_node:
        return 2
    return 1


def order_probe(hops: Iterable[Mapping[str, Any]], ends: Ends) -> list[dict[str, Any]]:
    """The hops of one probe in path order, each with since/sinceNs from its first hop.

    A place seen twice for one probe (a probe sent again after an agent restart) counts once:
    its first sighting.
    """
    first_seen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for hop in sorted(hops, key=lambda h: h["timeNs"]):
        first_seen.setdefault((*_position(hop), hop.get("hook")), hop)
    hops = list(first_seen.values())
    requests = sorted((h for h in hops if h.get("direction") == "request"),
                      key=lambda h: (_rank(h["node"], ends), h["timeNs"]))
    replies = sorted((h for h in hops if h.get("direction") == "reply"),
                     key=lambda h: (2 - _rank(h["node"], ends), h["timeNs"]))
    ordered = [dict(h) for h in requests + replies]
    if ordered:
        first = ordered[0]["timeNs"]
        for hop in ordered:
            hop["sinceNs"] = hop["timeNs"] - first
            hop["since"] = duration_text(hop["sinceNs"])
            hop.pop("timeNs", None)
    return ordered


def _position(hop: Mapping[str, Any]) -> tuple[str, int, str, str, bool]:
    return (hop["node"], hop.get("netnsInode", 0), hop["interface"], hop["direction"],
            bool(hop.get("drop")))


@dataclass
class Merged:
    """The merged view, ready to be applied under the merge field manager."""

    status: dict[str, Any]
    finished: bool


def merge(body: Mapping[str, Any], spec: TraceSpec | None, ends: Ends | None,
          invalid: str | None = None, now: float | None = None) -> Merged:
    """The status fields computed from all nodes' parts (or the failure of an invalid spec)."""
    status = body.get("status") or {}
    now = datetime.datetime.now(datetime.UTC).timestamp() if now is None else now
    started = status.get("startTime") or now_rfc3339()
    out: dict[str, Any] = {"startTime": started}
    if invalid is not None or spec is None or ends is None:
        out.update(phase="Failed", result=f"invalid: {invalid}", hops=0,
                   completionTime=status.get("completionTime") or now_rfc3339(),
                   conditions=[_condition("Valid", "False", "InvalidSpec", invalid or ""),
                               _condition("Complete", "True", "InvalidSpec", invalid or "")])
        return Merged(out, True)
    out["from"] = ends.label(ends.source_pod, ends.source_ip)
    out["to"] = ends.label(ends.destination_pod, ends.destination_ip)
    parts = list(status.get("nodes") or [])
    deadline = (parse_time(started) or now) + spec.timeout
    phases = []
    failures = []
    for part in parts:
        phase = part.get("phase", "Running")
        if phase == "Running" and now > deadline + STALE_AFTER:
            phase = "Failed"
            failures.append(f"node {part['node']} did not finish (its agent is gone?)")
        elif phase == "Failed":
            failures.append(f"node {part['node']}: {part.get('message', 'failed')}")
        phases.append(phase)

    by_probe: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for part in parts:
        for hop in part.get("hops") or []:
            by_probe[int(hop.get("probe", 0))].append(hop)
    ordered = {probe: order_probe(hops, ends) for probe, hops in sorted(by_probe.items())}
    path = max(ordered.values(), key=len, default=[])
    sent = sum(int(p.get("probesSent", 0)) for p in parts)
    out["path"] = path
    out["hops"] = len(path)
    out["summary"] = _summary(path, table_of(status))
    out["result"] = _result(spec, ends, ordered, path, sent)
    # probes were sent and not one was answered: the packets did not get through
    undelivered = bool(spec.probe_count) and sent > 0 and _replies(ends, ordered) == 0

    reason = "Tracing"
    if failures:
        out["phase"], reason = "Failed", "NodeFailed"
    elif not parts:
        out["phase"] = "Pending"
    elif all(p == "Done" for p in phases):
        out["phase"], reason = ("Failed", "NotDelivered") if undelivered else ("Succeeded",
                                                                               "Finished")
    else:
        out["phase"] = "Running"
    finished = out["phase"] in ("Succeeded", "Failed")
    complete = _condition("Complete", "True" if finished else "False", reason,
                          "; ".join(failures) or out["result"])
    out["conditions"] = [_condition("Valid", "True", "Resolved",
                                    f"tracing {out['from']} -> {out['to']}"), complete]
    if finished:
        out["completionTime"] = status.get("completionTime") or now_rfc3339()
    return Merged(out, finished)


def table_of(status: Mapping[str, Any]) -> Table:
    """The mtr table of a PacketTrace status: latency is the time since the probe's first hop."""
    table = Table()
    sent = sum(int(part.get("probesSent", 0)) for part in status.get("nodes") or [])
    by_probe: dict[int, list[Mapping[str, Any]]] = {}
    for part in status.get("nodes") or []:
        for hop in part.get("hops") or []:
            by_probe.setdefault(int(hop.get("probe", 0)), []).append(hop)
    for probe in range(1, max([sent, *by_probe]) + 1):
        table.probe_sent(probe, 0)
    for probe, hops in by_probe.items():
        first = min(h["timeNs"] for h in hops)
        for hop in hops:
            table.seen(probe, _place(hop), hop["timeNs"] - first, drop_reason=hop.get("dropReason"),
                       explain=hop.get("explain", ""))
    return table


def _place(hop: Mapping[str, Any]) -> Place:
    return Place(hop.get("netns", "?"), hop.get("interface", "-"), hop.get("direction", "?"),
                 int(hop.get("netnsInode", 0)), hop.get("node", ""))


def _summary(path: list[dict[str, Any]], table: Table) -> list[dict[str, Any]]:
    """mtr's columns per hop of the path, from the statistics table kubectl pktpath shows."""
    rows = []
    for number, hop in enumerate(path, 1):
        row = table.rows.get(_place(hop))
        if row is None:
            continue
        stats = row.stats(table.due(None), table.sent)
        seen = len(row.times)
        times = {column: duration_text(round(stats[ms] * 1e6)) if seen else ""
                 for column, ms in (("avg", "Avg"), ("best", "Best"), ("worst", "Wrst"))}
        rows.append({
            "hop": number, "node": hop["node"], "netns": hop["netns"],
            "interface": hop["interface"], "direction": hop["direction"],
            "seen": seen, "sent": max(stats["Snt"], seen), "loss": f"{stats['Loss%']:.1f}%",
            **times,
        })
    return rows


def _replies(ends: Ends, ordered: Mapping[int, list[dict[str, Any]]]) -> int:
    """How many probes were answered: a reply seen (at the source pod, when it is a pod)."""
    source = ends.source_pod.ref if ends.source_pod else None
    return sum(any(h["direction"] == "reply" and (source is None or h.get("pod") == source)
                   for h in hops) for hops in ordered.values())


def _result(spec: TraceSpec, ends: Ends, ordered: Mapping[int, list[dict[str, Any]]],
            path: list[dict[str, Any]], sent: int) -> str:
    if not spec.probe_count:
        return f"{sum(len(h) for h in ordered.values())} hops of {len(ordered)} packets seen"
    if not path:
        return "nothing seen yet" if not sent else f"no hop seen of {sent} probes"
    replies = _replies(ends, ordered)
    total = max(sent, len(ordered))
    drop = next((h for h in path if h.get("drop")), None)
    empty = (f"{ends.service_label} has no ready endpoints; "
             if ends.service and not ends.service.ready else "")
    if drop is not None and replies < total:
        explain = f" ({drop['explain']})" if drop.get("explain") else ""
        return (f"{empty}dropped at {drop['node']} {drop['netns']} {drop['interface']} "
                f"({drop['direction']}): {drop['dropReason']}{explain}")
    via = ""
    if ends.service:
        chosen = sorted({h["endpoint"] for hops in ordered.values() for h in hops
                         if h.get("endpoint")})
        via = f" via {ends.service_label}" + (f" to {', '.join(chosen)}" if chosen else "")
    if replies == total:
        return f"delivered{via} ({replies}/{total} probes answered)"
    if replies:
        return f"{replies}/{total} probes answered{via}"
    last = path[-1]
    return (f"{empty}no reply: last seen at {last['node']} {last['netns']} {last['interface']} "
            f"({last['direction']})")


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message[:1024],
            "lastTransitionTime": now_rfc3339()}


def node_part(node: str, phase: str, hops: list[dict[str, Any]], *, probes_sent: int = 0,
              probes_done: bool = False, seen: int = 0, lost: int = 0, message: str = "",
              hook_type: str = "", started_at: str = "") -> dict[str, Any]:
    """This node's entry of status.nodes."""
    part: dict[str, Any] = {"node": node, "phase": phase, "hops": hops[:MAX_HOPS_PER_NODE],
                            "probesSent": probes_sent, "probesDone": probes_done,
                            "eventsSeen": seen, "eventsLost": lost}
    for key, value in (("message", message), ("hookType", hook_type), ("startedAt", started_at)):
        if value:
            part[key] = value
    return part
