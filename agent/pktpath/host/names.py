"""Names instead of numbers: what a network namespace inode is called, and its interfaces.

In order of preference: the pod (namespace/name) when the caller knows it, the `ip netns`
name, ``host`` for the namespace of PID 1, the container (name, else short ID, from the cgroup of
a process in it; a Kubernetes pod by its UID), ``pid:N (comm)`` of a process in it, else the
inode itself. Lookups are cached; an unknown inode triggers at most one rescan a second.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pktpath.host import netns

# the container ID inside a cgroup path, as Docker, containerd (CRI), Podman and CRI-O write it
_CGROUP_ID = re.compile(
    r"(?:docker|cri-containerd|containerd|libpod|crio|podman)[-/:]([0-9a-f]{64})(?:\.scope)?"
    r"|/docker/([0-9a-f]{64})|/([0-9a-f]{64})$")
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_]"
                      r"[0-9a-f]{12})")
RESCAN_SECONDS = 1.0


def container_of_cgroup(cgroup: str) -> tuple[str | None, str | None]:
    """(container ID, pod UID) named by the text of /proc/<pid>/cgroup; None where absent."""
    container = pod = None
    for line in cgroup.splitlines():
        path = line.rpartition(":")[2]
        found = _CGROUP_ID.search(path)
        if found and container is None:
            container = next(g for g in found.groups() if g)
        uid = _POD_UID.search(path)
        if uid and pod is None:
            pod = uid.group(1).replace("_", "-")
    return container, pod


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def describe_pid(pid: int) -> str:
    """How the namespace of a process with no better name is called: ``pid:N (comm)``."""
    comm = _read(f"/proc/{pid}/comm").strip()
    return f"pid:{pid} ({comm})" if comm else f"pid:{pid}"


@dataclass
class NetnsNames:
    """Names network namespaces by inode (see the module docstring for the order)."""

    known: Mapping[int, str] = field(default_factory=dict)  # e.g. pods the agent knows
    container_name: Callable[[str], str | None] = lambda _id: None  # ID -> name, if it can
    _names: dict[int, str] = field(default_factory=dict)
    _scanned: float = 0.0

    def __call__(self, inode: int) -> str:
        """The name of the namespace with this inode (the inode as text when nothing names it)."""
        if inode in self.known:
            return self.known[inode]
        if inode not in self._names and time.monotonic() - self._scanned >= RESCAN_SECONDS:
            self.rescan()
        return self._names.get(inode, str(inode))

    def rescan(self) -> None:
        """Look again at /run/netns and every process."""
        self._scanned = time.monotonic()
        names: dict[int, str] = {}
        for ns in netns.named():
            names.setdefault(ns.inode, ns.name or ns.path)
        host = _inode("/proc/1/ns/net")
        if host is not None:
            names.setdefault(host, "host")
        for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
            inode = _inode(f"/proc/{pid}/ns/net")
            if inode is None or inode in names:
                continue
            names[inode] = self._process_name(pid)
        self._names = names

    def _process_name(self, pid: int) -> str:
        container, pod = container_of_cgroup(_read(f"/proc/{pid}/cgroup"))
        if container:
            return self.container_name(container) or container[:12]
        if pod:
            return f"pod {pod}"
        return describe_pid(pid)


@dataclass
class InterfaceNames:
    """Interface names by (namespace inode, ifindex); a namespace is read again when an index
    is unknown (``if<N>`` when it is gone)."""

    _names: dict[int, dict[int, str]] = field(default_factory=dict)

    def __call__(self, inode: int, ifindex: int) -> str:
        if ifindex not in self._names.get(inode, {}):
            found = netns.known().get(inode)
            try:
                self._names[inode] = netns.interfaces(found.path) if found else {}
            except OSError:
                self._names[inode] = {}
        return self._names[inode].get(ifindex, f"if{ifindex}")


def _inode(path: str) -> int | None:
    try:
        return netns.inode_of(path)
    except OSError:
        return None
