"""Which network namespaces belong to this node, and which pod each one is.

The node's own namespace is given (the host's, or a simulated node's); pod namespaces are found
where they are pinned (/run/netns bind mounts, /proc/<pid>/ns/net) and matched to this node's
pods by the addresses on their interfaces.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from pktpath.host import netns
from pktpath.k8s.kube import PodInfo

log = logging.getLogger("pktpath.agent")


@dataclass(frozen=True)
class Place:
    """Where a hop happened, in the words of the cluster."""

    node: str
    inode: int
    pod: str | None = None  # namespace/name
    name: str = ""  # what to show: the pod, "host", an ip netns name, or the inode

    @property
    def netns(self) -> str:
        """Display name of the namespace."""
        return self.pod or self.name or str(self.inode)


def addresses(path: str) -> set[str]:
    """The IP addresses on the interfaces of the namespace at path.

    Read on a thread that entered the namespace, not with pyroute2's NetNS: NetNS forks a
    helper, and a process forked from the agent inherits asyncio's signal wake-up socket, so
    the SIGTERM that ends the helper would reach the agent's event loop and stop the agent.
    """

    def read() -> set[str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}

    return netns.run_in(path, read)


class NodeNamespaces:
    """The namespaces of one node: its own and its pods'. Thread-safe."""

    def __init__(self, node: str, host_path: str) -> None:
        self.node = node
        self.host = netns.Netns(netns.inode_of(host_path), host_path, "host")
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # sessions and the drop watch refresh from threads
        self._addresses: dict[int, tuple[netns.Netns, set[str]]] = {}
        self._pods: dict[int, tuple[PodInfo, netns.Netns]] = {}

    def refresh(self, pods: list[PodInfo]) -> None:
        """Match this node's pods to namespaces (rescanning namespaces not seen before)."""
        with self._refreshing:
            self._refresh(pods)

    def _refresh(self, pods: list[PodInfo]) -> None:
        known = netns.known()
        for inode, ns in known.items():
            if inode not in self._addresses and inode != self.host.inode:
                try:
                    self._addresses[inode] = (ns, addresses(ns.path))
                except Exception as exc:  # gone, or not enterable
                    log.debug("cannot read addresses of %s: %s", ns.path, exc)
        for gone in set(self._addresses) - set(known):
            del self._addresses[gone]
        matched: dict[int, tuple[PodInfo, netns.Netns]] = {}
        for pod in pods:
            found = [(inode, ns) for inode, (ns, addrs) in self._addresses.items()
                     if addrs & set(pod.ips)]
            if len(found) > 1:
                log.warning("pod %s: %d network namespaces carry its IP (%s); a leaked one may "
                            "be among them", pod.ref, len(found),
                            ", ".join(ns.path for _, ns in found))
            for inode, ns in found:
                matched[inode] = (pod, ns)
        with self._lock:
            self._pods = matched

    def inodes(self) -> set[int]:
        """The namespace inodes of this node."""
        with self._lock:
            return {self.host.inode, *self._pods}

    def place(self, inode: int) -> Place | None:
        """The place for a namespace inode, or None when it is not this node's."""
        if inode == self.host.inode:
            return Place(self.node, inode, None, "host")
        with self._lock:
            found = self._pods.get(inode)
        return Place(self.node, inode, found[0].ref, found[0].ref) if found else None

    def path_of(self, pod: PodInfo) -> str | None:
        """A path to the namespace of pod, if it is on this node."""
        with self._lock:
            for found, ns in self._pods.values():
                if found.ref == pod.ref:
                    return ns.path
        return None
