"""The MQTT sensor source: sensor messages from a broker -> SampleBlocks.

Sensors (or a gateway in front of them) publish to a topic on a *sensor* broker (often
the same mosquitto as the uplink, not necessarily). This source runs its own paho-mqtt
2.x client (callback API VERSION2) to it: it subscribes to ``topic`` (``+``/``#``
allowed) on every connect, so a broker restart or a link drop only pauses the stream;
paho reconnects with exponential backoff (1 s doubling to 30 s). The session is
persistent (``clean_session=False``, client id ``edge-agent-{host}-{source name}``), so the
broker keeps QoS 1 messages for us while we are away.

Each message is one of two forms (docs/MQTT.md, "Sensor input", is the reference):

* binary: the serial frame without COBS and delimiter, ``header | payload | crc32``
  (``protocol.frame.encode_raw``); anything whose first byte is not ``{``;
* JSON: an object whose first byte is ``{``, with the samples channel-major,
  ``{"schema": 1, "type": "samples", "sensor_id": 3, "fs": 25600, "seq": 17,
  "timestamp_us": 1700000000000000, "scale": 1.0, "channels": [[...], [...]]}``.

Both become a :class:`Frame` and go through one :class:`FrameAssembler` (per-stream
continuity: seq gaps, duplicates, timestamp jumps, rate mismatches), whose blocks are
named ``{source}.s{sensor_id}.ch{channel}``. ``sensor_id`` must be unique among the sensors
publishing to one source's topic. JSON samples become one numpy array in one call
(``np.asarray``), checked for shape, type and finiteness with numpy: no per-sample Python.

Messages arrive on paho's network thread; the callbacks decode, assemble and ``emit``
(a non-blocking bounded-queue offer) and never raise: every rejected message is counted
by reason (``rejected_<reason>`` in :meth:`counters`) and logged, at most once per
LOG_EVERY_S per reason.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.protocol.frame import Frame, FrameError, MsgType, SampleFormat, decode_raw
from edge_agent.sources.assembler import FrameAssembler
from edge_agent.sources.base import Emit
from edge_agent.window import SampleBlock

log = logging.getLogger(__name__)

JSON_SCHEMA = 1
JSON_TYPES = {"samples": MsgType.SAMPLES, "speed": MsgType.SPEED, "temperature": MsgType.TEMPERATURE}
MAX_MESSAGE_BYTES = 1 << 20  # a JSON message larger than this is refused unread
MAX_JSON_VALUES = 65536  # samples x channels in one JSON message
MAX_SAMPLES = 65535  # per channel, as in a binary frame (u16)
MAX_CHANNELS = 255  # as in a binary frame (u8)
MAX_RATE = 1e7  # Hz, as the binary decoder
KEEPALIVE_S = 30
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
LOG_EVERY_S = 10.0

# Every reason a message is rejected (counted as rejected_<reason>): the binary decoder's
# (protocol.frame.REASONS) and the JSON form's.
JSON_REASONS = ("json", "schema", "type", "field", "shape", "value", "rate", "oversize")


class MessageError(ValueError):
    """A JSON sensor message that cannot be used; ``reason`` is its counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_json(payload: bytes) -> tuple[Frame, float | None]:
    """Check and parse one JSON sensor message; return its frame and its ``full_scale``
    (None when not given). Raise MessageError with the reason."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError("oversize", f"{len(payload)} bytes, at most {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError("json", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MessageError("json", f"a JSON {type(doc).__name__}, expected an object")
    if doc.get("schema") != JSON_SCHEMA or isinstance(doc.get("schema"), bool):
        raise MessageError("schema", f"schema {doc.get('schema')!r}, this agent reads schema {JSON_SCHEMA}")
    mtype = JSON_TYPES.get(doc.get("type")) if isinstance(doc.get("type"), str) else None
    if mtype is None:
        raise MessageError("type", f"type {doc.get('type')!r}, expected one of {', '.join(JSON_TYPES)}")
    sensor_id = _int(doc, "sensor_id", 0, 0xFFFF)
    seq = _int(doc, "seq", 0, 0xFFFFFFFF)
    timestamp_us = _int(doc, "timestamp_us", 0, 2**64 - 1)
    fs = doc.get("fs")
    if not _is_number(fs) or not 0 < fs < MAX_RATE:
        raise MessageError("rate", f"fs {fs!r}, expected a number of Hz above 0 and below {MAX_RATE:g}")
    scale = doc.get("scale", 1.0)
    if not _is_number(scale) or not math.isfinite(scale) or scale == 0:
        raise MessageError("field", f"scale {scale!r}, expected a finite non-zero number")
    full_scale = doc.get("full_scale")
    if full_scale is not None and (not _is_number(full_scale) or not 0 < full_scale < math.inf):
        raise MessageError("field", f"full_scale {full_scale!r}, expected a positive number")
    channels = doc.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, list) for c in channels):
        raise MessageError("shape", "channels must be a non-empty list of lists of samples, one list per channel")
    lengths = {len(c) for c in channels}
    n = len(channels[0])
    if len(lengths) != 1 or n == 0:
        raise MessageError("shape", f"channels of lengths {sorted(lengths)}; all must have the same number (> 0) of samples")
    if len(channels) > MAX_CHANNELS or n > MAX_SAMPLES or n * len(channels) > MAX_JSON_VALUES:
        raise MessageError("oversize", f"{len(channels)} channel(s) x {n} samples; at most {MAX_CHANNELS} channels, "
                           f"{MAX_SAMPLES} samples per channel and {MAX_JSON_VALUES} values per message")
    try:
        values = np.asarray(channels)
    except (ValueError, OverflowError) as exc:  # e.g. a sample that is itself a list
        raise MessageError("shape", f"channels are not a table of samples: {exc}") from None
    if values.ndim != 2:
        raise MessageError("shape", f"channels have shape {values.shape}; expected (channels, samples)")
    if values.dtype.kind not in "iuf":
        raise MessageError("value", f"samples must be numbers, got {values.dtype.kind!r} ({values.dtype}) values")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes inf: refused just below
        samples = values.astype(np.float32)
    if not np.isfinite(samples).all():
        raise MessageError("value", "samples must be finite numbers (no NaN, Infinity, or values beyond float32)")
    frame = Frame(
        type=mtype, sensor_id=sensor_id, n_channels=values.shape[0], sample_format=SampleFormat.FLOAT32,
        n_samples=n, scale=float(scale), sample_rate=float(fs), seq=seq, timestamp_us=timestamp_us,
        payload=np.ascontiguousarray(samples.T).tobytes(),  # sample-major, as a binary frame
    )
    return frame, None if full_scale is None else float(full_scale)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int(doc: dict, key: str, lo: int, hi: int) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise MessageError("field", f"{key} {v!r}, expected an integer from {lo} to {hi}")
    return v


class MqttSensorSource:
    def __init__(self, cfg: Any) -> None:
        self.name = cfg.name
        self.host = cfg.broker_host
        self.port = cfg.broker_port
        self.topic = cfg.topic
        self.qos = cfg.qos
        self.client_id = f"edge-agent-{socket.gethostname()}-{self.name}"
        self.assembler = FrameAssembler(
            self.name, expected_fs=cfg.fs or None, tacho_channel=cfg.tacho_channel, pulses_per_rev=cfg.pulses_per_rev
        )
        self._lock = threading.Lock()  # counters and assembler: paho's thread vs counters()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._emit: Emit | None = None
        self._stopping = False
        self._connected = False
        self._last_log: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                **self._counts,
                **{f"rejected_{reason}": n for reason, n in dict(self._rejected).items()},
                **self.assembler.counters(),
            }

    # -- life cycle (the source thread) ------------------------------------------------------
    def run(self, emit: Emit, stop: threading.Event) -> None:
        self._emit = emit
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
        )
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        log.info("mqtt source %s: subscribing to %r at %s:%s", self.name, self.topic, self.host, self.port)
        client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        client.loop_start()  # paho's network thread: retries the first connect too
        try:
            stop.wait()
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()

    # -- paho callbacks (paho's network thread; they never raise) ----------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            if reason_code.is_failure:
                self._count("connect_refused")
                self._log_limited("connect", logging.ERROR, "mqtt source %s: %s:%s refused the connection: %s",
                                  self.name, self.host, self.port, reason_code)
                return
            self._connected = True
            self._count("connects")
            log.info("mqtt source %s: connected to %s:%s, subscribing to %r", self.name, self.host, self.port, self.topic)
            client.subscribe(self.topic, qos=self.qos)
        except Exception:  # noqa: BLE001 - never let an exception out into paho's loop
            log.exception("mqtt source %s: on_connect failed", self.name)

    def _on_connect_fail(self, client, userdata) -> None:  # type: ignore[no-untyped-def]
        self._count("connect_failures")
        self._log_limited("connect", logging.WARNING, "mqtt source %s: cannot reach %s:%s; retrying with backoff",
                          self.name, self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if self._connected and not self._stopping:
            self._count("disconnects")
            log.warning("mqtt source %s: link to %s:%s lost (%s); reconnecting with backoff",
                        self.name, self.host, self.port, reason_code)
        self._connected = False

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:  # type: ignore[no-untyped-def]
        try:
            if any(rc.is_failure for rc in reason_code_list):
                self._count("subscribe_refused")
                log.error("mqtt source %s: the broker refused the subscription to %r: %s",
                          self.name, self.topic, reason_code_list)
            else:
                self._count("subscribes")
        except Exception:  # noqa: BLE001
            log.exception("mqtt source %s: on_subscribe failed", self.name)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        try:
            blocks = self.handle(bytes(message.payload), message.topic)
            emit = self._emit
            for b in blocks:
                if emit is not None and emit(b) is not False:  # type: ignore[func-returns-value]
                    self._count("blocks")
                else:
                    self._count("blocks_refused")
        except Exception:  # noqa: BLE001 - a bug must not kill paho's thread
            self._count("internal_errors")
            self._log_limited("internal", logging.ERROR, "mqtt source %s: handling a message on %r failed (a bug; "
                              "counted in internal_errors, the source goes on)", self.name, message.topic, exc_info=True)

    # -- decoding ----------------------------------------------------------------------------
    def handle(self, payload: bytes, topic: str = "") -> list[SampleBlock]:
        """Decode one message and assemble it; the blocks to emit (none if rejected)."""
        full_scale = None
        try:
            if payload[:1] == b"{":
                frame, full_scale = decode_json(payload)
                form = "json"
            else:
                frame = decode_raw(payload)
                form = "binary"
        except (FrameError, MessageError) as exc:
            self._reject(exc.reason, str(exc), topic)
            return []
        with self._lock:
            self._counts["messages"] += 1
            self._counts[f"messages_{form}"] += 1
            blocks = self.assembler.blocks(frame)
        if full_scale is not None:
            blocks = [dataclasses.replace(b, full_scale=full_scale * abs(frame.scale)) for b in blocks]
        return blocks

    # -- counting and rate-limited logging --------------------------------------------------
    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _reject(self, reason: str, detail: str, topic: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
            self._unlogged[reason] += 1
        self._log_limited(f"reject:{reason}", logging.WARNING, "mqtt source %s: message on %r rejected (%s), %d such "
                          "since the last report: %s", self.name, topic, reason, lambda: self._take_unlogged(reason), detail)

    def _take_unlogged(self, reason: str) -> int:
        with self._lock:
            n = self._unlogged.pop(reason, 0)
        return n

    def _log_limited(self, key: str, level: int, fmt: str, *args: Any, exc_info: bool = False) -> None:
        """Log at most once per LOG_EVERY_S per ``key``; callable args are evaluated only then."""
        now = time.monotonic()
        if now - self._last_log.get(key, -math.inf) < LOG_EVERY_S:
            return
        self._last_log[key] = now
        log.log(level, fmt, *[a() if callable(a) else a for a in args], exc_info=exc_info)
