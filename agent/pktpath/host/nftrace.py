"""`--nf-trace`: the nftables rule that decided a packet's fate, from nftables' own tracing.

pktpath adds one table of its own, ``inet pktpath_nftrace_<pid>``, to each namespace it
watches: two chains (prerouting and output, priority -350, before any other) whose rules set
``meta nftrace`` on the packets the trace filter matches. nftables then reports every rule
those packets meet, in every table (iptables-nft rules too), through ``nft monitor trace``.
No other table is touched; pktpath deletes its table on exit, and a table left by a pktpath
that was killed is deleted at the next start, so the ruleset is the same before and after.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pktpath.core.errors import PktpathError, UsageError
from pktpath.core.event import Proto
from pktpath.core.fate import NfRule
from pktpath.core.filters import TraceFilter
from pktpath.core.packet import Packet
from pktpath.host import netns

if TYPE_CHECKING:
    from pktpath.core.tracer import Hop

TABLE_PREFIX = "pktpath_nftrace_"
_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet|rule|policy|verdict)\b:? ?(.*)$")
_RULE = re.compile(r"^(.*?)(?: # handle (\d+))? \(verdict (\w+)\)\s*$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_FIELDS = re.compile(r"\b(ip6?|icmpv6|icmp|tcp|udp|th) (saddr|daddr|id|sequence|sport|dport) "
                     r"(\S+)")
FINAL = ("drop", "reject", "accept")


@dataclass(frozen=True)
class _Verdict:
    inode: int
    identity: tuple[str | None, ...]
    rule: NfRule
    at: float


def _identity(fields: dict[str, str]) -> tuple[str | None, ...]:
    return (fields.get("saddr"), fields.get("daddr"), fields.get("id"), fields.get("sequence"),
            fields.get("sport"), fields.get("dport"))


def packet_identity(packet: Packet) -> tuple[str | None, ...]:
    """The identity nftables' trace lines give the same packet."""
    def text(value: int | None) -> str | None:
        return None if value is None else str(value)

    return (packet.src, packet.dst, text(packet.icmp_id), text(packet.icmp_seq),
            text(packet.sport), text(packet.dport))


def rules_for(flt: TraceFilter) -> list[str]:
    """nftables match expressions selecting what the trace filter selects."""
    if flt.proto == Proto.ARP:
        raise UsageError("--nf-trace follows IP packets: it cannot trace --proto arp")
    proto = {Proto.ICMP: "meta l4proto icmp", Proto.ICMP6: "meta l4proto ipv6-icmp",
             Proto.TCP: "meta l4proto tcp", Proto.UDP: "meta l4proto udp"}.get(flt.proto, "")
    hosts = [f"{'ip6' if h.version == 6 else 'ip'} {d} {h}" for h in flt.hosts
             for d in ("saddr", "daddr")] or [""]
    ports = ([f"meta l4proto {{ tcp, udp }} th {d} {flt.port}" for d in ("sport", "dport")]
             if flt.port and not proto else
             [f"th {d} {flt.port}" for d in ("sport", "dport")] if flt.port else [""])
    return [" ".join(p for p in (proto, host, port) if p) for host in hosts for port in ports]


def _nft(path: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", "nft", *args], input=script,
                          capture_output=True, text=True, timeout=20)


