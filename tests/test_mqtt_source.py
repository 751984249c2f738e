"""The MQTT sensor source against a real mosquitto: binary frames and JSON messages, good
and malformed mixed, every good one decoded exactly once with its content, every bad one
counted with its reason; reconnect and resubscribe after a broker restart; and the JSON
form's checks one by one."""
from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.protocol.frame import HEADER_SIZE, MsgType, SampleFormat, encode_raw, samples_frame
from edge_agent.sources.mqtt_sensors import MqttSensorSource, decode_json
from edge_agent.window import SampleBlock

N_SAMPLES = 64  # per channel per message
N_CHANNELS = 2
SCALE = 0.001  # g per count
FS = 25600.0


def mqtt_source_config(broker, topic: str = "sensors/+/vib", name: str = "sens", fs: float = 0.0):
    cfg = default_config(source=[{"type": "mqtt", "name": name, "broker_host": broker.host, "broker_port": broker.port,
                                  "topic": topic, "fs": fs}])
    return cfg.sources[0]


def raw_counts(sensor: int, seq: int) -> np.ndarray:
    """The deterministic int16 counts of message (sensor, seq): (N_SAMPLES, N_CHANNELS)."""
    rng = np.random.default_rng([sensor, seq])
    return rng.integers(-32767, 32767, size=(N_SAMPLES, N_CHANNELS), dtype=np.int16)


def expected_samples(sensor: int, seq: int) -> np.ndarray:
    return raw_counts(sensor, seq).astype(np.float32) * np.float32(SCALE)


def timestamp(seq: int) -> int:
    return 1_700_000_000_000_000 + round(seq * N_SAMPLES * 1e6 / FS)


def binary_message(sensor: int, seq: int) -> bytes:
    frame = samples_frame(raw_counts(sensor, seq), sensor_id=sensor, seq=seq, timestamp_us=timestamp(seq),
                          sample_rate=FS, sample_format=SampleFormat.INT16, scale=SCALE)
    return encode_raw(frame)


def json_doc(sensor: int, seq: int) -> dict:
    return {"schema": 1, "type": "samples", "sensor_id": sensor, "fs": FS, "seq": seq,
            "timestamp_us": timestamp(seq), "scale": SCALE, "channels": raw_counts(sensor, seq).T.tolist()}


def json_message(sensor: int, seq: int) -> bytes:
    return json.dumps(json_doc(sensor, seq)).encode()


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def malformed(kind: str, rng: np.random.Generator) -> bytes:
    """One malformed message of ``kind``; sensor 9 and seq numbers outside the good streams."""
    good = binary_message(9, int(rng.integers(1000, 2000)))
    if kind == "crc":  # one payload byte flipped
        i = HEADER_SIZE + int(rng.integers(0, N_SAMPLES * N_CHANNELS * 2))
        return good[:i] + bytes([good[i] ^ 0x5A]) + good[i + 1:]
    if kind == "truncated":  # cut inside the payload: the CRC no longer matches
        return good[: HEADER_SIZE + int(rng.integers(8, 200))]
    if kind == "short":  # cut inside the header
        return good[: int(rng.integers(1, HEADER_SIZE))]
    if kind == "version":  # version 2, correctly checksummed
        return with_crc(b"\x02" + good[1:-4])
    if kind == "type_binary":  # unknown message type 0x7e, correctly checksummed
        return with_crc(good[:1] + b"\x7e" + good[2:-4])
    if kind == "length":  # header says 64 samples, payload holds 63
        return with_crc(good[: -4 - N_CHANNELS * 2])
    if kind == "bad_json":
        return json_message(9, 1)[: int(rng.integers(2, 40))]
    doc = json_doc(9, int(rng.integers(1000, 2000)))
    if kind == "type_json":
        doc["type"] = "pressure"
    elif kind == "shape":
        doc["channels"][1] = doc["channels"][1][:-1]
    elif kind == "nan":
        doc["channels"][0][5] = float("nan")  # json.dumps writes NaN, which JSON does not have
    elif kind == "strings":
        doc["channels"][0][5] = "0.5"
    elif kind == "schema":
        doc["schema"] = 2
    elif kind == "field":
        del doc["seq"]
    return json.dumps(doc).encode()


# kind of malformed message -> the reason it must be counted under
MALFORMED = {
    "crc": "crc", "truncated": "crc", "short": "short", "version": "version", "type_binary": "type",
    "length": "length", "bad_json": "json", "type_json": "type", "shape": "shape", "nan": "value",
    "strings": "value", "schema": "schema", "field": "field",
}


