"""``edge-agent fleet push``: send a signed model pack to devices over MQTT (issue #8).

The operator's half of docs/UPDATES.md ("Transfer" and "Fleet side"):

1. the pack is checked here first: intact, signed (an unsigned pack is never pushed), and with
   ``--trusted-key`` signed by one of those keys;
2. the targets: ``SITE/DEVICE``, or a GROUP = every device whose retained ``status`` says
   ``"group": GROUP`` (collected for ``--discover-s`` seconds);
3. waves: with ``--canary P``, ceil(P % of the targets) devices (at least one; the first by
   ``site/device``) get the offer first and the others only once every canary reported
   ``healthy``; a canary that ends ``rejected`` or ``rolled_back`` halts the rollout (the
   others never get the offer). Without ``--canary``: one wave;
4. the offer (the transfer manifest, :func:`make_offer`) is published retained, QoS 1, on
   ``{base}/model/offer`` of each device of the wave; chunks are served on
   ``{base}/model/chunk/{update_id}/{index}`` when a device asks for them on
   ``{base}/model/request``; ``{base}/model/progress`` is followed (a line on stderr per
   change of state);
5. the end: every offered device in an end state (``healthy``, ``rejected``, ``rolled_back``),
   ``--timeout``, or Ctrl-C/SIGTERM. Every retained offer published is then cleared (an
   empty retained message), a table (or ``--json``) is printed; exit 0 only if every target
   is healthy, 130 after Ctrl-C/SIGTERM, else 2.

A device that answers an offer with ``active`` before asking for any chunk already runs this
pack (docs/UPDATES.md: "answered active at once"); it counts as healthy. A device that answers
``healthy`` at once (what edge_agent/updater.py does) is healthy anyway.

Nothing received is trusted: a request or progress message that is not what the spec says is
ignored and counted by reason (``--json``: ``garbage``), never acted on; messages about
another update or from a device that was not offered are counted under ``ignored``.

:class:`PushServer` is the protocol without I/O (it is given a ``publish`` function); the
command (:func:`run_fleet_push`) adds the pack checks, the broker and the terminal.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, TextIO

from edge_agent import update_transfer as transfer
from edge_agent.update_transfer import new_update_id  # noqa: F401 (part of this module's API)
from edge_agent.fleet_mqtt import (
    FleetConnection, FleetMqttError, MqttOptions, add_broker_arguments, clean, positive_float, device_name_problem,
    device_topic, load_json_object, options_from_args, wait_published,
)

PROG = "edge-agent fleet push"
MODES = ("shadow", "activate")
STATES = ("downloading", "verifying", "rejected", "shadow", "activating", "active", "healthy", "rolled_back")
END_STATES = ("healthy", "rejected", "rolled_back")
MAX_REQUEST_INDICES = 64
RESEND_AFTER_S = 1.0  # a chunk asked for again this soon after it was sent is not sent twice
CLEAR_TIMEOUT_S = 10.0
GARBAGE = {
    "oversize": "over 64 KiB",
    "json": "not a JSON object",
    "schema": "schema missing or not 1",
    "field": "update_id missing or not a string",
    "missing": f"missing not a list of 1 to {MAX_REQUEST_INDICES} chunk indices of the offer",
    "state": "state not one of " + ", ".join(STATES),
}
IGNORED = {
    "other_update": "about another update (e.g. an earlier one's retained progress)",
    "not_offered": "from a device that was not (yet) offered this update",
    "empty": "an empty message (a retained progress being cleared)",
}


class PushError(Exception):
    """The push cannot start; one line."""


# ------------------------------------------------------------------------------ the offer
def make_offer(pack_bytes: bytes, update_id: str, mode: str, chunk_size: int, *, name: str, version: str,
               now: float | None = None) -> tuple[dict, list[bytes]]:
    """The offer (docs/UPDATES.md, "Offer") as a JSON object, and the chunks it describes:
    the device side's own :func:`edge_agent.update_transfer.make_offer` (one definition of
    the wire form), which also checks that a device would parse it."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}, expected one of {MODES}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size {chunk_size} < 1")
    if not pack_bytes:
        raise ValueError("an empty pack")
    offer, chunks = transfer.make_offer(pack_bytes, update_id, mode, chunk_size, name=name, version=version, now=now)
    return json.loads(offer.to_json()), chunks


