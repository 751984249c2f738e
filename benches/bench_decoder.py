"""Wire decoder: StreamDecoder.feed + Frame.samples() throughput, against the links it serves.

Baselines (the rates the decoder must keep up with, on one core):
- a 921,600-baud UART (8N1: 92,160 bytes/s), in samples/s for the same frame layout;
- MQTT at 10,000 messages/s of 256 int16 samples each (decode_raw per message), 2.56 M samples/s.
Goal (issue #3): >= 50 M int16 samples/s per core through feed + samples().

The serial case feeds a pre-built stream of int16 frames in 64 kB reads (what a serial
source reads at a time) and converts every frame to float32 samples; the MQTT case decodes
one unframed message at a time. Reported in samples per second (median round).
"""
import numpy as np
import pytest

from edge_agent.protocol.frame import decode_raw, encode_raw, encode_wire, samples_frame
from edge_agent.protocol.stream import StreamDecoder

READ_SIZE = 65536
UART_BYTES_PER_S = 921_600 / 10  # 8N1: 10 bits per byte
MQTT_MSG_PER_S = 10_000
STREAM_BYTES = 4 << 20  # per round


def _frame(i: int, n_ch: int, n_samp: int, rng: np.random.Generator):
    x = rng.integers(-(2**15), 2**15, (n_samp, n_ch))
    return samples_frame(x, sensor_id=1, seq=i, timestamp_us=i * 10_000, sample_rate=25600.0, scale=0.001)


@pytest.fixture(params=[(4, 256), (1, 512)], ids=lambda p: f"{p[0]}ch_x_{p[1]}")
def serial_stream(request):
    n_ch, n_samp = request.param
    rng = np.random.default_rng(0)
    one = len(encode_wire(_frame(0, n_ch, n_samp, rng)))
    n_frames = STREAM_BYTES // one
    stream = b"".join(encode_wire(_frame(i, n_ch, n_samp, rng)) for i in range(n_frames))
    reads = [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]
    return n_ch, n_samp, n_frames, one, reads


def _decode_stream(reads):
    dec = StreamDecoder()
    n = 0
    for chunk in reads:
        for frame in dec.feed(chunk):
            n += frame.samples().size
    return n


@pytest.mark.benchmark(group="wire-decoder")
def test_serial_feed_and_samples(benchmark, serial_stream):
    n_ch, n_samp, n_frames, wire_bytes, reads = serial_stream
    n = benchmark(_decode_stream, reads)
    assert n == n_frames * n_ch * n_samp
    t = benchmark.stats.stats.median
    samples_per_frame = n_ch * n_samp
    uart_samples_per_s = UART_BYTES_PER_S / wire_bytes * samples_per_frame
    benchmark.extra_info.update({
        "frame": f"{n_ch} ch x {n_samp} int16, {wire_bytes} B on the wire",
        "samples_per_s": n / t,
        "frames_per_s": n_frames / t,
        "wire_MB_per_s": sum(map(len, reads)) / t / 1e6,
        "uart_921600_samples_per_s": uart_samples_per_s,
        "x_uart_921600": n / t / uart_samples_per_s,
        "goal_50M_met": n / t >= 50e6,
    })


@pytest.fixture
def mqtt_messages():
    rng = np.random.default_rng(1)
    return [encode_raw(_frame(i, 1, 256, rng)) for i in range(1000)]


def _decode_messages(messages):
    n = 0
    for m in messages:
        n += decode_raw(m).samples().size
    return n


@pytest.mark.benchmark(group="wire-decoder")
def test_mqtt_decode_raw_and_samples(benchmark, mqtt_messages):
    n = benchmark(_decode_messages, mqtt_messages)
    assert n == 256 * len(mqtt_messages)
    t = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "frame": "1 ch x 256 int16 per message (raw, no COBS)",
        "samples_per_s": n / t,
        "messages_per_s": len(mqtt_messages) / t,
        "x_mqtt_10k_msg_per_s": len(mqtt_messages) / t / MQTT_MSG_PER_S,
        "mqtt_10k_samples_per_s": MQTT_MSG_PER_S * 256,
    })
