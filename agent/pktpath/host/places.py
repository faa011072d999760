"""Where probes leave from: ``--from`` an `ip netns` name, a namespace path, ``pid:N``, or a
container name or ID (Docker, containerd, Podman, CRI-O).

A container is found through its runtime's command line when one is installed (``docker``,
``podman``, ``nerdctl``, ``crictl`` inspect its PID), else by its ID (or an unambiguous prefix of
at least 4 hex digits) in the cgroup of a running process: every runtime puts it there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from pktpath.core.errors import UsageError
from pktpath.host import netns
from pktpath.host.names import container_of_cgroup

_RUNTIMES = (
    ("docker", ["inspect", "--format", "{{.State.Pid}}"]),
    ("podman", ["inspect", "--format", "{{.State.Pid}}"]),
    ("nerdctl", ["inspect", "--format", "{{.State.Pid}}"]),
    ("crictl", ["inspect", "-o", "go-template", "--template", "{{.info.pid}}"]),
)
_HEX = re.compile(r"[0-9a-f]{4,64}")


def resolve_from(spec: str) -> netns.Netns:
    """The namespace ``--from spec`` names; UsageError with what was tried when none."""
    if spec.startswith("pid:"):
        number = spec[4:]
        if not number.isdigit() or not os.path.exists(f"/proc/{number}/ns/net"):
            raise UsageError(f"--from {spec}: no process {number}")
        path = f"/proc/{number}/ns/net"
        return netns.Netns(netns.inode_of(path), path, spec)
    if "/" in spec or os.path.exists(os.path.join(netns.RUN_NETNS, spec)):
        return netns.resolve(spec)
    pid = container_pid(spec)
    if pid is None:
        listed = ", ".join(n.name or "" for n in netns.named()) or "none"
        raise UsageError(f"--from {spec!r} is not an `ip netns` name (those are: {listed}), a "
                         "namespace path, pid:N, or a running container's name or ID")
    path = f"/proc/{pid}/ns/net"
    return netns.Netns(netns.inode_of(path), path, spec)


def container_pid(ref: str) -> int | None:
    """A process of the container called (or with the ID) ref, or None."""
    for tool, args in _RUNTIMES:
        if shutil.which(tool) is None:
            continue
        try:
            done = subprocess.run([tool, *args, ref], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        pid = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        if done.returncode == 0 and pid.isdigit() and int(pid) > 0:
            return int(pid)
    return pid_by_cgroup(ref) if _HEX.fullmatch(ref) else None


def pid_by_cgroup(prefix: str, proc: str = "/proc") -> int | None:
    """The first process whose cgroup names a container ID starting with prefix."""
    matches: dict[str, int] = {}
    for entry in sorted((p for p in os.listdir(proc) if p.isdigit()), key=int):
        try:
            with open(os.path.join(proc, entry, "cgroup"), encoding="utf-8") as f:
                container, _pod = container_of_cgroup(f.read())
        except OSError:
            continue
        if container and container.startswith(prefix):
            matches.setdefault(container, int(entry))
    if len(matches) > 1:
        raise UsageError(f"container ID prefix {prefix} is ambiguous: "
                         + ", ".join(sorted(c[:12] for c in matches)))
    return next(iter(matches.values()), None)
