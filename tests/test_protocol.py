"""Wire protocol v1: the Python codec against the shared vectors, and the stream decoder.

The vectors (firmware_bridge/vectors/vectors.txt) are the contract with the C codec: both
must reproduce them byte for byte (tests/test_c_codec.py runs the C side).
"""
from __future__ import annotations

import importlib.util
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from edge_agent.protocol.frame import (
    MAX_ENCODED, MAX_PAYLOAD, MAX_RAW, REASONS, Frame, FrameError, MsgType, SampleFormat, decode_raw,
    decode_wire_chunk, encode_raw, encode_wire, samples_frame,
)
from edge_agent.protocol.stream import StreamDecoder

BRIDGE = Path(__file__).resolve().parents[1] / "firmware_bridge"
VECTORS = BRIDGE / "vectors" / "vectors.txt"


def _load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", BRIDGE / "vectors" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_vectors"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


make_vectors = _load_make_vectors()
VALID, INVALID = make_vectors.parse(VECTORS.read_text())
BY_NAME = {v.name: v for v in VALID}


def _bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _same(a: Frame, b: Frame) -> bool:
    """Field equality with floats compared by bit pattern (NaN-safe)."""
    return (
        (a.version, a.type, a.sensor_id, a.n_channels, a.sample_format, a.n_samples, a.seq, a.timestamp_us, a.payload)
        == (b.version, b.type, b.sensor_id, b.n_channels, b.sample_format, b.n_samples, b.seq, b.timestamp_us, b.payload)
        and _bits(a.scale) == _bits(b.scale) and _bits(a.sample_rate) == _bits(b.sample_rate)
    )


# ---- the vectors ----------------------------------------------------------------------

def test_committed_vectors_equal_what_the_generator_writes_now():
    assert make_vectors.render() == VECTORS.read_text(), "run firmware_bridge/vectors/make_vectors.py"


def test_vectors_cover_every_type_format_and_reason():
    assert {v.frame.type for v in VALID} == {int(t) for t in MsgType}
    assert {v.frame.sample_format for v in VALID} == {int(f) for f in SampleFormat}
    assert {v.frame.n_channels for v in VALID if v.frame.n_channels} >= {1, 2, 4, 8}
    assert {i.reason for i in INVALID} == set(REASONS) - {"oversize"}  # oversize: tests below
    assert max(len(v.frame.payload) for v in VALID) == MAX_PAYLOAD
    assert {v.frame.seq for v in VALID} >= {0, 2**32 - 1}


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_python_encodes_each_valid_vector_byte_for_byte(vec):
    assert encode_wire(vec.frame) == vec.wire
    assert cobs.encode(encode_raw(vec.frame)) + b"\x00" == vec.wire


@pytest.mark.parametrize("vec", VALID, ids=lambda v: v.name)
def test_python_decodes_each_valid_vector_to_its_fields(vec):
    got = decode_wire_chunk(vec.wire[:-1])
    assert _same(got, vec.frame)
    assert _same(decode_raw(cobs.decode(vec.wire[:-1])), vec.frame)


@pytest.mark.parametrize("vec", INVALID, ids=lambda v: v.name)
def test_each_invalid_vector_is_rejected_with_its_reason(vec):
    with pytest.raises(FrameError) as err:
        decode_wire_chunk(vec.wire[:-1])
    assert err.value.reason == vec.reason
    dec = StreamDecoder()
    assert dec.feed(vec.wire) == []
    assert dec.rejected == {vec.reason: 1} and dec.frames_ok == 0


def test_all_vectors_as_one_stream():
    stream = b"".join(v.wire for pair in zip(VALID, INVALID) for v in pair)
    dec = StreamDecoder()
    frames = dec.feed(stream)
    n = min(len(VALID), len(INVALID))
    assert len(frames) == n and all(_same(f, v.frame) for f, v in zip(frames, VALID))
    expected = {}
    for inv in INVALID[:n]:
        expected[inv.reason] = expected.get(inv.reason, 0) + 1
    assert dict(dec.rejected) == expected


def test_worked_example_in_protocol_md_is_the_vector():
    text = (BRIDGE / "PROTOCOL.md").read_text()
    block = re.search(r"<!-- worked-example-wire.*?-->\s*```text\n(.*?)```", text, re.S)
    assert block is not None
    assert bytes.fromhex(block.group(1)) == BY_NAME["worked_example"].wire
    f = decode_wire_chunk(BY_NAME["worked_example"].wire[:-1])
    counts = np.array([[100, -100], [0, 256], [-1, 1000]], np.float32)
    np.testing.assert_array_equal(f.samples(), counts * np.float32(0.001))


