"""Check, before attaching anything, that this process may do what it is about to do."""

from __future__ import annotations

import os

from pktpath.core.errors import PktpathError

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    """The effective capability set of this process, as a bit mask."""
    with open(status_path, encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _has(caps: int, *wanted: int) -> bool:
    return all(caps & (1 << cap) for cap in wanted)


def require_tracing(caps: int | None = None) -> None:
    """Raise unless this process can load and attach tracing BPF programs."""
    caps = effective_capabilities() if caps is None else caps
    if not (_has(caps, CAP_BPF, CAP_PERFMON) or _has(caps, CAP_SYS_ADMIN)):
        raise PktpathError("pktpath needs CAP_BPF and CAP_PERFMON (or root) to trace: "
                           "run it with sudo")


def require_network_admin(what: str = "pktpath demo", caps: int | None = None) -> None:
    """Raise unless this process can change namespaces' networking (and enter them)."""
    caps = effective_capabilities() if caps is None else caps
    if not _has(caps, CAP_NET_ADMIN, CAP_SYS_ADMIN):
        raise PktpathError(f"{what} needs CAP_NET_ADMIN and CAP_SYS_ADMIN (or root): run it "
                           "with sudo")


def require_probing(icmp: bool, enter_namespace: bool, caps: int | None = None) -> None:
    """Raise unless this process can send probes: ICMP needs raw sockets, and sending from
    another network namespace needs to enter it."""
    caps = effective_capabilities() if caps is None else caps
    if icmp and not _has(caps, CAP_NET_RAW):
        raise PktpathError("pktpath ping needs CAP_NET_RAW to send ICMP probes (or use --udp "
                           "or --tcp): run it with sudo")
    if enter_namespace and not _has(caps, CAP_SYS_ADMIN):
        raise PktpathError("pktpath ping --from needs CAP_SYS_ADMIN to enter the network "
                           "namespace: run it with sudo")


def require_btf(path: str = BTF_VMLINUX) -> None:
    """Raise unless the kernel exposes its BTF, which CO-RE and tp_btf need."""
    if not os.path.exists(path):
        raise PktpathError(f"this kernel has no BTF ({path} is missing): pktpath needs a "
                           "kernel built with CONFIG_DEBUG_INFO_BTF=y (5.4 or later)")
