"""Test networks built with `ip` in namespaces the tests create, removed even on failure.

Every namespace name starts with ``ppt-<pid>-`` so a crashed run's leftovers are recognisable;
addresses come from 10.200.0.0/16 and fd00:200::/48 only, and no traffic leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def run(*cmd: str, check: bool = True, timeout: float = 30,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, raising with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Ns:
    """A network namespace of the lab."""

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def sh(self, *cmd: str, check: bool = True, timeout: float = 30,
           cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout,
                   cwd=cwd)

    @contextlib.contextmanager
    def process(self, *cmd: str) -> Iterator[subprocess.Popen[bytes]]:
        """A process running cmd inside the namespace (waited for until it is there), killed
        at the end of the block."""
        inode = self.inode
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd])
        try:
            deadline = time.monotonic() + 5
            while os.stat(f"/proc/{proc.pid}/ns/net").st_ino != inode:
                assert time.monotonic() < deadline, f"{cmd[0]} never entered {self.name}"
                time.sleep(0.05)
            yield proc
        finally:
            proc.kill()
            proc.wait()


@dataclass
class Netlab:
    """Namespaces, links and addresses for one test."""

    prefix: str = field(default_factory=lambda: f"ppt-{os.getpid()}")
    spaces: list[Ns] = field(default_factory=list)

    def ns(self, name: str) -> Ns:
        ns = Ns(f"{self.prefix}-{name}")
        run("ip", "netns", "add", ns.name)
        self.spaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        ns.sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
              "net.ipv6.conf.default.accept_dad=0")
        return ns

    def veth(self, a: Ns, a_name: str, b: Ns, b_name: str) -> None:
        run("ip", "-n", a.name, "link", "add", a_name, "type", "veth", "peer", "name", b_name,
            "netns", b.name)
        a.ip("link", "set", a_name, "up")
        b.ip("link", "set", b_name, "up")

    def cleanup(self) -> None:
        for ns in reversed(self.spaces):
            run("ip", "netns", "del", ns.name, check=False)
        self.spaces.clear()


@dataclass
class DockerLike:
    """The article's network: a host namespace with a bridge, a veth into a container."""

    host: Ns
    container: Ns
    bridge: str
    veth: str
    host_addr: str
    container_addr: str
    host_addr6: str
    container_addr6: str


def docker_like(lab: Netlab, subnet: int) -> DockerLike:
    """Build the article's topology on 10.200.<subnet>.0/24 and fd00:200:0:<subnet>::/64."""
    host, container = lab.ns("host"), lab.ns("ctr")
    host.ip("link", "add", "docker0", "type", "bridge")
    host.ip("link", "set", "docker0", "up")
    veth = f"veth{subnet:03d}ab6"
    lab.veth(host, veth, container, "eth0")
    host.ip("link", "set", veth, "master", "docker0")
    h4, c4 = f"10.200.{subnet}.1", f"10.200.{subnet}.2"
    h6, c6 = f"fd00:200:0:{subnet}::1", f"fd00:200:0:{subnet}::2"
    host.ip("addr", "add", f"{h4}/24", "dev", "docker0")
    host.ip("addr", "add", f"{h6}/64", "dev", "docker0", "nodad")
    container.ip("addr", "add", f"{c4}/24", "dev", "eth0")
    container.ip("addr", "add", f"{c6}/64", "dev", "eth0", "nodad")
    return DockerLike(host, container, "docker0", veth, h4, c4, h6, c6)


@dataclass
class Node:
    """A simulated Kubernetes node: a namespace with bridge cni0 for its pods' veths."""

    ns: Ns
    name: str
    subnet: int  # pods get 10.200.<subnet>.0/24, the bridge .1
    pods: dict[str, Ns] = field(default_factory=dict)
    veths: dict[str, str] = field(default_factory=dict)  # pod -> node-side veth

    @property
    def gateway(self) -> str:
        return f"10.200.{self.subnet}.1"


def k8s_node(lab: Netlab, name: str, subnet: int) -> Node:
    """A node namespace with cni0 (10.200.<subnet>.1/24) and forwarding on."""
    ns = lab.ns(name)
    ns.ip("link", "add", "cni0", "type", "bridge")
    ns.ip("addr", "add", f"10.200.{subnet}.1/24", "dev", "cni0")
    ns.ip("link", "set", "cni0", "up")
    ns.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return Node(ns, name, subnet)


