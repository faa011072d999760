"""Network namespaces: find them by `ip netns` name, path or inode, and run code inside one.

Namespaces are found where they are pinned: bind mounts in /run/netns (``ip netns``, CNI) and
``/proc/<pid>/ns/net`` of running processes. Code runs "inside" a namespace on a short-lived
thread that calls setns(2): the calling thread and the rest of the process never move.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from pktpath.core.errors import PktpathError, UsageError
from pktpath.core.libbpf import open_library

if TYPE_CHECKING:  # imported where used: `pktpath trace` starts without it (~4 ms)
    import socket

RUN_NETNS = "/run/netns"
CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is

T = TypeVar("T")


class Netns(NamedTuple):
    """A network namespace: its inode, a path that pins it, and its `ip netns` name if any."""

    inode: int
    path: str
    name: str | None = None


def inode_of(path: str) -> int:
    """Inode of the namespace behind path (follows /proc/<pid>/ns/net links)."""
    return os.stat(path).st_ino


def _is_netns(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def named() -> Iterator[Netns]:
    """The namespaces `ip netns list` shows (bind mounts in /run/netns)."""
    try:
        names = sorted(os.listdir(RUN_NETNS))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(RUN_NETNS, name)
        try:
            yield Netns(inode_of(path), path, name)
        except OSError:
            continue


def known() -> dict[int, Netns]:
    """Every namespace pinned by /run/netns or a process, by inode (named ones win)."""
    found: dict[int, Netns] = {}
    for ns in named():
        found.setdefault(ns.inode, ns)
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        path = f"/proc/{pid}/ns/net"
        try:
            inode = inode_of(path)
        except OSError:
            continue
        found.setdefault(inode, Netns(inode, path))
    return found


def resolve(spec: str) -> Netns:
    """The namespace a user names: an `ip netns` name, a path, or an inode number."""
    if spec.isdigit():
        ns = known().get(int(spec))
        if ns is None:
            raise UsageError(f"no network namespace has inode {spec} (looked in {RUN_NETNS} "
                             "and /proc/*/ns/net)")
        return ns
    if "/" in spec:
        if not os.path.exists(spec):
            raise UsageError(f"network namespace path {spec} does not exist")
        if not _is_netns(spec):
            raise UsageError(f"{spec} is not a network namespace file")
        inode = inode_of(spec)
        name = next((n.name for n in named() if n.inode == inode), None)
        return Netns(inode, spec, name)
    path = os.path.join(RUN_NETNS, spec)
    if not os.path.exists(path):
        listed = ", ".join(n.name or "" for n in named()) or "none"
        raise UsageError(f"unknown network namespace {spec!r}: `ip netns list` has {listed}")
    return Netns(inode_of(path), path, spec)


def run_in(path: str, func: Callable[[], T]) -> T:
    """Call func on a thread that has entered the network namespace at path."""
    result: list[T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            _setns(path)
            result.append(func())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=enter_and_run, name=f"netns:{path}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _setns(path: str) -> None:
    libc = open_library(None, "libc.so.6", "c")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise PktpathError(f"cannot enter network namespace {path}: {os.strerror(err)} "
                               "(entering a namespace needs CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def interfaces(path: str) -> dict[int, str]:
    """Interface names by ifindex in the namespace at path."""
    import socket

    return run_in(path, lambda: dict(socket.if_nameindex()))


def socket_in(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the namespace at path (it stays there whoever uses it)."""
    import socket

    if inode_of(path) == inode_of("/proc/self/ns/net"):
        return socket.socket(family, kind, proto)  # already there: no need to enter
    return run_in(path, lambda: socket.socket(family, kind, proto))


def find_interface(name: str, netns: Netns | None) -> None:
    """Raise UsageError unless an interface called name exists in netns (or anywhere known)."""
    if len(name.encode()) > 15 or not name or "/" in name or " " in name:
        raise UsageError(f"{name!r} is not a valid interface name (at most 15 bytes, no '/' "
                         "or spaces)")
    spaces = [netns] if netns else list(known().values())
    for ns in spaces:
        try:
            if name in interfaces(ns.path).values():
                return
        except (OSError, PktpathError):
            continue
    where = f"network namespace {netns.name or netns.path}" if netns else "any network namespace"
    raise UsageError(f"no interface {name!r} in {where} (see `ip link`)")
