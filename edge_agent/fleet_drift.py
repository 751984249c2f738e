"""``edge-agent fleet drift``: the fleet side of the drift sketches (issue #6; docs/FLEET.md).

Every gateway publishes a summary each ``publish.summary_interval_s`` on
``{prefix}/{site}/{device}/summary``: per operating regime, a DataSketches KLL float sketch
of each model input (sketches.encode), exact counts in the model pack's PSI bins, and the
device's own drift verdict (drift.evaluate). This module merges many of them, from files or
live from the broker:

* groups by (model version, regime): the same features and the same reference, and the same
  shaft-speed bin, so a fleet's sketches of one group describe one population;
* merges every contribution's sketch per feature (``kll_floats_sketch.merge``: the merged
  sketch keeps the stated rank error of its k, whatever the number of devices), sums the bin
  counts when every contribution has them and their lengths agree (then the fleet PSI is
  exact; otherwise it comes from the merged sketch), counts devices, summaries and windows.
  Several summaries of one device (a time range) all merge;
* with the model's pack: fleet PSI and KS against the pack's drift profile, a status by the
  thresholds, and the devices whose own latest verdict on that regime was ``drift``.

Input is never trusted: a summary that cannot be used (not JSON, wrong schema or fields, a
sketch that is not base64 or not a KLL float sketch, a k other than the fleet's, a model
version with no ``--pack`` when packs are given, a duplicate) is skipped whole, counted under
its reason, and reported in one line on stderr (at most ``REPORT_CAP`` lines per reason; the
counts are complete). Nothing is merged from a skipped summary, so device and window counts
stay consistent with the sketches.

Memory is bounded by the groups, not by the input: summaries are merged as they are read.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, TextIO

from edge_agent.fleet_mqtt import parse_broker, positive_float
from edge_agent.sketches import SKETCH_KIND

OUTPUT_SCHEMA = 1
SUMMARY_SCHEMA = 1
MAX_SUMMARY_BYTES = 16 * 1024 * 1024
REPORT_CAP = 20  # skip lines shown per reason (all are counted)
QUANTILES = (0.05, 0.5, 0.95)
TABLE_DEVICES = 50  # drifted devices named per group in the table (--json: all)
K_MIN, K_MAX = 8, 65535
PROG = "edge-agent fleet drift"

REASONS = {
    "json": "not a JSON object",
    "oversize": f"over {MAX_SUMMARY_BYTES} bytes",
    "schema": "schema missing or not 1",
    "field": "site, device, model_version or time missing or invalid",
    "no_sketches": "no sketches (drift monitoring off on the device)",
    "sketch_format": "sketches object not of the expected shape",
    "sketch": "a sketch that is not base64 or not a DataSketches KLL float sketch",
    "bin_counts": "bin_counts not lists of non-negative integers",
    "k": "k other than the fleet's for that model version",
    "model": "model version with no --pack",
    "duplicate": "the same summary again (QoS 1 redelivery)",
    "file": "input that cannot be read",
}


class Skip(Exception):
    """A summary that cannot be merged: ``reason`` (a REASONS key) and a one-line detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------ parsing
@dataclass
class ParsedRegime:
    rpm: list | None
    windows: int
    sketches: dict[str, Any]  # feature -> kll_floats_sketch
    texts: dict[str, str]  # feature -> base64 (for --rows)
    bin_counts: dict[str, list[int]]


@dataclass
class ParsedSummary:
    site: str
    device: str
    model_version: str
    time: float
    seq: int | None
    k: int
    regimes: dict[str, ParsedRegime]
    verdicts: dict[str, str]  # regime -> the device's own drift status

    @property
    def name(self) -> str:
        return f"{self.site}/{self.device}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _topic_ids(topic: str | None) -> tuple[str | None, str | None]:
    """site and device from ``{prefix}/{site}/{device}/summary`` (prefix may have slashes)."""
    if not topic:
        return None, None
    parts = topic.split("/")
    if len(parts) >= 4 and parts[-1] == "summary":
        return parts[-3], parts[-2]
    return None, None


