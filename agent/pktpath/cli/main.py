"""The ``pktpath`` command: ``trace``, ``ping``, ``drops``, ``demo`` and ``agent``.

Exit codes: 0 done, 1 missing privilege / kernel feature / failure while tracing, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from pktpath import __version__
from pktpath.cli.stream import message, stop_on_signals
from pktpath.core.errors import EXIT_USAGE, PktpathError, UsageError
from pktpath.core.event import Proto
from pktpath.core.expression import compile_expression
from pktpath.core.filters import TraceFilter, parse_host, parse_port, parse_proto
from pktpath.core.hooks import FLAGS, select_hooks
from pktpath.core.loader import DEFAULT_RING_BYTES, Probes
from pktpath.host import netns
from pktpath.host.privileges import require_btf, require_network_admin, require_tracing

if TYPE_CHECKING:  # imported where they are needed: every start does not pay for them
    from pktpath.core.tracer import Hop
    from pktpath.host.nftrace import NfTrace
    from pktpath.view.diagram import FirstPath

TRACE_EXAMPLES = """\
examples:
  pktpath trace --proto icmp --host 172.17.0.2     ping a container, see every hop
  pktpath trace 'tcp and dst port 8080'            a tcpdump expression, run in the kernel
  pktpath trace --host fd00:200::2 --proto icmp6   the same over IPv6
  pktpath trace --proto tcp --port 80 --json | jq  TCP port 80, one JSON object a line
  pktpath trace --proto arp -i br0                 ARP on br0 in any namespace
  pktpath trace --netns blue --proto udp -c 10     10 UDP packets in `ip netns` blue
  pktpath trace --host 10.96.0.12 --kubeconfig kc   a Service's ClusterIP named svc NS/NAME
"""

DROPS_EXAMPLES = """\
examples:
  pktpath drops                                  live table, refreshed every second
  pktpath drops --reason NETFILTER_DROP -c 10    firewall drops, ten intervals, then a summary
  pktpath drops --netns blue -i eth0 --json      one JSON object per interval, for blue's eth0
"""

AGENT_EXAMPLES = """\
examples:
  NODE_NAME=node-a pktpath agent                 as the DaemonSet runs it
  pktpath agent --node node-a --host-netns /run/netns/node-a --listen 127.0.0.1:9900
"""

PING_EXAMPLES = """\
examples:
  pktpath ping --from blue 10.200.1.2              live table of ICMP probes from `ip netns` blue
  pktpath ping --from web 10.200.1.2 --report -c 5 mtr-style report of 5 probes, then the path
  pktpath ping --from pid:4242 --tcp --port 80 10.200.1.2   TCP SYNs from a process's namespace
  pktpath ping --from 3f2a9c1b7d0e fd00:200::2     from a container (name or ID), over IPv6
  pktpath ping --from blue 10.200.1.2 -c 5 --json  mtr's JSON report, with namespaces
