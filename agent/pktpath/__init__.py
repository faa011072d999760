"""pktpath: where did my packet go? Traces packets across interfaces, bridges, veths, network
namespaces and nodes with eBPF on kernel tracepoints.

The tracing core (probes, event, packet, tracer) knows nothing of Kubernetes or terminals; the
CLI (cli) and the Kubernetes agent are thin front ends over it.
"""

__version__ = "0.1.0"
