"""Commands from the fleet: what arrives on ``{prefix}/{site}/{device}/cmd/...``, checked
before anything acts on it.

The network is not trusted: a command is a small JSON object, read with limits (size,
schema, types, lengths), never executed, never used as a path; an alert id is matched
exactly (the CLI's prefix match is for people on site, not for the network). A command
that fails a check is refused with one reason (``CommandError.reason``), which the agent
counts and logs; it changes nothing.

Commands now: ``cmd/ack``, an acknowledgement made on the fleet side (e.g. a remote
engineer who looked at the evidence), recorded in the local alert log like a technician's
``edge-agent alerts ack`` and confirmed on the ``ack`` topic with ``"origin": "fleet"``.
Model updates (issue #8) use their own topics.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edge_agent.alert_log import VERDICTS

SCHEMA = 1
MAX_BYTES = 4096
KINDS = ("ack",)  # the last topic segment after cmd/
_ALERT_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as the agent makes them
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class CommandError(ValueError):
    """A refused command: ``reason`` is the counter's name, the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AckCommand:
    alert_id: str
    by: str
    verdict: str | None
    request_id: str | None


def parse_ack(payload: bytes) -> AckCommand:
    """Check a ``cmd/ack`` payload; raise CommandError naming the first problem.

    ``{"schema": 1, "alert_id": "<32 hex>", "by": "NAME", "verdict": "confirmed" |
    "false_alarm" | null, "request_id": "..."}`` (verdict and request_id optional)."""
    if len(payload) > MAX_BYTES:
        raise CommandError("oversize", f"{len(payload)} bytes, at most {MAX_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandError("json", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError("json", f"not a JSON object but {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise CommandError("schema", f"schema must be {SCHEMA}, got {doc.get('schema')!r}")
    alert_id = doc.get("alert_id")
    if not isinstance(alert_id, str) or not _ALERT_ID.fullmatch(alert_id):
        raise CommandError("field", "alert_id must be the alert's full id: 32 lower-case hex digits")
    by = doc.get("by")
    if not isinstance(by, str) or not by.strip() or len(by) > 100 or any(ord(c) < 32 or ord(c) == 127 for c in by):
        raise CommandError("field", "by must be a name of 1 to 100 printable characters")
    verdict = doc.get("verdict")
    if verdict is not None and verdict not in VERDICTS:
        raise CommandError("field", f"verdict must be one of {', '.join(VERDICTS)} or absent")
    request_id = doc.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id)):
        raise CommandError("field", "request_id must be 1 to 64 letters, digits, '_', '.', ':' or '-'")
    return AckCommand(alert_id, by.strip(), verdict, request_id)