class NfTrace:
    """nftables tracing in a set of namespaces, for one trace filter. A context manager."""

    def __init__(self, flt: TraceFilter, spaces: list[netns.Netns] | None = None) -> None:
        if shutil.which("nft") is None or shutil.which("nsenter") is None:
            raise PktpathError("--nf-trace needs the nft command (Debian: apt-get install "
                               "nftables) and nsenter (util-linux)")
        self.rules = rules_for(flt)
        self.table = f"{TABLE_PREFIX}{os.getpid()}"
        self._spaces = spaces
        self._added: list[netns.Netns] = []
        self._monitors: list[subprocess.Popen[str]] = []
        self._verdicts: deque[_Verdict] = deque(maxlen=4096)
        self._lock = threading.Lock()
        self.removed_stale: list[str] = []

    def __enter__(self) -> NfTrace:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def namespaces(self) -> list[netns.Netns]:
        """Where nftables tracing is on."""
        return list(self._added)

    def start(self) -> None:
        """Remove leftovers of killed runs, add the tracing table, start the monitors."""
        candidates = list(netns.known().values())
        self.removed_stale = remove_stale(candidates)
        spaces = self._spaces if self._spaces is not None else [
            ns for ns in candidates if _has_rules(ns.path)]
        chains = "".join(
            f"  chain {hook} {{ type filter hook {hook} priority -350; policy accept;\n"
            + "".join(f"    {rule} meta nftrace set 1\n" for rule in self.rules) + "  }\n"
            for hook in ("prerouting", "output"))
        script = f"table inet {self.table} {{\n{chains}}}\n"
        for ns in spaces:
            proc = _nft(ns.path, "-f", "-", script=script)
            if proc.returncode != 0:
                raise PktpathError(f"--nf-trace could not add its table in {ns.name or ns.path}:"
                                   f" {proc.stderr.strip()} (it needs CAP_NET_ADMIN)")
            self._added.append(ns)
            self._monitor(ns)
        time.sleep(0.2)  # let the monitors subscribe before packets flow

    def _monitor(self, ns: netns.Netns) -> None:
        proc = subprocess.Popen(["nsenter", f"--net={ns.path}", "nft", "-a", "monitor", "trace"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                preexec_fn=_die_with_parent)
        self._monitors.append(proc)
        threading.Thread(target=self._read, args=(ns.inode, proc), daemon=True,
                         name=f"nftrace:{ns.path}").start()

    def _read(self, inode: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        packets: dict[str, tuple[str | None, ...]] = {}
        for line in proc.stdout:
            match = _LINE.match(line.strip())
            if not match:
                continue
            trace_id, family, table, chain, kind, rest = match.groups()
            if table == self.table:
                continue
            if kind == "packet":
                fields = {m.group(2): m.group(3).strip('"') for m in _FIELDS.finditer(rest)}
                packets[trace_id] = _identity(fields)
                continue
            rule = self._rule(family, table, chain, kind, rest)
            if rule is not None and trace_id in packets:
                with self._lock:
                    self._verdicts.append(_Verdict(inode, packets[trace_id], rule,
                                                   time.monotonic()))

    @staticmethod
    def _rule(family: str, table: str, chain: str, kind: str, rest: str) -> NfRule | None:
        if kind == "policy":
            verdict = rest.split()[0] if rest else ""
            return NfRule(family, table, chain, verdict) if verdict in FINAL else None
        if kind != "rule":
            return None
        match = _RULE.match(rest)
        if not match or match.group(3) not in FINAL:
            return None
        text = _COUNTER.sub("counter", match.group(1)).strip()
        handle = int(match.group(2)) if match.group(2) else None
        return NfRule(family, table, chain, match.group(3), text, handle)

    def verdict(self, inode: int, packet: Packet, wait: float = 0.5) -> NfRule | None:
        """The rule that dropped (or last decided on) packet in namespace inode."""
        identity = packet_identity(packet)
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                for found in reversed(self._verdicts):
                    if found.inode == inode and found.identity == identity:
                        return found.rule
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def annotate(self, hop: Hop) -> Hop:
        """A netfilter drop, with the rule that decided it when nftables reported one."""
        fate = hop.fate
        if fate is None or fate.reason != "NETFILTER_DROP":
            return hop
        rule = self.verdict(hop.event.netns, hop.packet)
        if rule is None:
            return hop
        explain = "; ".join(w for w in (fate.explain, f"rule {rule}") if w)
        return replace(hop, fate=replace(fate, explain=explain, nf_rule=rule))

    def stop(self) -> None:
        """Stop the monitors and delete the table everywhere it was added."""
        for proc in self._monitors:
            proc.terminate()
        for proc in self._monitors:
            proc.wait(5)
        self._monitors.clear()
        for ns in self._added:
            _nft(ns.path, "delete", "table", "inet", self.table)
        self._added.clear()


def _die_with_parent() -> None:
    """In a child before exec: end it with SIGTERM when pktpath dies, even by SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _has_rules(path: str) -> bool:
    proc = _nft(path, "list", "tables")
    return proc.returncode == 0 and bool(proc.stdout.strip())


def remove_stale(spaces: list[netns.Netns]) -> list[str]:
    """Delete tracing tables whose pktpath is gone; returns where they were."""
    removed = []
    for ns in spaces:
        proc = _nft(ns.path, "list", "tables")
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].startswith(TABLE_PREFIX):
                pid = parts[2][len(TABLE_PREFIX):]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    _nft(ns.path, "delete", "table", parts[1], parts[2])
                    removed.append(f"{parts[1]} {parts[2]} in {ns.name or ns.path}")
    return removed