# ------------------------------------------------------------------------------ waves
def canary_count(targets: int, percent: float) -> int:
    """ceil(percent % of targets), at least 1, at most all (exact: 10 % of 20 is 2)."""
    if targets <= 0:
        return 0
    return min(targets, max(1, math.ceil(Fraction(str(percent)) * targets / 100)))


def plan_waves(targets: list[str], canary: float | None) -> list[list[str]]:
    """Sorted targets in one wave, or [canaries, the rest] (the rest may be absent)."""
    ordered = sorted(set(targets))
    if canary is None:
        return [ordered]
    n = canary_count(len(ordered), canary)
    return [ordered[:n], ordered[n:]] if n < len(ordered) else [ordered]


# ------------------------------------------------------------------------------ the protocol
@dataclass
class Device:
    name: str  # site/device
    wave: int  # 1-based
    offered_at: float | None = None
    state: str = ""  # "" until its first progress of this update
    received: int | None = None
    chunks: int | None = None
    reason: str = ""
    detail: str = ""
    pack_version: str = ""
    active_version: str = ""
    requests: int = 0
    chunks_sent: int = 0
    ended_at: float | None = None
    already_active: bool = False  # answered "active" without a transfer: it runs this pack already

    @property
    def ended(self) -> bool:
        return self.state in END_STATES or self.already_active

    @property
    def ok(self) -> bool:
        return self.state == "healthy" or self.already_active

    @property
    def failed(self) -> bool:
        return self.state in ("rejected", "rolled_back")

    def shown_state(self) -> str:
        if self.offered_at is None:
            return "not_offered"
        return self.state or "offered"

    def as_dict(self) -> dict:
        site, _, device = self.name.partition("/")
        return {"device": self.name, "site": site, "id": device, "wave": self.wave, "state": self.shown_state(),
                "ok": self.ok, "already_active": self.already_active, "received": self.received,
                "chunks": self.chunks, "reason": self.reason, "detail": self.detail,
                "pack_version": self.pack_version, "active_version": self.active_version,
                "offered_at": self.offered_at, "ended_at": self.ended_at, "requests": self.requests,
                "chunks_sent": self.chunks_sent}


def _count(v: Any) -> int | None:
    return v if type(v) is int and v >= 0 else None


def _text(v: Any, limit: int = 200) -> str:
    return clean(v, limit) if isinstance(v, str) else ""


