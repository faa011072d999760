"""The agent's Prometheus metrics and health endpoint (/metrics, /healthz)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# name -> (type, help)
METRICS = {
    "traces_running": ("gauge", "PacketTraces being traced on this node"),
    "programs_attached": ("gauge", "BPF programs attached"),
    "events_seen": ("counter", "events read from the ring buffers"),
    "events_lost": ("counter", "events the kernel could not deliver (ring buffer full)"),
    "probes_sent": ("counter", "probes sent from source pods on this node"),
    "status_writes": ("counter", "PacketTrace status writes"),
    "api_errors": ("counter", "Kubernetes API calls that failed"),
}


class Metrics:
    """Counters and gauges, safe to update from any thread."""

    def __init__(self) -> None:
        self._values = dict.fromkeys(METRICS, 0)
        self._lock = threading.Lock()
        self._node = ""
        self._drops: dict[tuple[str, str, str, str], int] | None = None  # None: no drop watch
        self._not_counted = 0

    def set_drops(self, node: str, series: dict[tuple[str, str, str, str], int],
                  not_counted: int) -> None:
        """The drop watch's series (namespace, pod, interface, reason) -> total."""
        with self._lock:
            self._node, self._drops, self._not_counted = node, dict(series), not_counted

    def add(self, name: str, value: int = 1) -> None:
        """Add value (negative for a gauge going down)."""
        with self._lock:
            self._values[name] += value

    def render(self) -> str:
        """The Prometheus text exposition."""
        lines = []
        with self._lock:
            for name, (kind, help_text) in METRICS.items():
                full = f"pktpath_{name}" + ("_total" if kind == "counter" else "")
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}",
                          f"{full} {self._values[name]}"]
            if self._drops is not None:
                lines += ["# HELP pktpath_drops_total packets the kernel dropped in this node's "
                          "namespaces, by pod, interface and reason",
                          "# TYPE pktpath_drops_total counter"]
                for (namespace, pod, interface, reason), value in sorted(self._drops.items()):
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in (
                        ("node", self._node), ("namespace", namespace), ("pod", pod),
                        ("interface", interface), ("reason", reason)))
                    lines.append(f"pktpath_drops_total{{{text}}} {value}")
                lines += ["# HELP pktpath_drops_not_counted_total drops the drop watch could not "
                          "count (its map was full)", "# TYPE pktpath_drops_not_counted_total "
                          "counter", f"pktpath_drops_not_counted_total {self._not_counted}"]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A label value as Prometheus' text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve(listen: str, metrics: Metrics, ready: threading.Event) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on listen (host:port) from a background thread."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, metrics.render(), "text/plain; version=0.0.4")
            elif self.path in ("/healthz", "/readyz"):
                ok = ready.is_set()
                self._reply(200 if ok else 503, "ok\n" if ok else "starting\n", "text/plain")
            else:
                self._reply(404, "not found\n", "text/plain")

        def _reply(self, code: int, text: str, kind: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
