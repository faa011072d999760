"""The host around the tracer: namespaces, names, privileges, probes and nftables.

``netns`` (namespaces by name, path or inode; sockets inside them), ``names`` (a namespace's
name: pod, ``ip netns``, container), ``places`` (what ``--from`` names), ``privileges``
(capabilities, checked before anything loads), ``pinger`` and ``probing`` (packets of our own,
recognisable by their identity), ``nftrace`` (the nftables rule behind a drop).
"""
