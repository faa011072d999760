"""Views of hops: how a user sees them.

``hops`` (a hop as one text line or one JSON object: the one serialiser), ``mtr`` (mtr's
report shapes: text, JSON, CSV), ``live`` (the live table), ``diagram`` (the path across
namespaces), ``pcapng`` (``-w`` files for Wireshark), ``drops`` (the drop watch's rows: table
and JSON). Views import the core only.
"""
