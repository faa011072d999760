"""The ``pktpath`` command, a thin front end: flags in, hops out.

``main`` (the grammar and exit codes), ``stream`` (``trace``: hops written as they come, losses
reported), ``ping`` and ``ping_session`` (``pktpath ping``), ``drops`` (``pktpath drops``),
``demo`` (the embedded network).
"""