def load_summary(payload: bytes | str) -> Any:
    """The JSON value of one message/line; Skip('json'/'oversize') when it is none."""
    if len(payload) > MAX_SUMMARY_BYTES:
        raise Skip("oversize", f"{len(payload)} bytes, a summary is at most {MAX_SUMMARY_BYTES}")
    try:
        return json.loads(payload)
    except RecursionError:
        raise Skip("json", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Skip("json", f"not JSON: {str(exc)[:120]}") from None


def parse_summary(obj: Any, topic: str | None = None) -> ParsedSummary:
    """Check one summary and decode its sketches; Skip with the reason when it is unusable."""
    from edge_agent.sketches import SketchDecodeError, decode_sketch

    if not isinstance(obj, dict):
        raise Skip("json", f"a JSON {type(obj).__name__}, not an object")
    if obj.get("schema") != SUMMARY_SCHEMA or not _is_int(obj.get("schema")):
        raise Skip("schema", f"schema {obj.get('schema')!r}, this reads {SUMMARY_SCHEMA}")
    t_site, t_device = _topic_ids(topic)
    site, device = obj.get("site", t_site), obj.get("device", t_device)
    if not _nonempty_str(site) or not _nonempty_str(device):
        raise Skip("field", "no site/device (neither in the summary nor in its topic)")
    model = obj.get("model_version")
    if not _nonempty_str(model):
        raise Skip("field", f"model_version {model!r} is not a non-empty string")
    t = obj.get("time")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise Skip("field", f"time {t!r} is not a finite number of seconds")
    seq = obj.get("seq")
    if seq is not None and not _is_int(seq):
        raise Skip("field", f"seq {seq!r} is not an integer")
    sk = obj.get("sketches")
    if sk is None:
        raise Skip("no_sketches", "no 'sketches' (drift monitoring disabled on the device?)")
    if not isinstance(sk, dict) or sk.get("kind") != SKETCH_KIND or sk.get("encoding") != "base64":
        what = sk.get("kind") if isinstance(sk, dict) else type(sk).__name__
        raise Skip("sketch_format", f"sketches must be kind {SKETCH_KIND!r}, encoding 'base64' (got {what!r})")
    k = sk.get("k")
    if not _is_int(k) or not K_MIN <= k <= K_MAX:
        raise Skip("sketch_format", f"sketches.k {k!r} is not an integer from {K_MIN} to {K_MAX}")
    regimes_in = sk.get("regimes")
    if not isinstance(regimes_in, dict):
        raise Skip("sketch_format", "sketches.regimes is not an object")
    regimes: dict[str, ParsedRegime] = {}
    for rname, entry in regimes_in.items():
        if not isinstance(entry, dict):
            raise Skip("sketch_format", f"regime {rname!r} is not an object")
        windows = entry.get("windows")
        feats = entry.get("features", {})
        if not _is_int(windows) or windows < 0:
            raise Skip("sketch_format", f"regime {rname!r}: windows {windows!r} is not an integer >= 0")
        if not isinstance(feats, dict) or not all(isinstance(v, str) for v in feats.values()):
            raise Skip("sketch_format", f"regime {rname!r}: features must map names to base64 text")
        rpm = entry.get("rpm")
        rpm = rpm if isinstance(rpm, list) and len(rpm) == 2 else None
        counts_in = entry.get("bin_counts", {})
        if not isinstance(counts_in, dict):
            raise Skip("bin_counts", f"regime {rname!r}: bin_counts is not an object")
        counts: dict[str, list[int]] = {}
        for fname, c in counts_in.items():
            if not isinstance(c, list) or not c or not all(_is_int(v) and v >= 0 for v in c):
                raise Skip("bin_counts", f"regime {rname!r}: bin_counts.{fname} is not a list of integers >= 0")
            counts[fname] = c
        sketches = {}
        for fname, text in feats.items():
            try:
                s = decode_sketch(text)
            except SketchDecodeError as exc:
                raise Skip("sketch", f"regime {rname!r}, feature {fname!r}: {exc}") from None
            if s.k != k:
                raise Skip("k", f"regime {rname!r}, feature {fname!r}: the sketch has k {s.k}, the summary says {k}")
            sketches[fname] = s
        regimes[rname] = ParsedRegime(rpm, windows, sketches, dict(feats), counts)
    verdicts: dict[str, str] = {}
    drift = obj.get("drift")
    if isinstance(drift, dict) and isinstance(drift.get("regimes"), dict):
        for rname, entry in drift["regimes"].items():
            if isinstance(entry, dict) and isinstance(entry.get("status"), str):
                verdicts[rname] = entry["status"]
    return ParsedSummary(site.strip(), device.strip(), model, float(t), seq, k, regimes, verdicts)


# ------------------------------------------------------------------------------ merging
@dataclass
class PackRef:
    """A model pack given with --pack: its version string and drift reference."""

    path: str
    version: str
    profile: Any  # drift.Profile


@dataclass
class FeatureAcc:
    sketch: Any
    counts: Any = None  # np.ndarray of int64, summed
    exact: bool = True  # every contribution had counts of one length, totalling its sketch's n
    why_not: str = ""
    contributions: int = 0

    def not_exact(self, why: str) -> None:
        if self.exact:
            self.exact, self.why_not = False, why


@dataclass
class Group:
    model_version: str
    regime: str
    k: int
    rpm: list | None = None
    devices: set = field(default_factory=set)
    summaries: int = 0
    windows: int = 0
    features: dict[str, FeatureAcc] = field(default_factory=dict)
    verdicts: dict[str, tuple] = field(default_factory=dict)  # device -> (time, seq, status)


@dataclass
class Thresholds:
    psi_warn: float = 0.1
    psi_drift: float = 0.25
    min_windows: int = 200


class Reporter:
    """One line per skipped summary on ``stream`` (at most ``cap`` per reason), all counted."""

    def __init__(self, stream: TextIO | None = None, cap: int = REPORT_CAP) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.cap = cap
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str, where: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= self.cap:
            print(f"{PROG}: skipped {where}: {detail}", file=self.stream)
        elif n == self.cap + 1:
            print(f"{PROG}: further '{reason}' skips are counted, not shown", file=self.stream)

    def note(self, text: str) -> None:
        print(f"{PROG}: {text}", file=self.stream)


class FleetDrift:
    """The merge: ``add`` summaries (any order), then ``result``."""

    def __init__(self, packs: dict[str, PackRef] | None = None, thresholds: Thresholds | None = None,
                 k: int | None = None, since: float | None = None, reporter: Reporter | None = None,
                 on_accept: Callable[[ParsedSummary], None] | None = None) -> None:
        self.packs = packs or {}
        self.th = thresholds or Thresholds()
        self.forced_k = k
        self.since = since
        self.reporter = reporter or Reporter()
        self.on_accept = on_accept
        self.k_by_model: dict[str, int] = {}
        self.groups: dict[tuple[str, str], Group] = {}
        self.seen: set[tuple] = set()
        self.accepted = 0
        self.filtered = 0  # before --since/--last: left out, not an error
        self.devices: set[str] = set()
        self.t_first: float | None = None
        self.t_last: float | None = None

    # -- input ------------------------------------------------------------------------
    def add_payload(self, payload: bytes | str, where: str, topic: str | None = None) -> bool:
        """One message or line; True when it was merged. Never raises for bad input."""
        try:
            obj = load_summary(payload)
        except Skip as s:
            self.reporter.skip(s.reason, where, s.detail)
            return False
        return self.add(obj, where, topic)

    def add(self, obj: Any, where: str, topic: str | None = None) -> bool:
        try:
            p = parse_summary(obj, topic)
        except Skip as s:
            self.reporter.skip(s.reason, _where(where, obj), s.detail)
            return False
        if self.since is not None and p.time < self.since:
            self.filtered += 1
            return False
        try:
            self._admit(p)
        except Skip as s:
            self.reporter.skip(s.reason, _where(where, obj), s.detail)
            return False
        self._merge(p)
        if self.on_accept is not None:
            self.on_accept(p)
        return True

    def _admit(self, p: ParsedSummary) -> None:
        if self.packs and p.model_version not in self.packs:
            raise Skip("model", f"model version {p.model_version!r} has no --pack (given: "
                       f"{', '.join(sorted(self.packs))})")
        want = self.forced_k if self.forced_k is not None else self.k_by_model.get(p.model_version)
        if want is not None and p.k != want:
            whose = "given with --k" if self.forced_k is not None else f"that of the first merged summary of {p.model_version!r}"
            raise Skip("k", f"k {p.k}, but the fleet's k is {want} ({whose}): merging would change the error bound")
        key = (p.site, p.device, p.seq, p.time)
        if key in self.seen:
            raise Skip("duplicate", f"seq {p.seq} at {p.time} already merged")
        self.seen.add(key)
        self.k_by_model.setdefault(p.model_version, p.k)

    def _merge(self, p: ParsedSummary) -> None:
        import numpy as np
        from datasketches import kll_floats_sketch

        self.accepted += 1
        self.devices.add(p.name)
        self.t_first = p.time if self.t_first is None else min(self.t_first, p.time)
        self.t_last = p.time if self.t_last is None else max(self.t_last, p.time)
        for rname, reg in p.regimes.items():
            g = self.groups.get((p.model_version, rname))
            if g is None:
                g = self.groups[(p.model_version, rname)] = Group(p.model_version, rname, p.k, reg.rpm)
            g.devices.add(p.name)
            g.summaries += 1
            g.windows += reg.windows
            for fname in set(reg.sketches) | set(reg.bin_counts):
                acc = g.features.get(fname)
                if acc is None:
                    acc = g.features[fname] = FeatureAcc(kll_floats_sketch(g.k))
                s = reg.sketches.get(fname)
                if s is not None:
                    acc.sketch.merge(s)
                acc.contributions += 1
                c = reg.bin_counts.get(fname)
                n = 0 if s is None else int(s.n)
                if c is None:
                    acc.not_exact(f"bin counts missing from {p.name}")
                elif sum(c) != n:
                    acc.not_exact(f"bin counts of {p.name} total {sum(c)}, its sketch has {n} values")
                elif acc.counts is None:
                    acc.counts = np.asarray(c, dtype=np.int64)
                elif len(c) != len(acc.counts):
                    acc.not_exact(f"bin counts of {len(c)} and {len(acc.counts)} bins")
                else:
                    acc.counts += np.asarray(c, dtype=np.int64)
            status = p.verdicts.get(rname)
            if status is not None:
                mark = (p.time, p.seq if p.seq is not None else -1)
                old = g.verdicts.get(p.name)
                if old is None or mark >= old[:2]:
                    g.verdicts[p.name] = (*mark, status)

    # -- output -----------------------------------------------------------------------
    def result(self) -> dict:
        groups = [self._group_result(g) for _, g in sorted(self.groups.items())]
        return {
            "schema": OUTPUT_SCHEMA,
            "summaries": self.accepted,
            "devices": len(self.devices),
            "time": [self.t_first, self.t_last],
            "since": self.since,
            "filtered": self.filtered,
            "skipped": dict(sorted(self.reporter.counts.items())),
            "thresholds": {"psi_warn": self.th.psi_warn, "psi_drift": self.th.psi_drift,
                           "min_windows": self.th.min_windows},
            "packs": {v: p.path for v, p in sorted(self.packs.items())},
            "groups": groups,
        }

    def _group_result(self, g: Group) -> dict:
        from edge_agent.drift import ks_sketch, psi_counts, psi_sketch

        pack = self.packs.get(g.model_version)
        profile = pack.profile if pack else None
        feats: dict[str, dict] = {}
        worst = "ok"
        which, ref_feats, watched = None, {}, []
        if profile is not None:  # the pack's reference for this regime (drift.Profile.reference_for)
            lo, hi = (g.rpm or [None, None])[:2]
            which, ref_feats, watched = (profile.reference_for(float(lo), None if hi is None else float(hi))
                                         if lo is not None else ("all", profile.features, profile.monitored))
        for fname, acc in sorted(g.features.items()):
            s = acc.sketch
            out: dict[str, Any] = {"n": int(s.n)}
            if not s.is_empty():
                qs = s.get_quantiles(list(QUANTILES))
                out.update({"p05": float(qs[0]), "p50": float(qs[1]), "p95": float(qs[2]),
                            "min": float(s.get_min_value()), "max": float(s.get_max_value())})
            if acc.exact and acc.counts is not None:
                out["bin_counts"] = [int(v) for v in acc.counts]
            ref = ref_feats.get(fname) if profile is not None and fname in watched else None
            if profile is not None and ref is None:
                out["monitored"] = False  # the pack does not judge this feature's drift
            if ref is not None and not s.is_empty():
                if acc.exact and acc.counts is not None and len(acc.counts) == len(ref["histogram"]):
                    psi, source = psi_counts(acc.counts, ref), "bin_counts"
                else:
                    why = acc.why_not or "bin counts not of the pack's bins"
                    psi, source = psi_sketch(s, ref), f"sketch ({why})"
                level = "drift" if psi >= self.th.psi_drift else "warn" if psi >= self.th.psi_warn else "ok"
                out.update({"psi": psi, "ks": ks_sketch(s, ref), "status": level, "psi_from": source})
                if level == "drift" or (level == "warn" and worst == "ok"):
                    worst = level
            feats[fname] = out
        if profile is None:
            status = "no_reference"
        elif g.windows < self.th.min_windows:
            status = "insufficient"
        else:
            status = worst
        verdicts = Counter(v[2] for v in g.verdicts.values())
        return {
            "model_version": g.model_version,
            "regime": g.regime,
            "rpm": g.rpm,
            "devices": len(g.devices),
            "summaries": g.summaries,
            "windows": g.windows,
            "k": g.k,
            "rank_error": _rank_error(g),
            "status": status,
            "reference": pack.path if pack else None,
            "reference_regime": which,
            "features": feats,
            "drift_devices": sorted(d for d, v in g.verdicts.items() if v[2] == "drift"),
            "device_verdicts": dict(sorted(verdicts.items())),
        }


def _rank_error(g: Group) -> float | None:
    for acc in g.features.values():
        return float(acc.sketch.normalized_rank_error(False))
    return None


def _where(where: str, obj: Any) -> str:
    if isinstance(obj, dict):
        site, dev, seq = obj.get("site"), obj.get("device"), obj.get("seq")
        if isinstance(site, str) and isinstance(dev, str):
            return f"{where} ({site}/{dev}{f' seq {seq}' if _is_int(seq) else ''})"
    return where


def summary_rows(p: ParsedSummary) -> Iterator[dict]:
    """One flat row per (regime, feature) of an accepted summary: the input shape of the
    Druid and Spark examples in docs/FLEET.md (``--rows``)."""
    for rname, reg in p.regimes.items():
        lo, hi = (reg.rpm or [None, None])
        for fname, text in reg.texts.items():
            row = {"time": p.time, "site": p.site, "device": p.device, "seq": p.seq,
                   "model_version": p.model_version, "regime": rname, "rpm_lo": lo, "rpm_hi": hi,
                   "windows": reg.windows, "feature": fname, "k": p.k, "sketch": text}
            if fname in reg.bin_counts:
                row["bin_counts"] = reg.bin_counts[fname]
            yield row


# ------------------------------------------------------------------------------ sources
def _split_topic(line: str) -> tuple[str | None, str]:
    """``mosquitto_sub -v`` writes ``topic payload``: split such a line, else (None, line)."""
    s = line.lstrip()
    if s and s[0] not in "{[" and " " in s:
        topic, _, rest = s.partition(" ")
        if rest.lstrip().startswith("{"):
            return topic, rest
    return None, line


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


def read_file(path: str, merger: FleetDrift) -> int:
    """Merge the summaries of one file ('-' = stdin): JSON lines (optionally ``topic payload``
    lines from ``mosquitto_sub -v``), one JSON object, or a JSON array of them. Returns the
    number merged; an unreadable file is reported and counted (reason 'file')."""
    label = "stdin" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            if os.path.isdir(path):
                raise IsADirectoryError(21, "is a directory")
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        merger.reporter.skip("file", label, f"cannot read: {exc.strerror or exc}")
        return 0
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        merger.reporter.note(f"{label}: empty, no summaries")
        return 0
    merged = 0
    _, first_payload = _split_topic(lines[first])
    if not _parses(first_payload) and text.lstrip()[:1] in "{[":
        try:  # not JSON lines: one (pretty-printed) object or an array of summaries
            whole = load_summary(text)
        except Skip as s:
            if lines[first].strip() in ("{", "["):  # clearly one pretty-printed value: one line for it
                merger.reporter.skip(s.reason, label, f"{s.detail} (read as one JSON value)")
                return 0
            whole = None
        if isinstance(whole, list):
            for i, obj in enumerate(whole):
                merged += merger.add(obj, f"{label}[{i}]")
            return merged
        if whole is not None:
            return int(merger.add(whole, label))
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        topic, payload = _split_topic(line)
        merged += merger.add_payload(payload, f"{label}:{i}", topic)
    return merged


@dataclass
class BrokerOptions:
    host: str
    port: int
    prefix: str = "pdm"
    seconds: float = 10.0
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    username: str | None = None
    password_file: str | None = None
    connect_timeout: float = 10.0


def collect_broker(opts: BrokerOptions, merger: FleetDrift) -> str | None:
    """Subscribe to ``{prefix}/+/+/summary`` (QoS 1) and merge what arrives for
    ``opts.seconds`` after the subscription is granted. Returns None, or the one-line reason
    the broker could not be used. Ctrl-C ends the collection early (what came is kept)."""
    import queue
    import ssl
    import threading
    import uuid

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"{opts.prefix}/+/+/summary"
    inbox: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
    subscribed = threading.Event()
    failure: list[str] = []

    def on_connect(client, userdata, flags, reason_code, properties):  # noqa: ANN001
        if reason_code.is_failure:
            failure.append(f"the broker refused the connection: {reason_code}")
            subscribed.set()
            return
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):  # noqa: ANN001
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            failure.append(f"the broker refused the subscription to {topic}: {bad[0]}")
        subscribed.set()

    def on_message(client, userdata, message):  # noqa: ANN001
        inbox.put((message.topic, bytes(message.payload)))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-fleet-{uuid.uuid4().hex[:12]}",
                         clean_session=True)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    address = f"{opts.host}:{opts.port}"
    try:
        if opts.tls:
            client.tls_set(ca_certs=opts.ca_file or None, certfile=opts.cert_file or None,
                           keyfile=opts.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(bool(opts.tls_insecure))
        if opts.username:
            password = None
            if opts.password_file:
                with open(opts.password_file, encoding="utf-8") as f:
                    password = f.read().strip()
            client.username_pw_set(opts.username, password)
    except (OSError, ValueError) as exc:
        return f"TLS/login options unusable: {exc}"
    try:
        client.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ValueError) as exc:
        return f"cannot connect to {address}: {getattr(exc, 'strerror', None) or exc}"
    client.loop_start()
    received = 0
    try:
        if not subscribed.wait(opts.connect_timeout):
            return f"no CONNACK/SUBACK from {address} within {opts.connect_timeout:g} s"
        if failure:
            return failure[0]
        merger.reporter.note(f"listening on {address} to {topic} for {opts.seconds:g} s")
        deadline = time.monotonic() + opts.seconds
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    t, payload = inbox.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                received += 1
                merger.add_payload(payload, f"topic {t}", t)
        except KeyboardInterrupt:
            merger.reporter.note("interrupted: reporting what was collected")
        while True:  # what arrived up to the deadline
            try:
                t, payload = inbox.get_nowait()
            except queue.Empty:
                break
            received += 1
            merger.add_payload(payload, f"topic {t}", t)
        merger.reporter.note(f"{received} message(s) received")
        return None
    finally:
        client.disconnect()
        client.loop_stop()