def k8s_pod(lab: Netlab, node: Node, name: str, host: int) -> str:
    """A pod namespace on node, eth0 at 10.200.<subnet>.<host>; returns its IP."""
    pod = lab.ns(f"{node.name}-{name}")
    veth = f"veth{node.subnet:02x}{host:02x}{len(node.pods):02x}"
    lab.veth(node.ns, veth, pod, "eth0")
    node.ns.ip("link", "set", veth, "master", "cni0")
    ip = f"10.200.{node.subnet}.{host}"
    pod.ip("addr", "add", f"{ip}/24", "dev", "eth0")
    pod.ip("route", "add", "default", "via", node.gateway)
    node.pods[name] = pod
    node.veths[name] = veth
    return ip


def vxlan_join(lab: Netlab, a: Node, b: Node) -> None:
    """Join two nodes as flannel's vxlan backend does: an underlay veth, flannel.1 on top."""
    lab.veth(a.ns, "eth0", b.ns, "eth0")
    a.ns.ip("addr", "add", "10.200.250.1/24", "dev", "eth0")
    b.ns.ip("addr", "add", "10.200.250.2/24", "dev", "eth0")
    for node, local, remote, overlay in ((a, "10.200.250.1", "10.200.250.2", "10.200.251.1"),
                                         (b, "10.200.250.2", "10.200.250.1", "10.200.251.2")):
        node.ns.ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", local,
                   "remote", remote, "dstport", "8472", "dev", "eth0")
        node.ns.ip("addr", "add", f"{overlay}/24", "dev", "flannel.1")
        node.ns.ip("link", "set", "flannel.1", "up")
    a.ns.ip("route", "add", f"10.200.{b.subnet}.0/24", "via", "10.200.251.2")
    b.ns.ip("route", "add", f"10.200.{a.subnet}.0/24", "via", "10.200.251.1")


@dataclass
class Routed:
    """c1 -- router -- c2 on 10.200.<a>.0/24 and 10.200.<b>.0/24, router forwarding."""

    c1: Ns
    router: Ns
    c2: Ns
    c1_addr: str
    c2_addr: str


def routed(lab: Netlab, a: int, b: int) -> Routed:
    """Two namespaces joined by a forwarding namespace (interfaces to-c1 and to-c2)."""
    c1, router, c2 = lab.ns("c1"), lab.ns("router"), lab.ns("c2")
    lab.veth(c1, "eth0", router, "to-c1")
    lab.veth(c2, "eth0", router, "to-c2")
    c1.ip("addr", "add", f"10.200.{a}.2/24", "dev", "eth0")
    c2.ip("addr", "add", f"10.200.{b}.2/24", "dev", "eth0")
    router.ip("addr", "add", f"10.200.{a}.1/24", "dev", "to-c1")
    router.ip("addr", "add", f"10.200.{b}.1/24", "dev", "to-c2")
    c1.ip("route", "add", "default", "via", f"10.200.{a}.1")
    c2.ip("route", "add", "default", "via", f"10.200.{b}.1")
    router.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return Routed(c1, router, c2, f"10.200.{a}.2", f"10.200.{b}.2")


@contextlib.contextmanager
def tcp_listener(ns: Ns, port: int, address: str = "0.0.0.0") -> Iterator[subprocess.Popen[str]]:
    """A process in ns that accepts one TCP connection on port and reads from it; the block
    starts once it listens, and the process is gone after it."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c",
         f"import socket; s=socket.socket(socket.{'AF_INET6' if ':' in address else 'AF_INET'});"
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
         f"s.bind(('{address}', {port})); s.listen(); c, _ = s.accept(); c.recv(10)"],
        text=True)
    try:
        for _ in range(50):
            if ns.sh("ss", "-Hltn", f"sport = :{port}", check=False).stdout.strip():
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"nothing listens on {port} in {ns.name}")
        yield server
    finally:
        server.kill()
        server.wait()


def vxlan_pods(lab: Netlab, subnet_a: int, subnet_b: int) -> tuple[Node, Node, str]:
    """Two vxlan-joined nodes with pod "web" on the first and "db" on the second; db's IP."""
    a, b = k8s_node(lab, "node-a", subnet_a), k8s_node(lab, "node-b", subnet_b)
    vxlan_join(lab, a, b)
    k8s_pod(lab, a, "web", 10)
    return a, b, k8s_pod(lab, b, "db", 10)