"""

DEMO_EXAMPLES = """\
examples:
  pktpath demo              build a docker-like network, ping across it, show the path
  pktpath demo --json       the same hops as JSON
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help layout, text with line breaks (the examples) kept as written and the
    rest filled, sized to the terminal without shutil: argparse imports it (and bz2, lzma:
    ~3 ms) to size its help, at every start, before the programs can start loading."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def _columns() -> int:
    """The terminal's width: $COLUMNS if a positive number, else standard output's
    terminal's, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size().columns or 80  # standard output's
    except OSError:
        return 80


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one sentence, exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"pktpath: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def _ring_size(text: str) -> int:
    """A ring buffer size (4M, 512k, 65536), checked before anything needs privilege."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    try:
        unit = units.get(text[-1:].lower(), 1)
        size = int(text[:-1] if unit > 1 else text) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 4M)") from None
    if size < 4096 or size & (size - 1):
        raise argparse.ArgumentTypeError(
            f"ring buffer size {size} must be a power of two of at least 4096 bytes")
    return size


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def _drops_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``pktpath drops``."""
    parser.add_argument("--interval", type=_seconds, default=1.0, metavar="S",
                        help="seconds between readings (default 1)")
    parser.add_argument("-c", "--count", type=int, default=0, metavar="N",
                        help="stop after N intervals (default: until Ctrl-C)")
    parser.add_argument("--json", action="store_true",
                        help='one JSON object per interval: {"time", "interval_s", "drops": '
                        '[{"netns", "netns_name", "ifname", "reason", "location", "count", '
                        '"total"}]}')
    parser.add_argument("--netns", metavar="NS",
                        help="only this namespace (an `ip netns` name, a path or an inode)")
    parser.add_argument("-i", "--interface", metavar="IFNAME", help="only this interface")
    parser.add_argument("--reason", metavar="NAME",
                        help="only this drop reason (e.g. NETFILTER_DROP, NO_SOCKET)")
    parser.add_argument("--map-size", type=int, default=4096, metavar="N",
                        help="places counted at most (default 4096; more count as overflow)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _trace_flags(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``pktpath trace``."""
    parser.add_argument("expression", nargs="*",
                        help="a tcpdump filter expression (pcap-filter(7)), e.g. "
                        "'tcp and dst port 8080'")
    parser.add_argument("--host", action="append", default=[], metavar="ADDR",
                        help="IPv4 or IPv6 source or destination (repeat for several: any of them)")
    parser.add_argument("--proto", metavar="PROTO", help="icmp, icmp6, tcp, udp or arp")
    parser.add_argument("--port", metavar="N", help="TCP or UDP source or destination port")
    parser.add_argument("--netns", metavar="NS",
                        help="only this network namespace: `ip netns` name, path or inode")
    parser.add_argument("-i", "--interface", metavar="NAME",
                        help="only interfaces with this name (in any namespace unless --netns)")
    _output_flags(parser)
    parser.add_argument("-c", "--count", type=_positive, default=0, metavar="N",
                        help="stop after N events")
    parser.add_argument("--buffer-size", type=_ring_size, default=DEFAULT_RING_BYTES,
                        metavar="SIZE", help="ring buffer size, a power of two (default 4M)")
    parser.add_argument("--hook-type", choices=("auto", "tp_btf", "raw_tp"), default="auto",
                        help="BPF program type for the hooks (default: tp_btf, else raw_tp)")
    parser.add_argument("--latency", action="store_true",
                        help="text: show the time since each packet's first hop (+0.021ms)")
    parser.add_argument("--nf-trace", action="store_true",
                        help="name the nftables/iptables rule that dropped a packet (adds a "
                        "table of its own while tracing, removed on exit)")
    parser.add_argument("--no-track", action="store_true",
                        help="show only hops where the filter matches, not the rest of a matched "
                        "packet's way (through NAT, tunnels, clones)")
    parser.add_argument("--routes", action="store_true",
                        help="also the routing lookups: the route each forwarded hop took "
                        "(JSON route), and which route failed for a drop (costs more)")
    parser.add_argument("--no-drops", action="store_true",
                        help="only the path: no drops or ICMP errors")
    parser.add_argument("-w", "--write", metavar="FILE",
                        help="also write the packets to FILE as pcap-ng (mode 0600), a comment "
                        "on each naming its namespace, interface, hook and packet")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="name each Service's ClusterIP (svc shop/db) from the cluster of "
                        "this kubeconfig (read once at the start)")
    parser.add_argument("--diagram", action="store_true",
                        help="at the end, draw the path of the first packet traced (and its "
                        "reply) across namespaces")


