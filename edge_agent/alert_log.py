"""The technicians' local alert log: every alert the agent raised or cleared, the evidence
that raised it, and the technicians' acknowledgements, readable with no broker and no
running daemon (``edge-agent alerts``).

One SQLite file (stdlib ``sqlite3``, WAL, ``synchronous=NORMAL``: a power cut can lose the
last transactions, never corrupt the file) in ``[storage] dir``, ``alerts.sqlite3``. The
daemon writes it from the processing thread; ``edge-agent alerts`` and ``alerts ack`` open it
from another process (SQLite's file locking; ``busy_timeout`` so neither side fails on a
short lock). Tables:

* ``alerts``: one row per alert id (raised: ``state`` open; cleared: state, cleared_at), with
  its full message as JSON;
* ``evidence``: the raw samples (float32) of the windows that raised it, at most
  ``EVIDENCE_WINDOWS`` per alert; the whole table bounded by ``evidence_max_mb`` (the oldest
  evidence of cleared alerts goes first, then the oldest of any; counted);
* ``acks``: who acknowledged which alert, when, with which verdict (``confirmed`` /
  ``false_alarm``), where (``origin``: ``local``, the CLI on site, or ``fleet``, the
  ``cmd/ack`` topic: commands.py), and whether the daemon has handed it to the outbox yet
  (the fleet learns it when the link returns).

A verdict plus evidence is labelled data: ``export`` writes it for the build pipeline
(models/build.py ``--evidence DIR``): one ``.npz`` per acknowledged alert (``DE`` = its
evidence windows, one row each, ``fs``, ``rpm``) and an ``index.csv`` in the same shape as
the CWRU folder's (file, fs, rpm, label, verdict, alert id, type, model version), the label
being the alert's for ``confirmed`` and ``normal`` for ``false_alarm``.
"""
from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

FILE_NAME = "alerts.sqlite3"
EVIDENCE_WINDOWS = 8
VERDICTS = ("confirmed", "false_alarm")
ORIGINS = ("local", "fleet")
SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, opened_at REAL NOT NULL, cleared_at REAL, state TEXT NOT NULL,
    type TEXT NOT NULL, label TEXT, severity TEXT, channel TEXT, explanation TEXT,
    model_version TEXT, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evidence (
    alert_id TEXT NOT NULL, idx INTEGER NOT NULL, t_start_us INTEGER, fs REAL NOT NULL,
    rpm REAL, samples BLOB NOT NULL, PRIMARY KEY (alert_id, idx));
CREATE TABLE IF NOT EXISTS acks (
    alert_id TEXT PRIMARY KEY, by TEXT NOT NULL, verdict TEXT, time REAL NOT NULL,
    published INTEGER NOT NULL DEFAULT 0, origin TEXT NOT NULL DEFAULT 'local');
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


EVIDENCE_MAX_MB = 16.0  # evidence windows kept, all alerts together, by default


class AlertLogError(Exception):
    """A clear, one-line problem with the alert log (unknown id, unreadable file ...)."""


@dataclass
class Evidence:
    samples: np.ndarray
    fs: float
    rpm: float | None
    t_start_us: int | None = None