# ------------------------------------------------------------------------------ command line
def _k(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not K_MIN <= v <= K_MAX:
        raise argparse.ArgumentTypeError(f"must be from {K_MIN} to {K_MAX}, got {text}")
    return v


def _min_windows(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not unix seconds nor an ISO 8601 time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:]) if t else None
    try:
        value = float(t[:-1] if unit else t) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 3600, 90m, 6h, 7d): {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


DESCRIPTION = """\
Merge the gateways' summaries per model version and operating regime: the devices' KLL
sketches merged per feature (p05/p50/p95 of the fleet), the exact bin counts summed, and,
with the model's pack, the fleet's PSI and KS against the pack's drift reference, a status
(ok/warn/drift), and the turbines whose own latest verdict on that regime was drift.
Input: summary files (JSON lines, one JSON object, or mosquitto_sub -v lines; - = stdin)
and/or live summaries from the broker (--broker ... --seconds N). A summary that cannot be
used is skipped with its reason on stderr and counted. Exit 0 when something was merged,
2 when nothing usable was found (or on a usage error). See docs/FLEET.md."""


def add_drift_parser(fleet_sub: Any) -> argparse.ArgumentParser:
    """``fleet drift`` under the ``fleet`` subcommands of the edge-agent parser."""
    p = fleet_sub.add_parser("drift", help="merge the devices' summaries: fleet quantiles, PSI/KS, which turbines drift",
                             description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="summaries: JSON lines or one JSON object; - = stdin")
    live = p.add_argument_group("live from the broker")
    live.add_argument("--broker", type=parse_broker, metavar="HOST[:PORT]", help="subscribe to {prefix}/+/+/summary, QoS 1 (port default 1883)")
    live.add_argument("--prefix", default="pdm", metavar="P", help="topic prefix (default pdm)")
    live.add_argument("--seconds", type=positive_float, metavar="N", help="collect for N seconds (required with --broker)")
    live.add_argument("--tls", action="store_true", help="connect with TLS")
    live.add_argument("--ca-file", metavar="FILE", help="CA certificates (PEM); default the system store")
    live.add_argument("--cert-file", metavar="FILE", help="client certificate (PEM), with --key-file")
    live.add_argument("--key-file", metavar="FILE", help="private key (PEM) of --cert-file")
    live.add_argument("--tls-insecure", action="store_true", help="skip the broker host name check (tests only)")
    live.add_argument("--username", metavar="NAME", help="broker user name")
    live.add_argument("--password-file", metavar="FILE", help="file holding the password")
    ref = p.add_argument_group("reference and thresholds")
    ref.add_argument("--pack", action="append", default=[], metavar="PACK",
                     help="model pack whose 'name version' is a summaries' model_version (repeatable); with "
                     "packs, summaries of other model versions are skipped")
    ref.add_argument("--psi-warn", type=positive_float, default=0.1, metavar="X", help="PSI at or above: warn (default 0.1)")
    ref.add_argument("--psi-drift", type=positive_float, default=0.25, metavar="X", help="PSI at or above: drift (default 0.25)")
    ref.add_argument("--min-windows", type=_min_windows, default=200, metavar="N",
                     help="windows a group needs to be judged (default 200)")
    ref.add_argument("--k", type=_k, metavar="K", help="the k every sketch must have (default: the first merged "
                     "summary's, per model version)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--since", type=_since, metavar="TIME", help="only summaries at or after TIME (unix seconds or ISO 8601; UTC when no zone)")
    when.add_argument("--last", type=_duration, metavar="DURATION", help="only summaries of the last DURATION (seconds, or 90m, 6h, 7d)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the result as one JSON object on stdout")
    out.add_argument("--rows", action="store_true", help="instead of merging, one JSON line per accepted summary, "
                     "regime and feature (the input of the Druid/Spark examples in docs/FLEET.md)")
    return p


def _usage(msg: str) -> int:
    print(f"{PROG}: error: {msg} (see '{PROG} --help')", file=sys.stderr)
    return 2


def load_packs(paths: list[str]) -> dict[str, PackRef]:
    """The --pack arguments by their version string; ValueError with one line when unusable."""
    from edge_agent.drift import Profile, ProfileError
    from edge_agent.pack import PackError, read_pack

    packs: dict[str, PackRef] = {}
    for path in paths:
        try:
            pack = read_pack(path)
            names = pack.manifest["features"]["names"]
            profile = Profile.from_manifest(pack.manifest.get("drift_profile"), names)
        except PackError as exc:  # its message names the file
            raise ValueError(f"--pack {exc}") from None
        except ProfileError as exc:
            raise ValueError(f"--pack {path}: {exc}") from None
        if profile is None or not profile.monitored:
            raise ValueError(f"--pack {path}: no drift profile to compare with (manifest drift_profile)")
        version = pack.describe()
        if version in packs:
            raise ValueError(f"--pack {path} and {packs[version].path} are both {version!r}")
        packs[version] = PackRef(path, version, profile)
    return packs


def run_fleet_drift(args: argparse.Namespace) -> int:
    if not args.files and args.broker is None:
        return _usage("give summary FILEs (- = stdin) or --broker HOST[:PORT] --seconds N")
    if args.broker is not None and args.seconds is None:
        return _usage("--broker needs --seconds N (how long to collect)")
    if args.broker is None and args.seconds is not None:
        return _usage("--seconds is for --broker")
    if args.psi_warn > args.psi_drift:
        return _usage(f"--psi-warn {args.psi_warn:g} is above --psi-drift {args.psi_drift:g}")
    if args.files.count("-") > 1:
        return _usage("stdin (-) can be read once")
    try:
        packs = load_packs(args.pack)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    since = args.since if args.since is not None else (time.time() - args.last if args.last else None)
    reporter = Reporter()
    on_accept = None
    if args.rows:
        def on_accept(p: ParsedSummary) -> None:
            for row in summary_rows(p):
                sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
    merger = FleetDrift(packs, Thresholds(args.psi_warn, args.psi_drift, args.min_windows), args.k, since,
                        reporter, on_accept)
    for path in args.files:
        n = read_file(path, merger)
        reporter.note(f"{'stdin' if path == '-' else path}: {n} summaries merged")
    if args.broker is not None:
        host, port = args.broker
        problem = collect_broker(BrokerOptions(
            host, port, args.prefix, args.seconds, args.tls, args.ca_file, args.cert_file, args.key_file,
            args.tls_insecure, args.username, args.password_file), merger)
        if problem:
            print(f"{PROG}: {problem}", file=sys.stderr)
            if not merger.accepted:
                return 2
    if merger.filtered:
        reporter.note(f"{merger.filtered} summaries before {_fmt_time(since)} left out (--since/--last)")
    skipped = sum(reporter.counts.values())
    if skipped:
        reporter.note(f"{skipped} skipped: " + ", ".join(f"{r} {n}" for r, n in sorted(reporter.counts.items())))
    if not args.rows:
        result = merger.result()
        if args.json:
            print(json.dumps(result, indent=1, sort_keys=True))
        else:
            print_table(result, sys.stdout)
    if not merger.accepted:
        reporter.note("nothing usable was merged")
        return 2
    return 0


# ------------------------------------------------------------------------------ table
def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _num(v: Any, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def _span(rpm: list | None) -> str:
    if not rpm:
        return ""
    lo, hi = rpm
    return f" ({lo:g}-{hi:g} rpm)" if hi is not None else f" (>= {lo:g} rpm)"


def print_table(result: dict, out: TextIO) -> None:
    t0, t1 = result["time"]
    print(f"fleet drift: {result['summaries']} summaries from {result['devices']} devices, "
          f"{_fmt_time(t0)} .. {_fmt_time(t1)}; PSI warn/drift {result['thresholds']['psi_warn']:g}/"
          f"{result['thresholds']['psi_drift']:g}", file=out)
    for g in result["groups"]:
        ref = f"vs {g['reference']}" if g["reference"] else "no --pack: quantiles only"
        print(file=out)
        print(f"{g['model_version']}  {g['regime']}{_span(g['rpm'])}: {g['devices']} devices, "
              f"{g['summaries']} summaries, {g['windows']} windows, {g['status'].upper()} ({ref}; "
              f"rank error {_num(g['rank_error'], '.2%')})", file=out)
        width = max([len("feature")] + [len(f) for f in g["features"]])
        print(f"  {'feature':<{width}} {'p05':>10} {'p50':>10} {'p95':>10} {'PSI':>7} {'KS':>6}  status  PSI from",
              file=out)
        for name, f in g["features"].items():
            source = f.get("psi_from", "not monitored by the pack" if f.get("monitored") is False else "-")
            source = "bin counts (exact)" if source == "bin_counts" else source
            print(f"  {name:<{width}} {_num(f.get('p05')):>10} {_num(f.get('p50')):>10} {_num(f.get('p95')):>10} "
                  f"{_num(f.get('psi'), '.3f'):>7} {_num(f.get('ks'), '.3f'):>6}  {f.get('status', '-'):<7} {source}",
                  file=out)
        if g["device_verdicts"]:
            verdicts = ", ".join(f"{s} {n}" for s, n in g["device_verdicts"].items())
            shown = g["drift_devices"][:TABLE_DEVICES]
            more = len(g["drift_devices"]) - len(shown)
            names = (", ".join(shown) or "none") + (f" and {more} more (--json lists all)" if more else "")
            print(f"  devices' own latest verdicts: {verdicts}; drift on: {names}", file=out)
    if not result["groups"]:
        print("(no groups: nothing merged)", file=out)


def merge_summaries(summaries: Iterable[Any], packs: dict[str, PackRef] | None = None, **kw: Any) -> FleetDrift:
    """Library entry: merge summary objects (dicts as published) and return the merger."""
    m = FleetDrift(packs, **kw)
    for i, s in enumerate(summaries):
        m.add(s, f"summary {i}")
    return m
