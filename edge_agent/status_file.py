"""The daemon's health snapshot on disk, so `edge-agent status` works without a broker.

Written atomically (temp file + rename) into the storage dir every few seconds.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

STATUS_NAME = "status.json"


def write_status(storage_dir: Path, snapshot: dict) -> None:
    storage_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=storage_dir, prefix=".status-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(snapshot, f, indent=1, sort_keys=True)
        os.replace(tmp, storage_dir / STATUS_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(storage_dir: Path) -> dict | None:
    """The last snapshot, or None when the daemon never wrote one here."""
    try:
        return json.loads((storage_dir / STATUS_NAME).read_text())
    except FileNotFoundError:
        return None