def _worst_case_wire_bytes(n_ch: int, n_samp: int) -> int:
    x = np.full((n_samp, n_ch), 0x5A5A)  # no 0x00 byte in the payload: the most COBS overhead
    return len(encode_wire(samples_frame(x, sensor_id=1, seq=1, timestamp_us=1, sample_rate=25600.0)))


def test_line_rate_tables_in_protocol_md_match_the_codec():
    text = (BRIDGE / "PROTOCOL.md").read_text()
    sizes = re.findall(r"^\| (\d+) x (\d+)\b[^|]*\| (\d+) B \| (\d+) B \|", text, re.M)
    assert len(sizes) == 5
    for n_ch, n_samp, payload, wire in sizes:
        assert (2 * int(n_ch) * int(n_samp), _worst_case_wire_bytes(int(n_ch), int(n_samp))) == (int(payload), int(wire))
    loads = re.findall(r"^\| (\d+) ch x ([\d.]+) kHz[^|]*\| (\d+) x (\d+) \| ([\d,]+) \| \**(\d+) %", text, re.M)
    assert len(loads) == 7
    for n_ch, khz, frame_ch, n_samp, per_s, uart_pct in loads:
        assert int(n_ch) == int(frame_ch)
        bytes_per_s = float(khz) * 1000 / int(n_samp) * _worst_case_wire_bytes(int(n_ch), int(n_samp))
        assert round(bytes_per_s) == int(per_s.replace(",", ""))
        assert round(100 * bytes_per_s / 92160) == int(uart_pct)


def test_crc_is_zlib_crc32_over_header_and_payload():
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the check value PROTOCOL.md and the C codec state
    raw = encode_raw(BY_NAME["worked_example"].frame)
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4]) == 0x48151D8B
    assert zlib.crc32(raw) == 0x2144DF1C  # the CRC-32 residue


def test_samples_are_scaled_sample_major():
    f = BY_NAME["int16_4ch_64"].frame
    raw = np.frombuffer(f.payload, "<i2").reshape(64, 4)
    x = f.samples()
    assert x.shape == (64, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x, raw.astype(np.float32) * np.float32(f.scale))


