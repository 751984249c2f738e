"""Logging to stdout for journald: plain lines or JSON lines, level from config.

Under systemd, stdout goes to the journal with its own timestamps, so plain lines carry
no time; JSON lines do (for shipping logs elsewhere).
"""
from __future__ import annotations

import json
import logging
import sys
import time

PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(level: str = "info", fmt: str = "plain", stream=None) -> None:
    """Route the root logger to ``stream`` (stdout) in ``fmt`` ("plain" or "json")."""
    handler = logging.StreamHandler(stream or sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.Formatter.converter = time.gmtime
