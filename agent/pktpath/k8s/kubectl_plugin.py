"""``kubectl pktpath SRC DST``: create a PacketTrace, follow its status, print the mtr report.

Installed as the ``kubectl-pktpath`` command, which kubectl runs for ``kubectl pktpath``. SRC
and DST are pod names (``namespace/name`` or in ``-n``) or IP addresses. On a terminal the
status is followed in the live table; at the end come the report and the path diagram. The
PacketTrace stays (``kubectl get packettrace NAME`` shows it) unless ``--rm`` is given.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, NoReturn, TextIO

from pktpath.core.hopstats import Table
from pktpath.k8s.status import table_of
from pktpath.view.diagram import diagram_of
from pktpath.view.mtr import report_text

GROUP, VERSION, PLURAL = "pktpath.dev", "v1alpha1", "packettraces"
EXAMPLES = """\
examples:
  kubectl pktpath web-0 db-1 -n shop                     5 ICMP probes, report and diagram
  kubectl pktpath web-0 db-1 -n shop --tcp --port 5432   TCP SYNs to PostgreSQL
  kubectl pktpath shop/web-0 10.96.0.10 -c 10 --rm       to an IP; delete the trace after
  kubectl pktpath web-0 svc/db -n shop --tcp --port 5432 through a Service: names the endpoint
"""


class PluginError(Exception):
    """A failure to tell the user in one sentence."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"kubectl pktpath: {message} (see 'kubectl pktpath --help')\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The plugin's command line."""
    parser = _Parser(prog="kubectl pktpath", epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Trace probes from one pod to another (or an IP) with the "
                     "pktpath agents and show, per interface, where they went.")
    parser.add_argument("source", help="pod name, namespace/name, or IP")
    parser.add_argument("destination",
                        help="pod name, namespace/name, IP, or svc/NAME (a Service: with --tcp "
                             "or --udp and its --port)")
    parser.add_argument("-n", "--namespace", default=None,
                        help="namespace of the PacketTrace and of pods named without one "
                        "(default: the kubeconfig context's)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--tcp", action="store_true", help="TCP SYN probes (needs --port)")
    kind.add_argument("--udp", action="store_true", help="UDP probes (needs --port)")
    parser.add_argument("--port", type=int, default=0, help="destination port")
    parser.add_argument("-c", "--count", type=int, default=5, help="probes (default 5)")
    parser.add_argument("--interval", default="1s", help="time between probes (default 1s)")
    parser.add_argument("--timeout", default="30s", help="how long the trace may take")
    parser.add_argument("--rm", action="store_true", help="delete the PacketTrace at the end")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file ($KUBECONFIG)")
    return parser


def endpoint(text: str, namespace: str) -> dict[str, str]:
    """A PacketTrace end from the command line's word: an IP, ``[NS/]POD``, or
    ``svc/NAME`` (``svc/NS/NAME``, ``service/...``) for a Service."""
    try:
        return {"ip": str(ipaddress.ip_address(text))}
    except ValueError:
        pass
    kind, _, rest = text.partition("/")
    if kind in ("svc", "service") and rest:
        ns, _, name = rest.rpartition("/")
        return {"service": name, "namespace": ns or namespace}
    ns, _, pod = text.rpartition("/")
    return {"pod": pod, "namespace": ns or namespace}


def packet_trace(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    """The PacketTrace the command line asks for."""
    if (args.tcp or args.udp) and not 0 < args.port < 65536:
        raise PluginError("--tcp and --udp need --port N (1-65535)")
    if args.count < 1:
        raise PluginError("-c must be at least 1")
    spec: dict[str, Any] = {
        "source": endpoint(args.source, namespace),
        "destination": endpoint(args.destination, namespace),
        "protocol": "tcp" if args.tcp else "udp" if args.udp else "icmp",
        "probe": {"count": args.count, "interval": args.interval},
        "timeout": args.timeout,
    }
    if "service" in spec["source"]:
        raise PluginError("the source is a pod or an IP (probes start there), not a Service")
    if "service" in spec["destination"] and not (args.tcp or args.udp):
        raise PluginError("a Service is traced with --tcp or --udp and its --port (kube-proxy "
                          "does not forward ICMP to its endpoints)")
    if args.tcp or args.udp:
        spec["port"] = args.port
    base = spec["source"].get("pod") or "ip"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PacketTrace",
            "metadata": {"generateName": f"pktpath-{base}-"[:50], "namespace": namespace},
            "spec": spec}


def follow(api: Any, namespace: str, name: str, out: TextIO, live: bool,
           timeout: float) -> Mapping[str, Any]:
    """Poll the PacketTrace until it finishes; the live table on a terminal meanwhile."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}

    def refresh() -> None:
        nonlocal status
        body = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = body.get("status") or {}
        time.sleep(0.3)

    def finished() -> bool:
        return status.get("phase") in ("Succeeded", "Failed") or time.monotonic() > deadline

    if live:
        from pktpath.view.live import live_table

        stop = threading.Event()
        view = Table()
        with live_table(view, f"kubectl pktpath {name}",
                        lambda: f"{status.get('phase', 'Pending')}: {status.get('result', '')}",
                        on_key=lambda key: stop.set() if key in "qQ" else None,
                        out=out) as redraw:
            while not stop.is_set() and not finished():
                refresh()
                fresh = table_of(status)
                view.rows, view.sent_ns = fresh.rows, fresh.sent_ns
                redraw()
    else:
        while not finished():
            refresh()
    return status


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
         ) -> int:
    """Entry point of ``kubectl-pktpath``."""
    args = build_parser().parse_args(argv)
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        _contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig)
        namespace = args.namespace or current.get("context", {}).get("namespace") or "default"
        api = client.CustomObjectsApi()
        body = packet_trace(args, namespace)
        created: Any = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           body)
        name = str(created["metadata"]["name"])
        err.write(f"kubectl pktpath: packettrace {namespace}/{name} created\n")
        try:
            status = follow(api, namespace, name, out, out.isatty(),
                            timeout=_seconds(args.timeout) + 30)
        finally:
            if args.rm:
                api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except PluginError as exc:
        err.write(f"kubectl pktpath: {exc}\n")
        return 2
    except ApiException as exc:
        err.write(f"kubectl pktpath: the API server refused: {exc.status} {exc.reason}\n")
        return 1
    except config.ConfigException as exc:
        err.write(f"kubectl pktpath: no usable kubeconfig: {exc}\n")
        return 1
    if status.get("phase") not in ("Succeeded", "Failed"):
        err.write(f"kubectl pktpath: the trace did not finish in time (phase "
                  f"{status.get('phase', 'Pending')}): is the pktpath agent DaemonSet running "
                  "on the pods' nodes?\n")
    table = table_of(status)
    out.write(report_text(table, str(status.get("from", args.source)),
                          str(status.get("to", args.destination)),
                          str(status.get("startTime", ""))))
    out.write("\n" + diagram_of(table))
    out.write(f"\n{status.get('phase', 'Unknown')}: {status.get('result', '')}\n")
    return 0 if status.get("phase") == "Succeeded" else 1


def _seconds(text: str) -> float:
    from pktpath.k8s.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise PluginError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