def test_encode_refuses_a_payload_over_the_limit():
    x = np.zeros((MAX_PAYLOAD // 2 + 1, 1), np.int16)
    with pytest.raises(FrameError) as err:
        encode_raw(samples_frame(x, sensor_id=1, seq=0, timestamp_us=0, sample_rate=1.0))
    assert err.value.reason == "oversize"


def test_decode_refuses_a_raw_frame_over_the_limit():
    with pytest.raises(FrameError) as err:
        decode_raw(b"\x01" * (MAX_RAW + 1))
    assert err.value.reason == "oversize"


def test_replies_carry_fixed_payloads():
    assert struct.unpack("<I", BY_NAME["pong"].frame.payload)[0] == 0xDEADBEEF
    assert BY_NAME["pong"].frame.seq == BY_NAME["ping"].frame.seq
    assert tuple(BY_NAME["ack_set_rate_ok"].frame.payload) == (MsgType.SET_RATE, 0)
    bad = encode_raw(Frame(type=MsgType.PONG, sensor_id=1, payload=b"\x01\x02"))
    with pytest.raises(FrameError, match="length"):
        decode_raw(bad)


# ---- StreamDecoder ----------------------------------------------------------------------

def _frames(n: int, nch: int = 2, ns: int = 40) -> list[Frame]:
    rng = np.random.default_rng(7)
    return [
        samples_frame(rng.integers(-2000, 2000, (ns, nch)), sensor_id=3, seq=i, timestamp_us=i * 1000,
                      sample_rate=25600.0, scale=make_vectors.f32(0.001))
        for i in range(n)
    ]


def test_split_anywhere_gives_the_same_frames():
    frames = _frames(3)
    stream = b"".join(encode_wire(f) for f in frames)
    for cut in range(len(stream) + 1):
        dec = StreamDecoder()
        got = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert got == frames, cut
        assert not dec.rejected
    dec = StreamDecoder()
    assert [f for b in stream for f in dec.feed(bytes([b]))] == frames


def test_split_in_three_anywhere():
    frames = _frames(2, nch=1, ns=20)
    stream = b"".join(encode_wire(f) for f in frames)
    for i in range(0, len(stream) + 1, 3):
        for j in range(i, len(stream) + 1, 5):
            dec = StreamDecoder()
            assert dec.feed(stream[:i]) + dec.feed(stream[i:j]) + dec.feed(stream[j:]) == frames


def test_garbage_then_resync_within_one_frame():
    a, b, c = _frames(3)
    garbage = bytes(range(1, 200))  # no 0x00: it joins the front of frame a
    dec = StreamDecoder()
    got = dec.feed(garbage + encode_wire(a) + encode_wire(b) + encode_wire(c))
    assert got == [b, c]  # a is lost with the garbage, nothing after it
    assert sum(dec.rejected.values()) == 1 and dec.frames_ok == 2
    # joining the line mid-frame: the tail of a, then b decodes
    dec = StreamDecoder()
    wire_a = encode_wire(a)
    assert dec.feed(wire_a[len(wire_a) // 2:] + encode_wire(b)) == [b]
    assert sum(dec.rejected.values()) == 1


def test_garbage_with_a_delimiter_costs_no_frame():
    a, b = _frames(2)
    dec = StreamDecoder()
    assert dec.feed(b"\x13\x37\x05\x42\x00" + encode_wire(a) + b"\xff\x01\x00" + encode_wire(b)) == [a, b]
    assert dec.rejected == {"cobs": 2}


def test_consecutive_zero_bytes_are_ignored():
    a, b = _frames(2)
    dec = StreamDecoder()
    assert dec.feed(b"\x00" * 10 + encode_wire(a) + b"\x00" * 50 + encode_wire(b) + b"\x00") == [a, b]
    assert not dec.rejected and dec.frames_ok == 2


@pytest.mark.parametrize("piece", [1, 997, 65536, 10**6])
def test_oversize_run_is_bounded_and_counted_once(piece):
    """A 1 MB run without 0x00 in pieces of any size: never more than max_encoded bytes held,
    counted once, and the next frame after a 0x00 decodes."""
    (a,) = _frames(1)
    max_encoded = 5000 if piece == 1 else MAX_ENCODED  # keeps the byte-at-a-time case fast
    run = bytes(np.random.default_rng(1).integers(1, 256, 10**6 if piece > 1 else 20000, dtype=np.uint8))
    dec = StreamDecoder(max_encoded=max_encoded)
    for i in range(0, len(run), piece):
        assert dec.feed(run[i:i + piece]) == []
        assert dec.pending_bytes <= max_encoded
    assert dec.feed(b"\x00" + encode_wire(a)) == [a]
    assert dec.rejected == {"oversize": 1}
    assert dec.pending_bytes == 0


def test_oversize_verdict_does_not_depend_on_the_cut():
    (a,) = _frames(1)
    stream = b"\x01" * 3000 + b"\x00" + encode_wire(a) + b"\x02" * 2500
    counts = []
    for piece in (1, 7, 1000, len(stream)):
        dec = StreamDecoder(max_encoded=2000)
        frames = [f for i in range(0, len(stream), piece) for f in dec.feed(stream[i:i + piece])]
        assert frames == [a]
        counts.append(dict(dec.rejected))
    assert counts == [{"oversize": 2}] * 4


def test_unknown_version_type_and_format_are_counted_by_reason():
    raw_frame = make_vectors.raw_frame
    chunks = [
        raw_frame(version=2), raw_frame(version=2), raw_frame(type=0x42), raw_frame(sample_format=9),
        raw_frame(sample_rate=0.0), raw_frame(n_samples=3),
    ]
    (a,) = _frames(1)
    dec = StreamDecoder()
    got = dec.feed(b"".join(cobs.encode(c) + b"\x00" for c in chunks) + encode_wire(a))
    assert got == [a]
    assert dec.rejected == {"version": 2, "type": 1, "format": 1, "rate": 1, "length": 1}
    counters = dec.counters()
    assert counters["rejected_version"] == 2 and counters["frames_ok"] == 1
    assert dec.last_error.startswith("length:")  # the last rejected chunk


def test_reset_drops_a_partial_frame_and_counts_it():
    a, b = _frames(2)
    dec = StreamDecoder()
    wire_a = encode_wire(a)
    assert dec.feed(wire_a[:30]) == [] and dec.pending_bytes == 30
    dec.reset()
    assert dec.pending_bytes == 0 and dec.rejected == {"short": 1}
    assert dec.feed(encode_wire(b)) == [b]


def test_bytes_in_and_frames_ok_are_counted():
    frames = _frames(4)
    stream = b"".join(encode_wire(f) for f in frames)
    dec = StreamDecoder()
    dec.feed(stream[:100])
    dec.feed(stream[100:])
    assert dec.counters() == {"frames_ok": 4, "bytes_in": len(stream)}
