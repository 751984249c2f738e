"""``edge-agent fleet status``: one line per device, from what the devices leave on the broker.

Read (QoS 1) for ``--seconds`` (retained messages arrive at once), or redrawn every second
with ``--watch``:

* ``{prefix}/+/+/status`` (retained): online/offline, agent version, model, group, and
  ``open_alerts`` when the device says it;
* ``{prefix}/+/+/model/progress`` (retained): the latest update's state, pack version,
  chunks received, and its end (``healthy``, ``rejected``, ``rolled_back``) with the reason;
* ``{prefix}/+/+/model/offer`` (retained while an update runs): "offered" before a device
  answered;
* ``{prefix}/+/+/summary`` (not retained; seen with ``--watch`` or a long ``--seconds``):
  ``alerts.open`` when a summary has it.

The model column is the status's ``model``, or the progress's ``active_version`` when that
is newer. Anything unknown is ``-``. Messages that are not JSON objects with ``"schema": 1``
are skipped and counted (one line on stderr). An empty retained message removes what it
replaces (a cleared offer). Rows are sorted by site, then device.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge_agent.fleet_mqtt import (
    FleetConnection, FleetMqttError, MqttOptions, add_broker_arguments, clean, device_topic, load_json_object, positive_float,
    options_from_args,
)

PROG = "edge-agent fleet status"
END_STATES = ("healthy", "rejected", "rolled_back")
MAX_SUMMARY_BYTES = 16 * 1024 * 1024
KINDS = ("status", "model/progress", "model/offer", "summary")
COLUMNS = ("DEVICE", "ONLINE", "AGENT", "MODEL", "GROUP", "UPDATE", "HEALTH", "ALERTS")


@dataclass
class _Seen:
    status: dict | None = None
    progress: dict | None = None
    offer: dict | None = None
    open_alerts_summary: int | None = None
    last: float = 0.0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _count(v: Any) -> int | None:
    return v if type(v) is int and v >= 0 else None


def _str(v: Any, limit: int = 80) -> str | None:
    return clean(v, limit) if isinstance(v, str) and v.strip() else None


@dataclass
class FleetView:
    """The latest of each kind per device; :meth:`add` never raises for what arrives."""

    prefix: str
    devices: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)

    def add(self, topic: str, payload: bytes, received: float | None = None) -> None:
        parts = device_topic(self.prefix, topic)
        if parts is None or parts[2] not in KINDS:
            return
        site, device, kind = parts
        key = (site, device)
        if not payload:  # a cleared retained message
            seen = self.devices.get(key)
            if seen is not None:
                if kind == "status":
                    seen.status = None
                elif kind == "model/progress":
                    seen.progress = None
                elif kind == "model/offer":
                    seen.offer = None
                if seen.status is None and seen.progress is None and seen.offer is None and seen.open_alerts_summary is None:
                    del self.devices[key]
            return
        obj, why = load_json_object(payload, MAX_SUMMARY_BYTES if kind == "summary" else 64 * 1024)
        if obj is None:
            self.skipped[f"{kind}: {why}"] += 1
            return
        seen = self.devices.setdefault(key, _Seen())
        seen.last = received if received is not None else time.time()
        if kind == "status":
            seen.status = obj
        elif kind == "model/progress":
            seen.progress = obj
        elif kind == "model/offer":
            seen.offer = obj
        else:
            alerts = obj.get("alerts")
            n = _count(alerts.get("open")) if isinstance(alerts, dict) else None
            if n is not None:
                seen.open_alerts_summary = n

    def rows(self) -> list[dict]:
        return [self._row(site, device, seen) for (site, device), seen in sorted(self.devices.items())]

    @staticmethod
    def _row(site: str, device: str, seen: _Seen) -> dict:
        st, pr, of = seen.status or {}, seen.progress or {}, seen.offer or {}
        state = _str(st.get("state"), 20)
        online = {"online": True, "offline": False}.get(state or "")
        st_time, pr_time = _num(st.get("time")), _num(pr.get("time"))
        model = _str(st.get("model"))
        active = _str(pr.get("active_version"))
        if active and (model is None or (pr_time is not None and (st_time is None or pr_time > st_time))):
            model = active
        update_state = _str(pr.get("state"), 20)
        update_id = _str(pr.get("update_id"), 32)
        pack_version = _str(pr.get("pack_version"))
        received, chunks = _count(pr.get("received")), _count(pr.get("chunks"))
        offer_id = _str(of.get("update_id"), 32)
        if offer_id and offer_id != update_id:  # offered; the device has not answered this one yet
            pack = of.get("pack") if isinstance(of.get("pack"), dict) else {}
            update_state, update_id, pack_version = "offered", offer_id, _str(pack.get("version"))
            received, chunks, pr_time = None, _count(of.get("chunks")), _num(of.get("time"))
        reason = _str(pr.get("reason")) if update_state != "offered" else None
        health = update_state if update_state in END_STATES else None
        open_alerts = _count(st.get("open_alerts"))
        if open_alerts is None:
            open_alerts = seen.open_alerts_summary
        return {
            "site": clean(site, 80), "device": clean(device, 80), "online": online, "state": state,
            "agent_version": _str(st.get("agent_version")), "model": model, "group": _str(st.get("group")),
            "update_state": update_state, "update_id": update_id, "pack_version": pack_version,
            "received": received, "chunks": chunks, "health": health, "reason": reason,
            "open_alerts": open_alerts, "status_time": st_time, "progress_time": pr_time,
        }


def _cell(row: dict, column: str) -> str:
    if column == "DEVICE":
        return f"{row['site']}/{row['device']}"
    if column == "ONLINE":
        return {True: "yes", False: "no"}.get(row["online"], row["state"] or "-")
    if column == "AGENT":
        return row["agent_version"] or "-"
    if column == "MODEL":
        return row["model"] or "-"
    if column == "GROUP":
        return row["group"] or "-"
    if column == "UPDATE":
        if not row["update_state"]:
            return "-"
        text = row["update_state"]
        if row["update_state"] in ("downloading", "offered") and row["chunks"] is not None:
            text += f" {row['received'] if row['received'] is not None else 0}/{row['chunks']}"
        return text + (f" {row['pack_version']}" if row["pack_version"] else "")
    if column == "HEALTH":
        if not row["health"]:
            return "-"
        return row["health"] + (f" ({row['reason']})" if row["reason"] else "")
    if column == "ALERTS":
        return "-" if row["open_alerts"] is None else str(row["open_alerts"])
    raise KeyError(column)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no devices: nothing retained under this prefix)"
    cells = [list(COLUMNS)] + [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    online = sum(r["online"] is True for r in rows)
    lines.append(f"{len(rows)} device(s), {online} online")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
DESCRIPTION = """\
A table of every device under the prefix, from the retained status and model/progress
messages (and the latest summary when one arrives): online, agent version, model version,
group, update state with the pack version, health (the update's end: healthy, rejected or
rolled_back, with the reason), open alerts. '-' when a device has not said. --watch
redraws it every second until Ctrl-C; --json prints it once as a JSON list."""


def add_status_parser(fleet_sub: Any) -> argparse.ArgumentParser:
    """``fleet status`` under the ``fleet`` subcommands of the edge-agent parser."""
    p = fleet_sub.add_parser("status", help="table of the devices: online, versions, update state, health, alerts",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=positive_float, default=2.0, metavar="N",
                   help="collect for N seconds before printing (default 2)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    out.add_argument("--json", action="store_true", help="print once, as a JSON list of objects")
    add_broker_arguments(p)
    return p


def _drain(conn: FleetConnection, view: FleetView, until: float) -> None:
    while (left := until - time.monotonic()) > 0:
        msg = conn.get(min(left, 0.2))
        if msg is not None:
            view.add(msg.topic, msg.payload, msg.received)


def status(opts: MqttOptions, seconds: float = 2.0, watch: bool = False, as_json: bool = False,
           out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    conn = FleetConnection(opts, [f"{opts.prefix}/+/+/{k}" for k in KINDS], "status")
    try:
        conn.connect()
    except FleetMqttError as exc:
        print(f"{PROG}: {exc}", file=err)
        return 2
    view = FleetView(opts.prefix)
    try:
        if watch:
            tty = out.isatty()
            try:
                while True:
                    _drain(conn, view, time.monotonic() + 1.0)
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                    head = f"fleet status {opts.address} prefix {opts.prefix}  {stamp}  (Ctrl-C ends)"
                    print(("\x1b[H\x1b[2J" if tty else "\n") + head + "\n" + format_table(view.rows()), file=out,
                          flush=True)
            except KeyboardInterrupt:
                return 0
        _drain(conn, view, time.monotonic() + seconds)
    except KeyboardInterrupt:
        pass  # print what came
    finally:
        conn.close()
    rows = view.rows()
    if as_json:
        print(json.dumps(rows, indent=1, sort_keys=True), file=out)
    else:
        print(format_table(rows), file=out)
    if view.skipped:
        print(f"{PROG}: skipped malformed messages: " + ", ".join(f"{k} {v}" for k, v in sorted(view.skipped.items())),
              file=err)
    return 0


def run_fleet_status(args: argparse.Namespace) -> int:
    return status(options_from_args(args), args.seconds, args.watch, args.json)