def _ping_flags(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``pktpath ping``."""
    parser.add_argument("target", help="IP address (or name) to probe")
    parser.add_argument("--from", dest="from_", metavar="WHERE",
                        help="send from this network namespace: `ip netns` name, path, pid:N, or "
                        "a container name or ID (default: this process's namespace)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--udp", action="store_true", help="UDP datagrams (needs --port)")
    kind.add_argument("--tcp", action="store_true", help="TCP SYNs (needs --port)")
    parser.add_argument("--port", metavar="N",
                        help="destination port for --udp or --tcp")
    parser.add_argument("-c", "--count", type=_positive, default=0, metavar="N",
                        help="probes to send (default: 10 in a report, until q when live)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="time between probes (default 1)")
    parser.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS",
                        help="how long a probe is waited for after it was sent (default 1)")
    parser.add_argument("-r", "--report", action="store_true",
                        help="no live table: print the report when the probes are done")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the report as mtr's JSON")
    shape.add_argument("--csv", action="store_true", help="the report as mtr's CSV")
    parser.add_argument("--hook-type", choices=("auto", "tp_btf", "raw_tp"), default="auto")


def _agent_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``pktpath agent``."""
    parser.add_argument("--node", default=os.environ.get("NODE_NAME"),
                        help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--host-netns", default="/proc/self/ns/net", metavar="PATH",
                        help="the node's own network namespace (default: /proc/self/ns/net, "
                        "the node's when the agent shares the host network, as the "
                        "DaemonSet does)")
    parser.add_argument("--listen", default="0.0.0.0:9900", metavar="HOST:PORT",
                        help="address of /metrics and /healthz (default 0.0.0.0:9900)")
    parser.add_argument("--hook-type", choices=("auto", "tp_btf", "raw_tp"), default="auto")
    parser.add_argument("--max-traces", type=_positive, default=20, metavar="N",
                        help="traces run at once; more wait for a slot (default 20: each "
                        "running trace holds about 5 MiB of the agent's memory)")
    parser.add_argument("--no-drop-watch", action="store_true",
                        help="do not count the node's drops (pktpath_drops_total)")
    parser.add_argument("--drop-series", type=_positive, default=50, metavar="N",
                        help="pktpath_drops_total series with their own labels; later ones "
                        "are summed in reason=\"other\" (default 50)")
    parser.add_argument("--drop-event-rate", type=float, default=0.0, metavar="R",
                        help="record an Event on a pod that drops R packets a second or more "
                        "(default 0: no Events)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command-line grammar; with command, the flags of that command only (the others are
    listed, not built: a start need not build what it will not parse)."""
    parser = _Parser(prog="pktpath", description="Where did my packet go? pktpath shows the "
                     "interfaces and network namespaces a packet crosses, traced with eBPF.")
    parser.add_argument("--version", action="version", version=f"pktpath {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    trace = sub.add_parser("trace", help="show packets at every interface they cross",
                           description="Show each matching packet at every interface it "
                           "crosses, in every network namespace, both ways. Flags combine "
                           "with AND; with no flag every packet is traced.",
                           epilog=TRACE_EXAMPLES)
    if command in (None, "trace"):
        _trace_flags(trace)

    ping = sub.add_parser("ping", help="send probes and show, mtr-style, where they go",
                          description="Send probes (ICMP echo, UDP or TCP SYN) from a network "
                          "namespace, trace only them, and show per interface and direction "
                          "how many were seen and how long after sending. A live table on a "
                          "terminal (q quits, p pauses, r resets); else, or with --report, "
                          "the final table and the path diagram.", epilog=PING_EXAMPLES)
    if command in (None, "ping"):
        _ping_flags(ping)

    demo = sub.add_parser("demo", help="build a small namespace network, trace a ping across it",
                          description="Build a docker-like network in temporary namespaces (a "
                          "'host' with bridge docker0, a veth into a 'container'), ping the "
                          "container while tracing, print the path, and remove everything.",
                          epilog=DEMO_EXAMPLES)
    _output_flags(demo)
    demo.add_argument("-c", "--count", type=_positive, default=3, metavar="N",
                      help="pings to send (default 3)")

    drops = sub.add_parser(
        "drops", help="every drop on this host, counted in the kernel, live like top",
        description="Count every packet the kernel drops, by namespace, interface, drop reason "
        "and kernel function, at almost no cost (a per-CPU map, nothing per packet in user "
        "space), and show the counts of each interval sorted by rate.", epilog=DROPS_EXAMPLES)
    if command in (None, "drops"):
        _drops_flags(drops)

    node_agent = sub.add_parser(
        "agent", help="the Kubernetes node agent (run by the DaemonSet)",
        description="Watch PacketTrace resources and trace those that concern this node, "
        "writing this node's hops into their status. Uses the in-cluster service account, "
        "else $KUBECONFIG.", epilog=AGENT_EXAMPLES)
    if command in (None, "agent"):
        _agent_flags(node_agent)
    return parser


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per event (keys in README.md)")


def filter_from_args(args: argparse.Namespace) -> tuple[TraceFilter, netns.Netns | None]:
    """The trace filter the flags ask for (and the --netns namespace), checked."""
    ns = netns.resolve(args.netns) if args.netns else None
    if args.interface:
        netns.find_interface(args.interface, ns)
    expression = " ".join(args.expression).strip()
    return TraceFilter(
        expression=compile_expression(expression) if expression else None,
        hosts=tuple(parse_host(h) for h in args.host),
        proto=parse_proto(args.proto) if args.proto else Proto.ANY,
        port=parse_port(args.port) if args.port else 0,
        netns=ns.inode if ns else 0,
        ifname=args.interface or "",
        track=not args.no_track,
    ).checked(), ns


def cmd_trace(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath trace``."""
    trace_filter, ns = filter_from_args(args)
    if args.nf_trace and args.no_drops:
        raise UsageError("--nf-trace names the rule behind a drop: it needs the drops "
                         "(leave out --no-drops)")
    require_tracing()
    require_btf()
    if args.nf_trace:
        require_network_admin("--nf-trace")
    hooks = select_hooks({flag for flag in FLAGS if getattr(args, flag[2:].replace("-", "_"))})
    probes = Probes.for_filter(trace_filter, hooks=hooks, hook_type=args.hook_type,
                               ring_bytes=args.buffer_size)
    # the kernel verifies the programs (most of a start) while the rest of pktpath imports
    probes.start()
    with contextlib.closing(probes):
        return _trace(args, out, err, trace_filter, ns, probes)


def _trace(args: argparse.Namespace, out: TextIO, err: TextIO, trace_filter: TraceFilter,
           ns: netns.Netns | None, probes: Probes) -> int:
    from pktpath.cli.stream import announce, run
    from pktpath.core.tracer import Tracer
    from pktpath.host.names import NetnsNames

    stop = threading.Event()
    nf: NfTrace | None = None
    if args.nf_trace:
        from pktpath.host.nftrace import NfTrace

        nf = NfTrace(trace_filter, [ns] if ns else None)
    names = NetnsNames()
    addresses = None
    if args.kubeconfig:
        from pktpath.k8s.services import service_names

        addresses = service_names(args.kubeconfig)
    sinks: list[Callable[[Hop], None]] = []
    path: FirstPath | None = None
    if args.diagram:
        from pktpath.view.diagram import FirstPath

        path = FirstPath(names)
        sinks.append(path)
    pcap = writer = None
    if args.write:
        from pktpath.view.pcapng import PcapngWriter, open_private

        pcap = open_private(args.write)
        writer = PcapngWriter(pcap, names)
        sinks.append(writer.write)
    with stop_on_signals(stop), pcap or contextlib.nullcontext(), \
            nf or contextlib.nullcontext(), \
            Tracer(trace_filter, probes=probes) as tracer:
        if nf is not None:
            for where in nf.removed_stale:
                message(err, f"removed {where}, left by a pktpath that was killed")
            spaces = ", ".join(n.name or n.path for n in nf.namespaces) or "no namespace"
            message(err, f"nftables tracing on in {spaces}")
        announce(tracer, err)
        run(tracer, stop, out, err, as_json=args.json, latency=args.latency, count=args.count,
            annotate=nf.annotate if nf else None, names=names,
            on_hop=_fan_out(sinks), addresses=addresses)
    if writer is not None:
        message(err, f"{writer.packets} packets written to {args.write}")
    if path is not None:
        from pktpath.view.diagram import draw

        out.write("\n" + (draw(path.stops) or "no packet traced: no path to draw\n"))
    return 0


def _fan_out(sinks: list[Callable[[Hop], None]]) -> Callable[[Hop], None] | None:
    """One function calling every sink with a hop (None for no sink)."""
    if not sinks:
        return None

    def call(hop: Hop) -> None:
        for sink in sinks:
            sink(hop)

    return call


def cmd_ping(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath ping``."""
    from pktpath.cli.ping import cmd_ping as run_ping

    return run_ping(args, out, err)


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath demo``."""
    from pktpath.cli.demo import run_demo

    return run_demo(out, err, as_json=args.json, pings=args.count)


def cmd_drops(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath drops``."""
    from pktpath.cli.drops import run_drops

    return run_drops(args, out, err)


def cmd_agent(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath agent``."""
    if not args.node:
        raise UsageError("the agent needs its node name: --node or $NODE_NAME")
    try:
        os.stat(args.host_netns)
    except FileNotFoundError:
        raise UsageError(f"the node's network namespace {args.host_netns} does not exist") from None
    except PermissionError:
        raise PktpathError(f"the node's network namespace {args.host_netns} cannot be opened "
                           "(permission denied): give the agent the host PID namespace and "
                           "CAP_SYS_PTRACE, or --host-netns /proc/self/ns/net when it shares the "
                           "host's network") from None
    if ":" not in args.listen or not args.listen.rpartition(":")[2].isdigit():
        raise UsageError(f"--listen {args.listen!r} is not HOST:PORT")
    require_tracing()
    require_btf()
    from pktpath.k8s.logs import configure_logging
    from pktpath.k8s.operator import run as run_agent

    configure_logging(err)
    from pktpath.k8s.drops import DropSettings

    drops = None if args.no_drop_watch else DropSettings(args.drop_series, args.drop_event_rate)
    return run_agent(args.node, args.host_netns, args.listen, args.hook_type, args.max_traces,
                     drops)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pktpath`` console script."""
    commands = {"trace": cmd_trace, "demo": cmd_demo, "agent": cmd_agent, "ping": cmd_ping,
                "drops": cmd_drops}
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and argv[0] in commands else None).parse_args(argv)
    try:
        return commands[args.command](args, sys.stdout, sys.stderr)
    except UsageError as exc:
        message(sys.stderr, f"{exc} (see 'pktpath {args.command} --help')")
        return exc.exit_code
    except PktpathError as exc:
        message(sys.stderr, str(exc))
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
