"""`pktpath demo`: the article's docker-like network in temporary namespaces, traced.

A "host" namespace holds bridge docker0 (10.200.1.1/24) and a veth whose peer is eth0
(10.200.1.2/24) in a "container" namespace. The host pings the container while pktpath traces,
then everything is removed, also on Ctrl-C, SIGTERM or an error. Namespaces left by a demo that
was killed outright are removed by the next demo.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from dataclasses import dataclass
from typing import TextIO

from pktpath.cli.stream import announce, message, run, stop_on_signals
from pktpath.core.errors import PktpathError
from pktpath.core.event import Proto
from pktpath.core.filters import TraceFilter, parse_host
from pktpath.core.tracer import Tracer
from pktpath.host import netns
from pktpath.host.pinger import ping
from pktpath.host.privileges import require_btf, require_network_admin, require_tracing
from pktpath.view.diagram import FirstPath, draw

HOST_ADDR, CONTAINER_ADDR, PREFIX = "10.200.1.1", "10.200.1.2", 24
_NAME = re.compile(r"^pktpath-demo-(\d+)-(host|container)$")


@dataclass(frozen=True)
class DemoNetwork:
    """The namespaces and interfaces of one demo."""

    host: netns.Netns
    container: netns.Netns
    bridge: str
    veth: str


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def remove_stale() -> list[str]:
    """Remove the namespaces of demos whose process is gone; return their names."""
    from pyroute2 import netns as pr_netns

    removed = []
    for ns in netns.named():
        match = _NAME.match(ns.name or "")
        if match and not _pid_alive(int(match.group(1))):
            pr_netns.remove(ns.name)
            removed.append(ns.name or "")
    return removed


def build() -> DemoNetwork:
    """Create the demo's namespaces, bridge and veth pair; remove them again on failure."""
    from pyroute2 import NetNS
    from pyroute2 import netns as pr_netns

    host_name = f"pktpath-demo-{os.getpid()}-host"
    container_name = f"pktpath-demo-{os.getpid()}-container"
    veth = "veth" + secrets.token_hex(4)[:7]
    pr_netns.create(host_name)
    try:
        pr_netns.create(container_name)
        with NetNS(host_name) as host:
            host.link("add", ifname="docker0", kind="bridge")
            host.link("add", ifname=veth, kind="veth",
                      peer={"ifname": "eth0", "net_ns_fd": container_name})
            bridge = host.link_lookup(ifname="docker0")[0]
            host.link("set", index=host.link_lookup(ifname=veth)[0], master=bridge, state="up")
            host.link("set", index=bridge, state="up")
            host.link("set", index=host.link_lookup(ifname="lo")[0], state="up")
            host.addr("add", index=bridge, address=HOST_ADDR, prefixlen=PREFIX)
        with NetNS(container_name) as container:
            eth0 = container.link_lookup(ifname="eth0")[0]
            container.link("set", index=eth0, state="up")
            container.link("set", index=container.link_lookup(ifname="lo")[0], state="up")
            container.addr("add", index=eth0, address=CONTAINER_ADDR, prefixlen=PREFIX)
    except BaseException:
        teardown_names(host_name, container_name)
        raise
    return DemoNetwork(netns.resolve(host_name), netns.resolve(container_name), "docker0", veth)


def teardown_names(*names: str) -> None:
    """Remove the named namespaces that exist (their interfaces go with them)."""
    from pyroute2 import netns as pr_netns

    for name in names:
        if os.path.exists(os.path.join(netns.RUN_NETNS, name)):
            pr_netns.remove(name)


def run_demo(out: TextIO, err: TextIO, *, as_json: bool = False, pings: int = 3) -> int:
    """Build, trace a ping, explain, remove. Returns the exit code."""
    require_tracing()
    require_network_admin()
    require_btf()
    stop = threading.Event()
    with stop_on_signals(stop):
        for name in remove_stale():
            message(err, f"removed {name}, left by a demo that was killed")
        message(err, "building a docker-like network: namespace 'host' with bridge docker0, "
                     "a veth into namespace 'container' (eth0)")
        network = build()
        try:
            return _trace_ping(network, stop, out, err, as_json, pings)
        finally:
            teardown_names(network.host.name or "", network.container.name or "")
            message(err, "removed the demo's namespaces")


def _trace_ping(network: DemoNetwork, stop: threading.Event, out: TextIO, err: TextIO,
                as_json: bool, pings: int) -> int:
    message(err, f"host netns {network.host.inode} ({network.host.name}): docker0 "
                 f"{HOST_ADDR}, {network.veth}")
    message(err, f"container netns {network.container.inode} ({network.container.name}): "
                 f"eth0 {CONTAINER_ADDR}")
    trace_filter = TraceFilter(hosts=(parse_host(CONTAINER_ADDR),), proto=Proto.ICMP)
    rtts: list[float | None] = []
    finished = threading.Event()  # the pings ran to the end (not interrupted)

    def pinger() -> None:
        try:
            rtts.extend(ping(network.host.path, CONTAINER_ADDR, pings, stop=stop))
            if not stop.is_set():
                finished.set()
        finally:
            stop.set()

    with Tracer(trace_filter) as tracer:
        announce(tracer, err)
        message(err, f"pinging {CONTAINER_ADDR} from the host namespace, {pings} times")
        thread = threading.Thread(target=pinger, name="demo-ping", daemon=True)
        thread.start()
        short = {network.host.inode: "host", network.container.inode: "container"}
        names = lambda inode: short.get(inode, str(inode))  # noqa: E731
        path = FirstPath(names)
        result = run(tracer, stop, out, err, as_json=as_json, names=names, on_hop=path)
        thread.join()
    if not as_json and path.stops:
        out.write("\n" + draw(path.stops))
    answered = sum(rtt is not None for rtt in rtts)
    if not finished.is_set():
        message(err, f"interrupted after {len(rtts)} pings")
        return 0
    message(err, f"{answered} of {len(rtts)} pings answered; each one crossed docker0 and "
                 f"{network.veth} in the host namespace, then eth0 in the container, and back")
    if result.shown == 0:
        raise PktpathError("the demo traced no packet: the probes are attached but saw nothing")
    return 0
