"""The agent's drop watch: the node's drops, counted in the kernel, named by pod, exported.

Every ``period`` seconds the drop watch's totals (:mod:`pktpath.core.dropwatch`) are read;
drops in this node's namespaces (its own and its pods') are summed by (namespace, pod,
interface, reason) into ``pktpath_drops_total``. Cardinality is bounded: the first ``top``
series to drop packets (the busiest of a reading first) get their own series; every later one
is counted in the ``reason="other"`` series, so every series only grows, as a counter must.
When a pod drops at least ``event_rate`` packets a second over a reading (0: never), an Event
on the pod says where, why, and the ``kubectl pktpath`` command that traces it (at most one per
pod, place and reason every ``EVENT_EVERY`` seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pktpath.core.dropwatch import DropCounts, DropPlace, DropWatch
from pktpath.host.names import InterfaceNames
from pktpath.k8s.podmap import NodeNamespaces

log = logging.getLogger("pktpath.agent")

OTHER = ("", "", "", "other")
EVENT_EVERY = 300.0
REFRESH_PODS_EVERY = 10.0

Series = tuple[str, str, str, str]  # namespace, pod, interface, reason


class DropSink(Protocol):
    """Where the counts go: the agent's metrics."""

    def set_drops(self, node: str, series: dict[Series, int], not_counted: int) -> None: ...


class PodEvents(Protocol):
    """How an Event reaches a pod."""

    def pod_event(self, namespace: str, name: str, reason: str, message: str,
                  kind: str = "Warning") -> None: ...


@dataclass
class DropSettings:
    """The chart's dropWatch values."""

    top: int = 50  # series with their own labels
    event_rate: float = 0.0  # drops/s of one pod that make an Event; 0: no Events
    period: float = 5.0  # seconds between readings


class NodeDrops(threading.Thread):
    """Reads the drop watch and feeds the metrics and Events until stopped."""

    def __init__(self, node: str, namespaces: NodeNamespaces, sink: DropSink,
                 events: PodEvents, refresh_pods: Callable[[], None], reasons: dict[int, str],
                 settings: DropSettings, watch: Callable[[], DropWatch] = DropWatch) -> None:
        super().__init__(name="drop-watch", daemon=True)
        self.node, self.namespaces, self.sink, self.events = node, namespaces, sink, events
        self.refresh_pods, self.reasons, self.settings = refresh_pods, reasons, settings
        self._watch = watch
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.series: dict[Series, int] = {}
        self._counted: dict[DropPlace, int] = {}  # the totals already in the series
        self._interfaces = InterfaceNames()
        self._told: dict[tuple[str, str, str, str], float] = {}
        self._refreshed = 0.0
        self.error: str | None = None

    def run(self) -> None:
        try:
            with self._watch() as watch:
                # the map is new: everything in it was dropped since the watch attached
                self.sink.set_drops(self.node, {}, 0)
                self.ready.set()
                while not self.stop_flag.wait(self.settings.period):
                    now = watch.read()
                    self.tally(now, self.settings.period)
                    self.sink.set_drops(self.node, dict(self.series), now.overflow)
        except Exception as exc:  # the agent keeps tracing without it
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the drop watch stopped")
            self.ready.set()

    def stop(self) -> None:
        """End at the next reading."""
        self.stop_flag.set()

    def tally(self, now: DropCounts, seconds: float) -> None:
        """Add the drops in this node's namespaces not counted yet to the series.

        Drops in a namespace not known yet (a pod the agent has not matched, or another
        node's) stay uncounted until it is known: a new pod's first drops are not lost."""
        fresh = {place: total - self._counted.get(place, 0)
                 for place, total in now.totals.items() if total > self._counted.get(place, 0)}
        if any(p.netns and self.namespaces.place(p.netns) is None for p in fresh):
            self._refresh()
        interval: dict[Series, int] = {}
        for place, count in fresh.items():
            found = self.namespaces.place(place.netns) if place.netns else None
            if found is None:
                continue  # not this node's (or no device: nowhere to put it)
            self._counted[place] = now.totals[place]
            namespace, _, pod = (found.pod or "").partition("/")
            ifname = self._interfaces(place.netns, place.ifindex) if place.ifindex else ""
            reason = self.reasons.get(place.reason, "UNKNOWN")
            key = (namespace, pod, ifname, reason)
            interval[key] = interval.get(key, 0) + count
        for key, count in sorted(interval.items(), key=lambda kv: -kv[1]):
            if key not in self.series and len(self.series) >= self.settings.top:
                key = OTHER
            self.series[key] = self.series.get(key, 0) + count
        self._tell(interval, seconds)

    def _refresh(self) -> None:
        if time.monotonic() - self._refreshed >= REFRESH_PODS_EVERY:
            self._refreshed = time.monotonic()
            try:
                self.refresh_pods()
            except Exception as exc:  # the API server away: name them next time
                log.debug("could not list pods: %s", exc)

    def _tell(self, interval: dict[Series, int], seconds: float) -> None:
        rate = self.settings.event_rate
        if rate <= 0:
            return
        for (namespace, pod, ifname, reason), count in interval.items():
            if not pod or count / seconds < rate:
                continue
            key = (namespace, pod, ifname, reason)
            if time.monotonic() - self._told.get(key, -EVENT_EVERY) < EVENT_EVERY:
                continue
            self._told[key] = time.monotonic()
            message = (f"{count} packets dropped in {seconds:.0f} s at {ifname or 'no device'}"
                       f" on node {self.node} ({reason}). Trace them: kubectl pktpath -n "
                       f"{namespace} SOURCE-POD {pod}")
            try:
                self.events.pod_event(namespace, pod, "PacketsDropped", message)
            except Exception as exc:
                log.warning("could not record an Event on %s/%s: %s", namespace, pod, exc)


def labels(node: str, series: Series) -> dict[str, Any]:
    """The Prometheus labels of a series."""
    namespace, pod, interface, reason = series
    return {"node": node, "namespace": namespace, "pod": pod, "interface": interface,
            "reason": reason}