class Collector:
    """The source's emit: keeps every block (paho's thread appends, the test reads)."""

    def __init__(self) -> None:
        self.blocks: list[SampleBlock] = []

    def __call__(self, block: SampleBlock) -> bool:
        self.blocks.append(block)
        return True


def start_source(src: MqttSensorSource, emit) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(emit, stop), daemon=True)
    t.start()
    return stop, t


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def publisher(broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
    client.max_inflight_messages_set(200)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def handled(src: MqttSensorSource) -> int:
    c = src.counters()
    return c.get("messages", 0) + sum(v for k, v in c.items() if k.startswith("rejected_"))


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_ten_thousand_mixed_messages_through_mosquitto(mosquitto) -> None:
    rng = np.random.default_rng(42)
    sensors = (1, 2, 3, 4)
    per_sensor = 2250  # 9000 good messages
    n_bad = 1000
    good = [(s, q) for q in range(per_sensor) for s in sensors]
    forms = rng.integers(0, 2, len(good))  # 0 binary, 1 JSON
    kinds = list(MALFORMED)
    bad_kinds = [kinds[i % len(kinds)] for i in range(n_bad)]
    rng.shuffle(bad_kinds)
    # interleave: the bad ones at random places among the good ones (good order kept)
    slots = np.sort(rng.choice(len(good) + n_bad, n_bad, replace=False))
    plan: list[tuple[str, bytes]] = []
    gi = bi = 0
    for i in range(len(good) + n_bad):
        if bi < n_bad and slots[bi] == i:
            plan.append(("sensors/s9/vib", malformed(bad_kinds[bi], rng)))
            bi += 1
        else:
            s, q = good[gi]
            payload = json_message(s, q) if forms[gi] else binary_message(s, q)
            plan.append((f"sensors/s{s}/vib", payload))
            gi += 1
    assert len(plan) == 10_000

    src = MqttSensorSource(mqtt_source_config(mosquitto, fs=FS))
    sink = Collector()
    stop, thread = start_source(src, sink)
    try:
        wait_until(lambda: src.counters().get("subscribes", 0) == 1, 10, "the subscription")
        pub = publisher(mosquitto)
        t0 = time.monotonic()
        infos = []
        for i, (topic, payload) in enumerate(plan):
            # stay at most 500 messages ahead of the source, so the broker's per-client
            # queue (max_queued_messages, 1000 by default) never overflows and drops
            while i - handled(src) > 500:
                time.sleep(0.002)
            infos.append(pub.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(timeout=30)
        wait_until(lambda: handled(src) >= len(plan), 30, "all 10000 messages at the source")
        elapsed = time.monotonic() - t0
        pub.disconnect()
        pub.loop_stop()
    finally:
        stop.set()
        thread.join(5)
    print(f"\n10000 MQTT sensor messages (9000 good, 1000 malformed) published and decoded in {elapsed:.2f} s")
    assert all(info.is_published() for info in infos)

    counters = src.counters()
    expected_rejects = Counter(f"rejected_{MALFORMED[k]}" for k in bad_kinds)
    assert {k: v for k, v in counters.items() if k.startswith("rejected_")} == dict(expected_rejects)
    assert counters["messages"] == len(good)
    assert counters["messages_binary"] == int(np.sum(forms == 0))
    assert counters["messages_json"] == int(np.sum(forms == 1))
    assert counters["frames_samples"] == len(good)
    assert (counters["seq_gaps"], counters["duplicates"], counters["timestamp_jumps"], counters["rate_mismatches"]) == (0, 0, 0, 0)
    assert counters["blocks"] == len(good) * N_CHANNELS

    # every (sensor, seq) once, in order, with its content
    per_channel: dict[str, list[SampleBlock]] = defaultdict(list)
    for b in sink.blocks:
        per_channel[b.channel].append(b)
    assert set(per_channel) == {f"sens.s{s}.ch{c}" for s in sensors for c in range(N_CHANNELS)}
    form_of = {g: f for g, f in zip(good, forms)}
    for s in sensors:
        for c in range(N_CHANNELS):
            blocks = per_channel[f"sens.s{s}.ch{c}"]
            assert [b.seq for b in blocks] == [q * N_SAMPLES for q in range(per_sensor)]
            for q, b in enumerate(blocks):
                np.testing.assert_array_equal(b.samples, expected_samples(s, q)[:, c])
                assert (b.fs, b.t0_us) == (FS, timestamp(q))
                # binary int16 frames know their full scale; JSON without "full_scale" does not
                assert b.full_scale == (None if form_of[(s, q)] else pytest.approx(32767 * SCALE))
    assert elapsed < 60


@pytest.mark.broker
def test_reconnects_and_resubscribes_after_a_broker_restart(mosquitto) -> None:
    src = MqttSensorSource(mqtt_source_config(mosquitto, topic="sensors/#"))
    sink = Collector()
    stop, thread = start_source(src, sink)
    try:
        wait_until(lambda: src.counters().get("subscribes", 0) == 1, 10, "the first subscription")
        pub = publisher(mosquitto)
        pub.publish("sensors/a", binary_message(1, 0), qos=1).wait_for_publish(5)
        wait_until(lambda: len(sink.blocks) == 2, 10, "the first frame")
        pub.disconnect()
        pub.loop_stop()
        mosquitto.restart()
        wait_until(lambda: src.counters().get("subscribes", 0) == 2, 30, "the resubscription after the restart")
        pub = publisher(mosquitto)
        pub.publish("sensors/b", json_message(1, 1), qos=1).wait_for_publish(5)
        wait_until(lambda: len(sink.blocks) == 4, 10, "the frame after the restart")
        pub.disconnect()
        pub.loop_stop()
    finally:
        stop.set()
        thread.join(5)
    c = src.counters()
    assert (c["connects"], c["disconnects"], c["subscribes"], c["messages"]) == (2, 1, 2, 2)
    assert [b.seq for b in sink.blocks if b.channel == "sens.s1.ch0"] == [0, N_SAMPLES]
    assert c["seq_gaps"] == 0


@pytest.mark.broker
def test_agent_windows_samples_from_the_mqtt_source(tmp_path, mosquitto) -> None:
    """End to end in one process: mosquitto -> MqttSensorSource -> samples queue ->
    windower: the agent cuts windows from what sensors published."""
    cfg = default_config(
        source=[{"type": "mqtt", "name": "sens", "broker_host": mosquitto.host, "broker_port": mosquitto.port, "topic": "sensors/#"}],
        storage={"dir": str(tmp_path / "state")}, broker={"enabled": False}, window={"length": 1024, "hop": 512},
    )
    agent = Agent(cfg)
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    try:
        src = agent.sources[0]
        wait_until(lambda: src.counters().get("subscribes", 0) == 1, 10, "the subscription")
        pub = publisher(mosquitto)
        for q in range(64):  # 64 x 64 = 4096 samples per channel: 7 windows of 1024, hop 512
            pub.publish("sensors/x", binary_message(5, q) if q % 2 else json_message(5, q), qos=1)
        pub.publish("sensors/x", b"\x01garbage", qos=1).wait_for_publish(5)
        wait_until(lambda: agent.windows_total == 2 * 7, 20, "14 windows")
        pub.disconnect()
        pub.loop_stop()
    finally:
        stop.set()
        t.join(10)
    assert agent.windower.windows == {"sens.s5.ch0": 7, "sens.s5.ch1": 7}
    snap = agent.snapshot()
    assert snap["sources"]["sens"]["rejected_short"] == 1
    assert snap["sources"]["sens"]["messages"] == 64
    assert snap["data_quality"]["sources"]["sens"]["seq_gaps"] == 0


# -- the JSON form, and the decoder's checks, without a broker --------------------------------
class _Cfg:
    name, broker_host, broker_port, topic, qos, fs = "unit", "127.0.0.1", 1, "t", 1, 0.0
    tacho_channel, pulses_per_rev = -1, 1


def test_json_form_is_channel_major_and_becomes_a_float32_frame() -> None:
    doc = {"schema": 1, "type": "samples", "sensor_id": 3, "fs": 25600, "seq": 17, "timestamp_us": 5,
           "scale": 0.5, "full_scale": 100, "channels": [[1, 2, 3], [4.5, 5.5, 6.5]]}
    frame, full_scale = decode_json(json.dumps(doc).encode())
    assert (frame.type, frame.sensor_id, frame.n_channels, frame.n_samples, frame.seq, frame.timestamp_us) == (
        MsgType.SAMPLES, 3, 2, 3, 17, 5)
    assert frame.sample_format == SampleFormat.FLOAT32 and frame.sample_rate == 25600.0
    np.testing.assert_array_equal(frame.samples(), np.array([[0.5, 2.25], [1.0, 2.75], [1.5, 3.25]], np.float32))
    assert full_scale == 100.0
    src = MqttSensorSource(_Cfg())
    (b0, b1) = src.handle(json.dumps(doc).encode())
    assert (b0.channel, b1.channel) == ("unit.s3.ch0", "unit.s3.ch1")
    assert b0.full_scale == 50.0  # full_scale is in the message's units, before scale


JSON_CASES = [
    (b"{", "json"),
    (b"{\"schema\": 1,", "json"),
    (b"{\xff\xfe}", "json"),
    (b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", "json"),  # nested too deep for the parser
    (json.dumps({"schema": "1"}).encode(), "schema"),
    (json.dumps({"schema": True}).encode(), "schema"),
    (json.dumps({"schema": 1, "type": 7}).encode(), "type"),
    (json.dumps({"schema": 1, "type": "ping"}).encode(), "type"),
]


def _doc(**changes) -> bytes:
    doc = {"schema": 1, "type": "samples", "sensor_id": 1, "fs": 1000.0, "seq": 0, "timestamp_us": 0,
           "channels": [[0.1, 0.2], [0.3, 0.4]]}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize("payload, reason", [
    *JSON_CASES,
    (_doc(sensor_id=70000), "field"), (_doc(sensor_id=1.0), "field"), (_doc(sensor_id=...), "field"),
    (_doc(seq=-1), "field"), (_doc(seq=True), "field"), (_doc(timestamp_us="now"), "field"),
    (_doc(fs=0), "rate"), (_doc(fs="25600"), "rate"), (_doc(fs=1e9), "rate"), (_doc(fs=...), "rate"),
    (_doc(scale=0), "field"), (_doc(scale="x"), "field"), (_doc(full_scale=-1), "field"),
    (_doc(channels=[]), "shape"), (_doc(channels=[1, 2]), "shape"), (_doc(channels=[[1, 2], [3]]), "shape"),
    (_doc(channels=[[], []]), "shape"), (_doc(channels=[[[1], [2]], [[3], [4]]]), "shape"),
    (_doc(channels=[[1, [2]], [3, 4]]), "shape"), (_doc(channels={"a": [1]}), "shape"),
    (_doc(channels=[[1, None]]), "value"), (_doc(channels=[[True, False]]), "value"),
    (_doc(channels=[["1", "2"]]), "value"), (_doc(channels=[[1, float("inf")]]), "value"),
    (_doc(channels=[[1, 1e39]]), "value"), (_doc(channels=[[1, 10**30]]), "value"),
    (_doc(channels=[[0.0] * 65536, [0.0] * 1]), "shape"),
    (_doc(channels=[[0.0] * 40000, [0.0] * 40000]), "oversize"),
    (_doc(channels=[[0.0]] * 256), "oversize"),
    (b"{" + b" " * (1 << 20) + b"}", "oversize"),
    (b"", "short"), (b"\x00", "short"), (b"\x01" * 40, "crc"),
])
def test_every_malformed_message_is_counted_by_reason_and_nothing_raises(payload: bytes, reason: str) -> None:
    src = MqttSensorSource(_Cfg())
    assert src.handle(payload, "t") == []
    counters = src.counters()
    assert {k: v for k, v in counters.items() if k.startswith("rejected_")} == {f"rejected_{reason}": 1}
    assert counters.get("messages", 0) == 0


def test_callbacks_never_raise_and_count_refused_blocks() -> None:
    src = MqttSensorSource(_Cfg())
    refused: list[SampleBlock] = []

    def full_queue(block: SampleBlock) -> bool:
        refused.append(block)
        return False

    src._emit = full_queue
    msg = mqtt.MQTTMessage(topic=b"sensors/x")
    msg.payload = binary_message(1, 0)
    src._on_message(None, None, msg)
    assert len(refused) == 2 and src.counters()["blocks_refused"] == 2

    def broken(block: SampleBlock) -> bool:
        raise RuntimeError("a bug downstream")

    src._emit = broken
    msg.payload = binary_message(1, 1)
    src._on_message(None, None, msg)  # must not raise into paho's loop
    assert src.counters()["internal_errors"] == 1
    assert not any(k.startswith("rejected_") for k in src.counters())
