"""The tracing core: everything between the kernel and a :class:`~pktpath.core.tracer.Hop`.

Stages, in the order a packet meets them: ``hooks`` (which tracepoints, and what is missing
without each), ``filters`` and ``expression`` (what the kernel keeps), ``libbpf`` and
``loader`` (the BPF object loaded, configured and attached; its ring buffer and maps),
``event`` (the record layout, mirror of ``bpf/event.h``), ``record`` (one record decoded),
``packet`` (header decoding),
``fate``, ``symbols`` and ``latency`` (enrichment: why a packet stopped, kernel names, time
since the first hop), ``tracer`` (records into hops, the one read loop), ``hopstats`` (per-hop
statistics of probes); beside the tracer, ``dropwatch`` (every drop counted in the kernel by
place, read as totals). The core imports no other wing.
"""
