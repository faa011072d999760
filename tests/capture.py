"""Ground truth for where packets went: tshark's dumpcap capturing on every interface of each
namespace (``-i any``, Linux cooked v2, so each packet comes with its interface and whether it
was sent or received), read back with tshark (VXLAN on flannel's port decoded, inner headers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from netlab import Ns

FIELDS = ("sll.ifindex", "sll.pkttype", "ip.src", "ip.dst", "ip.proto", "tcp.srcport",
          "tcp.dstport", "udp.srcport", "udp.dstport", "icmp.type", "icmp.ident", "ipv6.src",
          "ipv6.dst", "ipv6.nxt")
OUTGOING = 4  # sll.pkttype of a packet the namespace sent


@dataclass(frozen=True)
class Seen:
    """One packet seen on one interface, by its innermost IPv4 header (or its IPv6 one; no
    ICMPv6 fields)."""

    netns: int
    ifname: str
    direction: str  # "in" or "out"
    src: str
    dst: str
    proto: int
    sport: int | None  # an ICMP echo's identifier stands here, as in conntrack
    dport: int | None
    icmp_type: int | None

    @property
    def place(self) -> tuple[int, str, str]:
        return (self.netns, self.ifname, self.direction)


def _int(value: str) -> int | None:
    return int(value) if value else None


def _read(path: str, ns: Ns, names: dict[int, str]) -> list[Seen]:
    out = subprocess.run(
        ["tshark", "-r", path, "-n", "-d", "udp.port==8472,vxlan", "-T", "fields",
         "-E", "occurrence=l", *(arg for f in FIELDS for arg in ("-e", f))],
        capture_output=True, text=True, check=True).stdout
    seen = []
    for line in out.splitlines():
        ifindex, pkttype, src, dst, proto, tsp, tdp, usp, udp, icmp_type, ident, *ipv6 = (
            line.split("\t") + [""] * len(FIELDS))[:len(FIELDS)]
        if not src:
            src, dst, proto = ipv6
        if not src:
            continue  # neither IPv4 nor IPv6
        sport, dport = _int(tsp or usp), _int(tdp or udp)
        if ident:
            sport, dport = int(ident, 0), 0
        seen.append(Seen(ns.inode, names[int(ifindex)],
                         "out" if int(pkttype) == OUTGOING else "in", src, dst, int(proto),
                         sport, dport, _int(icmp_type.split(",")[-1])))
    return seen


def _names(ns: Ns) -> dict[int, str]:
    links = json.loads(ns.sh("ip", "-j", "link").stdout)
    return {link["ifindex"]: link["ifname"] for link in links}


@contextlib.contextmanager
def capture(spaces: list[Ns], result: list[Seen]) -> Iterator[None]:
    """Capture in every namespace while the block runs; result gets what was seen."""
    folder = tempfile.mkdtemp(prefix="pktpath-capture-")
    procs: list[tuple[Ns, str, subprocess.Popen[str]]] = []
    try:
        for ns in spaces:
            path = os.path.join(folder, f"{ns.name}.pcapng")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, "dumpcap", "-q", "-i", "any", "-y",
                 "LINUX_SLL2", "-w", path], stderr=subprocess.PIPE, text=True)
            procs.append((ns, path, proc))
        for ns, _, proc in procs:  # dumpcap says so once it captures
            assert proc.stderr is not None
            lines = []
            while not lines or "Capturing on" not in lines[-1]:
                lines.append(proc.stderr.readline())
                assert lines[-1], f"dumpcap in {ns.name} did not start: {''.join(lines)}"
        # said is not yet capturing everywhere: once (a cold CI run), both pod namespaces'
        # captures lacked a connection that began at once, while the nodes' had it
        time.sleep(0.3)
        yield
        time.sleep(0.3)
    finally:
        for _, _, proc in procs:
            proc.send_signal(signal.SIGINT)
        for _, _, proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for ns, path, _ in procs:
        result.extend(_read(path, ns, _names(ns)))
    for _, path, _ in procs:
        os.unlink(path)
    os.rmdir(folder)