class AlertLog:
    def __init__(self, storage_dir: str | Path, evidence_max_mb: float = EVIDENCE_MAX_MB, create: bool = True) -> None:
        self.path = Path(storage_dir) / FILE_NAME
        if not create and not self.path.exists():
            raise AlertLogError(f"no alert log at {self.path} (the daemon has not raised an alert with this storage dir)")
        self.evidence_max_bytes = int(evidence_max_mb * 1024 * 1024)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise AlertLogError(f"alert log {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Columns added since a log was created: ``acks.origin`` (agent 0.1, issue #7)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(acks)")}
        if "origin" not in columns:
            self._db.execute("ALTER TABLE acks ADD COLUMN origin TEXT NOT NULL DEFAULT 'local'")

    def close(self) -> None:
        self._db.close()

    # -- the daemon's side ------------------------------------------------------------------
    def record(self, msg: dict, evidence: Sequence[Evidence] = ()) -> None:
        """Store a raised (``state`` open) or cleared alert message, with the evidence of a
        raised one."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if msg.get("state") == "cleared":
                self._db.execute("UPDATE alerts SET state='cleared', cleared_at=?, message=? WHERE id=?",
                                 (msg.get("cleared_at", time.time()), json.dumps(msg), msg["id"]))
                return
            self._db.execute(
                "INSERT OR REPLACE INTO alerts (id, opened_at, state, type, label, severity, channel, explanation, "
                "model_version, message) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?)",
                (msg["id"], msg.get("time", time.time()), msg.get("type", ""), msg.get("label"), msg.get("severity"),
                 msg.get("channel"), msg.get("explanation"), msg.get("model_version"), json.dumps(msg)))
            for i, ev in enumerate(list(evidence)[-EVIDENCE_WINDOWS:]):
                self._db.execute(
                    "INSERT OR REPLACE INTO evidence (alert_id, idx, t_start_us, fs, rpm, samples) VALUES (?, ?, ?, ?, ?, ?)",
                    (msg["id"], i, ev.t_start_us, float(ev.fs), None if ev.rpm is None else float(ev.rpm),
                     np.ascontiguousarray(ev.samples, dtype="<f4").tobytes()))
            self._bound_evidence()

    def _bound_evidence(self) -> None:
        """Evidence over the cap: the oldest windows of cleared alerts go first, then those of
        open ones. One ordered pass picks every victim and one statement deletes them (an
        eviction per row, each with its own sort, cost 5 ms a record at the cap)."""
        total = self._db.execute("SELECT COALESCE(SUM(LENGTH(samples)), 0) FROM evidence").fetchone()[0]
        excess = total - self.evidence_max_bytes
        if excess <= 0:
            return
        victims: list[tuple[str, int]] = []
        for alert_id, idx, size in self._db.execute(
                "SELECT e.alert_id, e.idx, LENGTH(e.samples) FROM evidence e JOIN alerts a ON a.id = e.alert_id "
                "ORDER BY (a.state = 'open'), a.opened_at, e.idx"):
            victims.append((alert_id, idx))
            excess -= size
            if excess <= 0:
                break
        if victims:
            self._db.executemany("DELETE FROM evidence WHERE alert_id=? AND idx=?", victims)
            self._db.execute("INSERT INTO counters (name, value) VALUES ('evidence_evicted', ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (len(victims),))

    def unpublished_acks(self) -> list[dict]:
        """Acknowledgements not yet handed to the outbox, oldest first, as ack messages."""
        with self._lock:
            rows = self._db.execute(
                "SELECT k.alert_id, k.by, k.verdict, k.time, a.type, a.label, a.channel, a.model_version, k.origin "
                "FROM acks k LEFT JOIN alerts a ON a.id = k.alert_id WHERE k.published = 0 ORDER BY k.time").fetchall()
        return [{"schema": 1, "alert_id": r[0], "by": r[1], "verdict": r[2], "time": r[3], "type": r[4],
                 "label": r[5], "channel": r[6], "model_version": r[7], "origin": r[8]} for r in rows]

    def mark_published(self, alert_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("UPDATE acks SET published = 1 WHERE alert_id = ?", [(i,) for i in alert_ids])

    # -- the technicians' side ----------------------------------------------------------------
    def resolve(self, alert_id: str) -> str:
        """The full id of ``alert_id`` or of the one alert whose id starts with it (>= 6 characters)."""
        if len(alert_id) < 6:
            raise AlertLogError(f"alert id {alert_id!r} is too short: give at least 6 characters")
        rows = self._db.execute("SELECT id FROM alerts WHERE id LIKE ? ESCAPE '\\' LIMIT 3",
                                (alert_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        if not rows:
            raise AlertLogError(f"no alert with id {alert_id!r} in {self.path}")
        if len(rows) > 1:
            raise AlertLogError(f"alert id {alert_id!r} is ambiguous: give more characters")
        return rows[0][0]

    def ack(self, alert_id: str, by: str, verdict: str | None = None, origin: str = "local") -> dict:
        """Record an acknowledgement (the latest one of an alert wins). ``origin`` local
        resolves an id prefix (people on site); fleet needs the exact id."""
        by = by.strip()
        if not by or len(by) > 100 or any(ord(c) < 32 for c in by):
            raise AlertLogError("--by must be a name of 1 to 100 printable characters")
        if verdict is not None and verdict not in VERDICTS:
            raise AlertLogError(f"--verdict must be one of {', '.join(VERDICTS)}")
        if origin not in ORIGINS:
            raise AlertLogError(f"origin must be one of {', '.join(ORIGINS)}")
        if origin == "local":
            full = self.resolve(alert_id)
        else:
            with self._lock:
                if self._db.execute("SELECT 1 FROM alerts WHERE id = ?", (alert_id,)).fetchone() is None:
                    raise AlertLogError(f"no alert with id {alert_id!r} in {self.path}")
            full = alert_id
        now = time.time()
        with self._lock, self._db:
            self._db.execute("INSERT INTO acks (alert_id, by, verdict, time, published, origin) VALUES (?, ?, ?, ?, 0, ?) "
                             "ON CONFLICT(alert_id) DO UPDATE SET by=excluded.by, verdict=excluded.verdict, "
                             "time=excluded.time, published=0, origin=excluded.origin", (full, by, verdict, now, origin))
        return {"alert_id": full, "by": by, "verdict": verdict, "time": now, "origin": origin}

    def list(self, open_only: bool = False, limit: int = 1000) -> list[dict]:
        q = ("SELECT a.id, a.opened_at, a.cleared_at, a.state, a.type, a.label, a.severity, a.channel, a.explanation, "
             "a.model_version, k.by, k.verdict, k.time, k.published, k.origin, "
             "(SELECT COUNT(*) FROM evidence e WHERE e.alert_id = a.id) "
             "FROM alerts a LEFT JOIN acks k ON k.alert_id = a.id")
        if open_only:
            q += " WHERE a.state = 'open'"
        q += " ORDER BY a.opened_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(q, (limit,)).fetchall()
        keys = ("id", "opened_at", "cleared_at", "state", "type", "label", "severity", "channel", "explanation",
                "model_version", "ack_by", "verdict", "ack_time", "ack_published", "ack_origin", "evidence_windows")
        return [dict(zip(keys, r)) for r in rows]

    def open_messages(self, limit: int = 10000) -> list[dict]:
        """The full messages of the alerts open in the log, oldest first (what a restarted
        agent takes over or clears). Rows whose message is not a JSON object are skipped."""
        with self._lock:
            rows = self._db.execute("SELECT message FROM alerts WHERE state = 'open' ORDER BY opened_at LIMIT ?",
                                    (limit,)).fetchall()
        out = []
        for (text,) in rows:
            try:
                msg = json.loads(text)
            except (TypeError, ValueError):
                continue
            if isinstance(msg, dict):
                out.append(msg)
        return out

    def evidence(self, alert_id: str) -> list[Evidence]:
        with self._lock:
            rows = self._db.execute("SELECT samples, fs, rpm, t_start_us FROM evidence WHERE alert_id=? ORDER BY idx",
                                    (alert_id,)).fetchall()
        return [Evidence(np.frombuffer(r[0], dtype="<f4").copy(), r[1], r[2], r[3]) for r in rows]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    def export(self, out_dir: str | Path) -> list[dict]:
        """Write every acknowledged alert with a verdict and evidence as labelled data (see the
        module docstring); return the index rows."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock:
            rows = self._db.execute(
                "SELECT a.id, a.type, a.label, a.model_version, k.verdict FROM alerts a JOIN acks k ON k.alert_id = a.id "
                "WHERE k.verdict IS NOT NULL ORDER BY a.opened_at").fetchall()
        index = []
        for alert_id, kind, label, model, verdict in rows:
            ev = self.evidence(alert_id)
            if not ev:
                continue
            n = min(len(e.samples) for e in ev)
            name = f"alert-{alert_id[:12]}.npz"
            fs = ev[-1].fs
            rpm = ev[-1].rpm
            np.savez(out / name, DE=np.stack([e.samples[:n] for e in ev]), fs=fs, rpm=np.nan if rpm is None else rpm)
            index.append({"file": name, "fs": fs, "rpm": rpm, "label": (label or kind) if verdict == "confirmed" else "normal",
                          "verdict": verdict, "alert_id": alert_id, "type": kind, "model_version": model,
                          "windows": len(ev)})
        with open(out / "index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file", "fs", "rpm", "label", "verdict", "alert_id", "type",
                                              "model_version", "windows"])
            w.writeheader()
            w.writerows(index)
        return index


def format_table(rows: list[dict]) -> str:
    """The technicians' table: newest first, one line an alert, then its explanation."""
    if not rows:
        return "no alerts"
    out = [f"{'id':<12} {'opened (UTC)':<19} {'state':<8} {'type':<12} {'severity':<8} {'channel':<14} ack"]
    for r in rows:
        opened = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["opened_at"]))
        ack = (f"{r['ack_by']} ({r['verdict'] or 'no verdict'}{', from the fleet' if r.get('ack_origin') == 'fleet' else ''})"
               if r["ack_by"] else "-")
        out.append(f"{r['id'][:12]:<12} {opened:<19} {r['state']:<8} {r['type']:<12} {r['severity'] or '-':<8} "
                   f"{(r['channel'] or '-')[:14]:<14} {ack}")
        if r["explanation"]:
            out.append(f"    {r['explanation']}")
    return "\n".join(out)


def as_json_rows(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, sort_keys=True, default=_jsonable)


def _jsonable(v: Any) -> Any:
    return float(v) if isinstance(v, (np.floating,)) else str(v)
