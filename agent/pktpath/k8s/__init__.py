"""The Kubernetes front end: the node agent (PacketTraces traced on each node), kubectl pktpath.

One agent runs per node. It handles the traces that concern its node, maps pod network
namespaces to pod names, runs the tracing core filtered on the trace's addresses and its
node's namespaces, sends probes from the source pod, and writes its node's part of the status.
Beside the traces, ``drops`` counts every drop in the node's namespaces by pod for /metrics
(``metrics``) and Events.
"""
