"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
from typing import TextIO


class JsonFormatter(logging.Formatter):
    """time, level, logger, message (and the exception), as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = f"{ref.get('namespace', '')}/{ref.get('name', '')}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(stream: TextIO, level: int = logging.INFO) -> None:
    """Send every logger's records to stream as JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
