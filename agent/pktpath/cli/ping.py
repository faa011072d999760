"""``pktpath ping TARGET``: the live table on a terminal, else (or with --report) the report."""

from __future__ import annotations

import argparse
import datetime
import json
import threading
from typing import TextIO

from pktpath.cli.ping_session import PingSession, ping_filter, resolve_target
from pktpath.cli.stream import announce, message, stop_on_signals
from pktpath.core.errors import UsageError
from pktpath.core.filters import parse_port
from pktpath.core.tracer import Tracer
from pktpath.host import netns
from pktpath.host.names import NetnsNames
from pktpath.host.places import resolve_from
from pktpath.host.privileges import require_btf, require_probing, require_tracing
from pktpath.view.diagram import diagram_of
from pktpath.view.mtr import report_csv, report_json, report_text

REPORT_COUNT = 10  # mtr's default for --report


def source_of(spec: str | None) -> netns.Netns:
    """Where probes leave from: --from, or this process's own namespace."""
    if spec:
        return resolve_from(spec)
    path = "/proc/self/ns/net"
    return netns.Netns(netns.inode_of(path), path)


def cmd_ping(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath ping``."""
    protocol = "tcp" if args.tcp else "udp" if args.udp else "icmp"
    port = parse_port(args.port) if args.port else 0
    if protocol != "icmp" and not port:
        raise UsageError(f"--{protocol} needs --port N")
    if protocol == "icmp" and port:
        raise UsageError("--port goes with --udp or --tcp (ICMP echo has no port)")
    if args.interval <= 0 or args.timeout <= 0:
        raise UsageError("--interval and --timeout must be positive seconds")
    target = resolve_target(args.target)
    source = source_of(args.from_)
    live = not (args.report or args.json or args.csv) and out.isatty()
    count = args.count or (0 if live else REPORT_COUNT)
    require_tracing()
    require_probing(icmp=protocol == "icmp",
                    enter_namespace=source.inode != netns.inode_of("/proc/self/ns/net"))
    require_btf()
    names = NetnsNames()
    src_label = source.name or names(source.inode)
    stop = threading.Event()
    start = datetime.datetime.now(datetime.UTC).astimezone()
    with stop_on_signals(stop), Tracer(ping_filter(target, protocol, port),
                                       hook_type=args.hook_type) as tracer:
        session = PingSession(tracer, source, target, protocol, port, count,
                              args.interval, args.timeout, names)
        try:
            if live:
                _live(session, stop, out, src_label)
            else:
                announce(tracer, err)
                message(err, f"sending {count} {protocol} probes from {src_label} to {target}, "
                             f"every {args.interval:g}s")
                tracer.follow(stop, session.add, lambda: _tick(session, stop, 100))
            lost = tracer.lost()
        finally:
            session.close()
    table = session.table
    if args.json:
        report = report_json(table, src_label, target)
        report["report"]["mtr"]["events_lost"] = lost
        out.write(json.dumps(report, indent=2) + "\n")
    elif args.csv:
        out.write(report_csv(table, src_label, target, int(start.timestamp())))
    elif not live:
        out.write(report_text(table, src_label, target, start.isoformat(timespec="seconds")))
        out.write("\n" + diagram_of(table))
    if lost:
        message(err, f"{lost} events lost: the ring buffer was full")
    return 0


def _tick(session: PingSession, stop: threading.Event, wait_ms: int) -> int:
    """Between two reads: stop once the last probe's time-out passed, else send what is due."""
    if session.finished:
        stop.set()
    return session.tick(wait_ms)


def _live(session: PingSession, stop: threading.Event, out: TextIO, src_label: str) -> None:
    from pktpath.view.live import live_table

    def on_key(key: str) -> None:
        if key in "qQ":
            stop.set()
        elif key in "pP":
            session.paused = not session.paused
        elif key in "rR":
            session.reset()

    def status() -> str:
        state = "  PAUSED" if session.paused else ""
        return (f"{session.table.sent} probes sent, {session.tracer.lost()} events lost{state}"
                "   keys: q quit, p pause, r reset")

    title = f"pktpath ping {src_label} -> {session.target} ({session.protocol})"
    with live_table(session.table, title, status, on_key=on_key, out=out) as refresh:

        def tick() -> int:
            refresh()
            return _tick(session, stop, 50)

        session.tracer.follow(stop, session.add, tick)