class PushServer:
    """One update to a set of devices, driven by messages; publishes through ``publish(topic,
    payload, retain)`` (QoS 1) and reports lines through ``report``. Not thread-safe: one
    thread calls :meth:`start`, :meth:`handle` and reads the state."""

    def __init__(self, offer: dict, chunks: list[bytes], waves: list[list[str]], prefix: str,
                 publish: Callable[[str, bytes | str, bool], Any], report: Callable[[str], None] = lambda s: None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 resend_after: float = RESEND_AFTER_S) -> None:
        self.offer = offer
        self.offer_json = json.dumps(offer, separators=(",", ":"))
        self.update_id: str = offer["update_id"]
        self.chunks = chunks
        self.waves = [list(w) for w in waves if w]
        self.prefix = prefix
        self._publish = publish
        self._report = report
        self._clock = clock
        self._monotonic = monotonic
        self.resend_after = resend_after
        self.devices: dict[str, Device] = {d: Device(d, i + 1) for i, w in enumerate(self.waves) for d in w}
        self.wave_index = -1
        self.halted: str | None = None
        self.offer_topics: list[str] = []  # every retained offer published (to clear at the end)
        self.garbage: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.skipped_resends = 0
        self._sent_at: dict[tuple[str, int], float] = {}

    # -- topics ----------------------------------------------------------------------------
    def base(self, device: str) -> str:
        return f"{self.prefix}/{device}"

    def offer_topic(self, device: str) -> str:
        return f"{self.base(device)}/model/offer"

    def chunk_topic(self, device: str, index: int) -> str:
        return f"{self.base(device)}/model/chunk/{self.update_id}/{index}"

    # -- waves -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.wave_index < 0 and self.waves:
            self._next_wave()

    def _next_wave(self) -> None:
        self.wave_index += 1
        wave = self.waves[self.wave_index]
        if len(self.waves) > 1:
            what = "canary" if self.wave_index == 0 else "the rest"
            self._report(f"wave {self.wave_index + 1} of {len(self.waves)} ({what}): offering to {len(wave)} "
                         f"device(s): {_names(wave)}")
        else:
            self._report(f"offering to {len(wave)} device(s): {_names(wave)}")
        for name in wave:
            topic = self.offer_topic(name)
            self.offer_topics.append(topic)  # before publishing: cleared even if this is interrupted
            self.devices[name].offered_at = self._clock()
            self._publish(topic, self.offer_json, True)

    def _advance(self) -> None:
        if self.halted or self.wave_index < 0:
            return
        wave = [self.devices[d] for d in self.waves[self.wave_index]]
        last = self.wave_index == len(self.waves) - 1
        if last:
            return
        failed = [d for d in wave if d.failed]
        if failed:
            d = failed[0]
            why = f" ({d.reason})" if d.reason else ""
            rest = sum(len(w) for w in self.waves[self.wave_index + 1:])
            self.halted = f"canary {d.name} ended {d.state}{why}"
            self._report(f"halted: {self.halted}; the other {rest} device(s) do not get the offer")
            return
        if all(d.ok for d in wave):
            self._report(f"every canary is healthy ({len(wave)})")
            self._next_wave()

    @property
    def done(self) -> bool:
        if self.wave_index < 0:
            return False
        offered = [d for d in self.devices.values() if d.offered_at is not None]
        if not all(d.ended for d in offered):
            return False
        return bool(self.halted) or self.wave_index == len(self.waves) - 1

    @property
    def all_ok(self) -> bool:
        return bool(self.devices) and all(d.ok for d in self.devices.values())

    # -- messages --------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """A message on ``{prefix}/+/+/model/request`` or ``.../model/progress``; anything else
        is left alone. Never raises for what a device (or anyone) sends."""
        parts = device_topic(self.prefix, topic)
        if parts is None:
            return
        site, device, kind = parts
        if kind in ("model/request", "model/progress") and not payload:
            self.ignored["empty"] += 1  # a retained message being cleared
            return
        if kind == "model/request":
            self.on_request(f"{site}/{device}", payload)
        elif kind == "model/progress":
            self.on_progress(f"{site}/{device}", payload)

    def _junk(self, reason: str) -> None:
        self.garbage[reason] += 1

    def _ours(self, obj: dict, device: str) -> Device | None:
        uid = obj.get("update_id")
        if not isinstance(uid, str):
            self._junk("field")
            return None
        if uid != self.update_id:
            self.ignored["other_update"] += 1
            return None
        dev = self.devices.get(device)
        if dev is None or dev.offered_at is None:
            self.ignored["not_offered"] += 1
            return None
        return dev

    def on_request(self, device: str, payload: bytes) -> None:
        obj, why = load_json_object(payload)
        if obj is None:
            self._junk(why)
            return
        dev = self._ours(obj, device)
        if dev is None:
            return
        missing = obj.get("missing")
        n = len(self.chunks)
        if (not isinstance(missing, list) or not 1 <= len(missing) <= MAX_REQUEST_INDICES
                or not all(type(i) is int and 0 <= i < n for i in missing)):
            self._junk("missing")
            return
        dev.requests += 1
        now = self._monotonic()
        for i in dict.fromkeys(missing):  # each index once, in the order asked
            last = self._sent_at.get((device, i))
            if last is not None and now - last < self.resend_after:
                self.skipped_resends += 1
                continue
            self._sent_at[(device, i)] = now
            dev.chunks_sent += 1
            self._publish(self.chunk_topic(device, i), self.chunks[i], False)

    def on_progress(self, device: str, payload: bytes) -> None:
        obj, why = load_json_object(payload)
        if obj is None:
            self._junk(why)
            return
        dev = self._ours(obj, device)
        if dev is None:
            return
        state = obj.get("state")
        if state not in STATES:
            self._junk("state")
            return
        before = (dev.shown_state(), dev.reason, dev.already_active)
        if state == "active" and dev.requests == 0 and dev.chunks_sent == 0 and not dev.state:
            dev.already_active = True  # "an offer the device is already running is answered active at once"
        elif state != "active":
            dev.already_active = False
        dev.state = state
        dev.received, dev.chunks = _count(obj.get("received")), _count(obj.get("chunks"))
        dev.reason, dev.detail = _text(obj.get("reason"), 80), _text(obj.get("detail"))
        dev.pack_version = _text(obj.get("pack_version"), 80) or dev.pack_version
        dev.active_version = _text(obj.get("active_version"), 80) or dev.active_version
        dev.ended_at = (dev.ended_at or self._clock()) if dev.ended else None
        if (dev.shown_state(), dev.reason, dev.already_active) != before:
            self._report(progress_line(dev))
        self._advance()

    # -- the outcome -----------------------------------------------------------------------
    def outcome(self, timed_out: bool = False, interrupted: bool = False) -> str:
        if self.all_ok:
            return "healthy"
        if interrupted:
            return "interrupted"
        if self.halted:
            return "halted"
        if timed_out or not self.done:
            return "timeout"
        return "failed"

    def result(self, timed_out: bool = False, interrupted: bool = False) -> dict:
        return {
            "schema": 1,
            "update_id": self.update_id,
            "mode": self.offer["mode"],
            "pack": self.offer["pack"],
            "chunk_size": self.offer["chunk_size"],
            "chunks": self.offer["chunks"],
            "outcome": self.outcome(timed_out, interrupted),
            "halted": self.halted,
            "waves": len(self.waves),
            "devices": [self.devices[d].as_dict() for d in sorted(self.devices)],
            "garbage": dict(sorted(self.garbage.items())),
            "ignored": dict(sorted(self.ignored.items())),
            "skipped_resends": self.skipped_resends,
        }


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(clean(n, 80) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _or_q(n: int | None) -> str:
    return "?" if n is None else str(n)


def progress_line(dev: Device) -> str:
    counts = f" {_or_q(dev.received)}/{_or_q(dev.chunks)}"
    reason = f" ({dev.reason}{': ' + dev.detail if dev.detail else ''})" if dev.reason or dev.detail else ""
    extra = " (it already runs this pack)" if dev.already_active else ""
    return f"{clean(dev.name, 120)}: {dev.shown_state()}{counts}{reason}{extra}"


def print_table(result: dict, out: TextIO) -> None:
    rows = [("DEVICE", "WAVE", "STATE", "RECEIVED", "PACK", "REASON")]
    for d in result["devices"]:
        received = "-" if d["received"] is None and d["chunks"] is None else f"{_or_q(d['received'])}/{_or_q(d['chunks'])}"
        reason = d["reason"] + (f": {d['detail']}" if d["detail"] else "")
        if d["already_active"]:
            reason = "already runs this pack"
        elif d["state"] == "not_offered":
            reason = "halted" if result["halted"] else "-"
        rows.append((clean(d["device"], 60), str(d["wave"]), d["state"], received, d["pack_version"] or "-", reason or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1], file=out)
    p = result["pack"]
    ok = sum(d["ok"] for d in result["devices"])
    line = (f"update {result['update_id']} ({p['name']} {p['version']}, {result['mode']}): "
            f"{ok} of {len(result['devices'])} healthy; {result['outcome']}")
    if result["halted"]:
        line += f": {result['halted']}"
    print(line, file=out)
    junk = sum(result["garbage"].values())
    if junk:
        print("malformed messages ignored: " + ", ".join(f"{k} {v}" for k, v in result["garbage"].items()), file=out)


# ------------------------------------------------------------------------------ the pack
def check_pack(path: str, trusted_sources: list[str]) -> tuple[Any, bytes, str]:
    """``(pack, its bytes, a note on the signature)``; PushError with one line when the pack
    must not be pushed: unreadable, damaged, unsigned, or (with trusted keys) not signed by
    one of them."""
    from edge_agent.pack import PackError, read_pack
    from edge_agent.signing import KeyFileError, SignatureError, trusted_from_arguments, verify_pack_signature

    def one(text: object) -> str:
        return " ".join(str(text).split())

    try:
        data = Path(path).read_bytes()
        pack = read_pack(path)
        if Path(path).read_bytes() != data:
            raise PushError(f"{path}: the file changed while it was read; try again")
    except PackError as exc:
        raise PushError(one(exc)) from None
    except OSError as exc:
        raise PushError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not trusted_sources:
        try:
            verify_pack_signature(pack, {})  # no key: "unknown_key" means a well-formed signature
        except SignatureError as exc:
            if exc.reason != "unknown_key":
                raise PushError(f"{path}: refusing to push: {one(exc)}") from None
        kid = pack.signature.get("key_id") if isinstance(pack.signature, dict) else "?"
        return pack, data, f"signed by key {kid}, not checked here: give --trusted-key NAME.pub to check it"
    try:
        trusted = trusted_from_arguments(trusted_sources).keys
    except KeyFileError as exc:
        raise PushError(f"trusted key {one(exc)}") from None
    if not trusted:
        raise PushError(f"no usable trusted key in {', '.join(trusted_sources)}")
    try:
        kid = verify_pack_signature(pack, trusted)
    except SignatureError as exc:
        raise PushError(f"{path}: refusing to push: {one(exc)}") from None
    return pack, data, f"signed by trusted key {kid}"


# ------------------------------------------------------------------------------ command line
def _percent(text: str) -> float:
    v = positive_float(text)
    if v > 100:
        raise argparse.ArgumentTypeError(f"must be from 0 (excluded) to 100, got {text}")
    return v


def _chunk_kb(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1024, got {text}")
    return v


def _target(text: str) -> str:
    if "/" in text:
        site, _, device = text.partition("/")
        for what, part in (("site", site), ("device", device)):
            problem = device_name_problem(part)
            if problem:
                raise argparse.ArgumentTypeError(f"SITE/DEVICE: the {what} {problem}: {text!r}")
        return text
    problem = device_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"GROUP {problem}: {text!r}")
    return text


DESCRIPTION = """\
Push a signed model pack to one device (SITE/DEVICE) or a group (every device whose retained
status says "group": GROUP): check the signature here, publish the offer (retained), serve
the chunks the devices ask for, follow their progress (one line per change on stderr) until
each is healthy, rejected or rolled back, or --timeout. With --canary P, ceil(P%) of the
group (at least one) go first; the rest only once every canary is healthy; a canary that
is rejected or rolls back halts the rollout. The offers are cleared at the end (also on
timeout and Ctrl-C). Exit 0 only if every target is healthy; 130 after Ctrl-C; else 2.
See docs/UPDATES.md."""


def add_push_parser(fleet_sub: Any) -> argparse.ArgumentParser:
    """``fleet push`` under the ``fleet`` subcommands of the edge-agent parser."""
    p = fleet_sub.add_parser("push", help="push a signed pack to a device or group (canary waves, progress)",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pack", metavar="PACK", help="a signed model pack (edge-agent fleet sign)")
    p.add_argument("--target", required=True, type=_target, metavar="SITE/DEVICE|GROUP",
                   help="one device, or every device whose retained status names this group")
    p.add_argument("--mode", choices=MODES, default="shadow",
                   help="shadow: gate beside the active model, then promote (default); activate: switch, then health check")
    p.add_argument("--canary", type=_percent, metavar="PERCENT",
                   help="offer to ceil(PERCENT%%) of the targets first (at least one), the rest once they are healthy")
    p.add_argument("--trusted-key", action="append", default=[], metavar="FILE|DIR",
                   help="check the signature against this public key (NAME.pub) or directory of *.pub; repeatable")
    p.add_argument("--chunk-kb", type=_chunk_kb, default=16, metavar="KB",
                   help="chunk size in KiB (default 16; at most the devices' [updates] max_chunk_kb)")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="give up after S seconds from the first offer (default 600)")
    p.add_argument("--discover-s", type=positive_float, default=2.0, metavar="S",
                   help="collect retained statuses for S seconds to find a GROUP's devices (default 2)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object on stdout")
    add_broker_arguments(p)
    return p


class _Stop(Exception):
    """SIGTERM: end like Ctrl-C (offers cleared)."""


def _discover(conn: FleetConnection, prefix: str, group: str, seconds: float) -> tuple[list[str], list[str]]:
    """Devices whose latest retained status says ``"group": group``; and those of them offline."""
    statuses: dict[str, dict | None] = {}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = conn.get(min(left, 0.2))
        if msg is None:
            continue
        parts = device_topic(prefix, msg.topic)
        if parts is None or parts[2] != "status":
            continue
        obj, _ = load_json_object(msg.payload)
        statuses[f"{parts[0]}/{parts[1]}"] = obj
    members = sorted(d for d, s in statuses.items() if s is not None and s.get("group") == group)
    offline = [d for d in members if statuses[d].get("state") != "online"]
    return members, offline


def push(opts: MqttOptions, pack_path: str, target: str, mode: str, canary: float | None = None,
         trusted: list[str] | None = None, chunk_kb: int = 16, timeout: float = 600.0, discover_s: float = 2.0,
         err: TextIO | None = None) -> tuple[int, dict | None]:
    """The whole command; ``(exit code, result or None when it never started)``."""
    err = err if err is not None else sys.stderr

    def say(text: str) -> None:
        print(f"{PROG}: {text}", file=err, flush=True)

    try:
        pack, data, note = check_pack(pack_path, trusted or [])
    except PushError as exc:
        say(str(exc))
        return 2, None
    topics = [f"{opts.prefix}/+/+/{kind}" for kind in ("status", "model/request", "model/progress")]
    conn = FleetConnection(opts, topics, "push")
    try:
        conn.connect()
    except FleetMqttError as exc:
        say(str(exc))
        return 2, None
    server: PushServer | None = None
    timed_out = interrupted = False
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):  # noqa: ANN001
            raise _Stop()
        previous_term = signal.signal(signal.SIGTERM, on_term)
    try:
        if "/" in target:
            targets = [target]
        else:
            targets, offline = _discover(conn, opts.prefix, target, discover_s)
            if not targets:
                say(f"no device says it is in group {target!r} (retained {opts.prefix}/+/+/status \"group\")")
                return 2, None
            say(f"group {target!r}: {len(targets)} device(s)" + (
                f"; offline (they get the retained offer when they connect): {_names(offline)}" if offline else ""))
        update_id = new_update_id()
        offer, chunks = make_offer(data, update_id, mode, chunk_kb * 1024, name=pack.name, version=pack.version)
        say(f"update {update_id}: {pack.describe()} ({len(data)} bytes, {note}), {mode}, "
            f"{len(chunks)} chunk(s) of {chunk_kb} KiB")
        server = PushServer(offer, chunks, plan_waves(targets, canary), opts.prefix,
                            lambda t, p, r: conn.publish(t, p, retain=r), say)
        server.start()
        deadline = time.monotonic() + timeout
        while not server.done:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                waiting = [d.name for d in server.devices.values() if d.offered_at is not None and not d.ended]
                say(f"timeout after {timeout:g} s; no end state from: {_names(waiting)}")
                break
            msg = conn.get(min(left, 0.5))
            if msg is not None:
                server.handle(msg.topic, msg.payload)
    except (KeyboardInterrupt, _Stop):
        interrupted = True
        say("interrupted")
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        try:
            if server is not None and server.offer_topics:
                _clear_offers(conn, server.offer_topics, say)
        finally:
            conn.close()
    if server is None:  # interrupted before the first offer
        return 130, None
    result = server.result(timed_out, interrupted)
    code = 0 if server.all_ok else (130 if interrupted else 2)
    if server.garbage:
        say("malformed messages ignored: " + ", ".join(f"{k} {v}" for k, v in sorted(server.garbage.items())))
    if result["outcome"] == "halted":
        say(f"rollout halted: {server.halted}")
    return code, result


def _clear_offers(conn: FleetConnection, topics: list[str], say: Callable[[str], None]) -> None:
    """An empty retained message on every offer topic; waits for the broker's PUBACKs, and
    republishes after a reconnect when the link was down (at most CLEAR_TIMEOUT_S)."""
    deadline = time.monotonic() + CLEAR_TIMEOUT_S
    pending = list(dict.fromkeys(topics))
    while pending and time.monotonic() < deadline:
        infos = [(t, conn.publish(t, b"", retain=True)) for t in pending]
        wait_published([i for _, i in infos], max(0.1, deadline - time.monotonic()))
        still = []
        for t, info in infos:
            try:
                if not info.is_published():
                    still.append(t)
            except (RuntimeError, ValueError):
                still.append(t)
        pending = still
        while pending and not conn.is_connected() and time.monotonic() < deadline:
            time.sleep(0.2)
    if pending:
        say(f"could not clear {len(pending)} retained offer(s) (broker unreachable): {_names(pending)}; "
            "clear them with an empty retained message")
    else:
        say(f"cleared {len(set(topics))} retained offer(s)")


def run_fleet_push(args: argparse.Namespace) -> int:
    code, result = push(options_from_args(args), args.pack, args.target, args.mode, args.canary, args.trusted_key,
                        args.chunk_kb, args.timeout, args.discover_s)
    if result is not None:
        if args.json:
            print(json.dumps(result, indent=1, sort_keys=True))
        else:
            print_table(result, sys.stdout)
    return code
