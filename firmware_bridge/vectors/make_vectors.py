"""Generate firmware_bridge/vectors/vectors.txt from the Python codec (edge_agent/protocol).

The C codec (firmware_bridge/c/test_edge_frame.c) and the Python codec
(tests/test_protocol.py) must both reproduce every vector byte for byte; the format is
described in vectors/README.md. The output is deterministic (integer formulas and
``random.Random`` with fixed seeds, whose ``getrandbits`` stream Python keeps stable), and
tests/test_protocol.py checks that the committed file equals what this script writes now.

    .venv/bin/python firmware_bridge/vectors/make_vectors.py          # rewrite vectors.txt
    .venv/bin/python firmware_bridge/vectors/make_vectors.py --check  # exit 1 if it differs
"""
from __future__ import annotations

import random
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from cobs import cobs

from edge_agent.protocol.frame import (
    HEADER, MAX_PAYLOAD, Frame, FrameError, MsgType, SampleFormat, decode_wire_chunk, encode_raw, encode_wire,
)

OUT = Path(__file__).with_name("vectors.txt")


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32(x: float) -> float:
    """``x`` rounded to float32, as it comes back from the wire."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def int16_bytes(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def rand_ints(seed: int, n: int, bits: int) -> list[int]:
    """``n`` signed ``bits``-bit integers from a fixed seed (stable across Python versions)."""
    r = random.Random(seed)
    half = 1 << (bits - 1)
    return [r.getrandbits(bits) - half for _ in range(n)]


def samples(
    name: str, fmt: SampleFormat, n_ch: int, n_samp: int, *, seed: int, mtype: MsgType = MsgType.SAMPLES,
    scale: float = 0.001, rate: float = 25600.0, sensor: int = 1, seq: int = 0, ts: int = 0,
) -> tuple[str, Frame]:
    n = n_ch * n_samp
    if fmt == SampleFormat.INT16:
        payload = int16_bytes(rand_ints(seed, n, 16))
    elif fmt == SampleFormat.INT32:
        payload = struct.pack(f"<{n}i", *rand_ints(seed, n, 32))
    else:  # float32 values that are exact in binary32 (multiples of 1/16)
        payload = struct.pack(f"<{n}f", *(v / 16 for v in rand_ints(seed, n, 16)))
    return name, Frame(
        type=mtype, sensor_id=sensor, n_channels=n_ch, sample_format=fmt, n_samples=n_samp, scale=f32(scale),
        sample_rate=f32(rate), seq=seq, timestamp_us=ts, payload=payload,
    )


def control(name: str, mtype: MsgType, payload: bytes = b"", *, rate: float = 0.0, seq: int = 0, ts: int = 0, sensor: int = 1):
    return name, Frame(type=mtype, sensor_id=sensor, sample_rate=f32(rate), seq=seq, timestamp_us=ts, payload=payload)


def cobs_run(name: str, runs: list[int], *, seq_from: int) -> tuple[str, Frame]:
    """A 1-channel int16 frame whose raw bytes end with 0x00 runs of non-zero bytes of the
    given lengths (each preceded by a 0x00; the last run includes the 4 CRC bytes): this
    puts COBS blocks exactly at or around the 254-byte boundary. The seq is searched from
    ``seq_from`` until the CRC has no 0x00 byte, so the runs are exact."""
    body = bytearray()
    for run in runs:
        body += b"\x00" + b"\x5a" * run
    body = body[:-4]  # the CRC supplies the last 4 bytes of the last run
    pad = (-len(body)) % 2
    payload = bytes(b"\x11" * pad + body)
    for seq in range(seq_from, seq_from + 1000):
        frame = Frame(
            type=MsgType.SAMPLES, sensor_id=1, n_channels=1, sample_format=SampleFormat.INT16,
            n_samples=len(payload) // 2, scale=f32(0.001), sample_rate=f32(25600.0), seq=seq, timestamp_us=0,
            payload=payload,
        )
        raw = encode_raw(frame)
        if 0 not in raw[-4:]:
            tail = raw[-(sum(runs) + len(runs)):]
            assert tail == b"".join(b"\x00" + b"\x5a" * r for r in runs)[:-4] + raw[-4:]
            return name, frame
    raise AssertionError("no seq gives a CRC without a zero byte")


def valid_vectors() -> list[tuple[str, Frame]]:
    zeros_ff = int16_bytes([(0, -1, 0x00FF, -256)[i % 4] for i in range(4 * 64)])  # 00 00, ff ff, ff 00, 00 ff
    v = [
        samples("int16_1ch_16", SampleFormat.INT16, 1, 16, seed=1, seq=1, ts=1_000_000),
        samples("int16_4ch_64", SampleFormat.INT16, 4, 64, seed=2, seq=2, ts=1_002_500),
        samples("int16_8ch_32", SampleFormat.INT16, 8, 32, seed=3, sensor=0xBEEF, seq=77, ts=1_731_000_000_000_000),
        samples("int32_1ch_8", SampleFormat.INT32, 1, 8, seed=4, scale=1e-6, rate=51200.0),
        samples("int32_4ch_16", SampleFormat.INT32, 4, 16, seed=5, scale=2.5e-7, rate=12800.0, seq=1000),
        samples("float32_1ch_8", SampleFormat.FLOAT32, 1, 8, seed=6, scale=1.0, rate=6400.0),
        samples("float32_8ch_4", SampleFormat.FLOAT32, 8, 4, seed=7, scale=1.0, rate=1000.0, sensor=65535),
        ("speed_rpm_float32", Frame(
            type=MsgType.SPEED, sensor_id=9, n_channels=1, sample_format=SampleFormat.FLOAT32, n_samples=4,
            scale=1.0, sample_rate=10.0, seq=5, timestamp_us=2_000_000,
            payload=struct.pack("<4f", 1500.0, 1502.5, 1505.0, 1507.5))),
        ("speed_rpm_int16_scaled", Frame(
            type=MsgType.SPEED, sensor_id=9, n_channels=1, sample_format=SampleFormat.INT16, n_samples=2,
            scale=f32(0.1), sample_rate=10.0, seq=6, timestamp_us=2_200_000, payload=int16_bytes([15000, 15025]))),
        ("temperature_degc", Frame(
            type=MsgType.TEMPERATURE, sensor_id=9, n_channels=1, sample_format=SampleFormat.FLOAT32, n_samples=1,
            scale=1.0, sample_rate=1.0, seq=3, timestamp_us=3_000_000, payload=struct.pack("<f", 41.5))),
        control("ping", MsgType.PING, struct.pack("<I", 0xDEADBEEF), seq=10, ts=5_000_000),
        control("pong", MsgType.PONG, struct.pack("<I", 0xDEADBEEF), seq=10, ts=5_000_130),
        control("start", MsgType.START, seq=11),
        control("stop", MsgType.STOP, seq=12),
        control("set_rate", MsgType.SET_RATE, rate=12800.0, seq=13),
        control("ack_set_rate_ok", MsgType.ACK, bytes([MsgType.SET_RATE, 0]), seq=13),
        control("ack_start_error", MsgType.ACK, bytes([MsgType.START, 1]), seq=14),
        control("time_sync", MsgType.TIME_SYNC, seq=15, ts=1_731_000_123_456_789),
        samples("seq_before_wrap", SampleFormat.INT16, 2, 8, seed=8, seq=0xFFFFFFFF, ts=(1 << 64) - 1),
        samples("seq_after_wrap", SampleFormat.INT16, 2, 8, seed=9, seq=0, ts=0),
        samples("max_payload_int16_8ch_4096", SampleFormat.INT16, 8, MAX_PAYLOAD // 16, seed=10, seq=123456),
        ("zeros_and_ff_payload", Frame(
            type=MsgType.SAMPLES, sensor_id=0, n_channels=4, sample_format=SampleFormat.INT16, n_samples=64,
            scale=f32(0.001), sample_rate=25600.0, seq=256, timestamp_us=0, payload=zeros_ff)),
        cobs_run("cobs_run_253_at_end", [253], seq_from=0),
        cobs_run("cobs_run_254_at_end", [254], seq_from=0),
        cobs_run("cobs_run_255_at_end", [255], seq_from=0),
        cobs_run("cobs_run_508_at_end", [508], seq_from=0),
        cobs_run("cobs_run_254_then_zero_then_10", [254, 10], seq_from=0),
    ]
    v.append(("worked_example", example_frame()))
    return v


def example_frame() -> Frame:
    """The frame shown step by step in PROTOCOL.md: 2 channels x 3 int16 samples."""
    return Frame(
        type=MsgType.SAMPLES, sensor_id=7, n_channels=2, sample_format=SampleFormat.INT16, n_samples=3,
        scale=f32(0.001), sample_rate=25600.0, seq=41, timestamp_us=1_000_000,
        payload=int16_bytes([100, -100, 0, 256, -1, 1000]),
    )


def raw_frame(**fields) -> bytes:
    """Header | payload | valid CRC with any field values, even illegal ones."""
    f = dict(version=1, type=MsgType.SAMPLES, sensor_id=1, n_channels=1, sample_format=SampleFormat.INT16, n_samples=4,
             scale=f32(0.001), sample_rate=25600.0, seq=1, timestamp_us=0, payload=int16_bytes([1, 2, 3, 4]))
    f.update(fields)
    body = HEADER.pack(f["version"], f["type"], f["sensor_id"], f["n_channels"], f["sample_format"], f["n_samples"],
                       f["scale"], f["sample_rate"], f["seq"], f["timestamp_us"]) + f["payload"]
    return body + struct.pack("<I", zlib.crc32(body))


def raw_control(mtype: MsgType, payload: bytes = b"", **fields) -> bytes:
    return raw_frame(type=mtype, n_channels=0, sample_format=SampleFormat.NONE, n_samples=0, scale=1.0,
                     sample_rate=0.0, payload=payload, **fields)


def invalid_vectors() -> list[tuple[str, str, bytes]]:
    """(name, expected reason, wire chunk without the delimiter)."""
    good = encode_raw(example_frame())
    flipped = bytearray(good)
    flipped[30] ^= 0x08
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    good_wire = cobs.encode(good)
    v = [
        ("crc_payload_bit_flipped", "crc", cobs.encode(bytes(flipped))),
        ("crc_field_corrupted", "crc", cobs.encode(bytes(bad_crc))),
        ("crc_header_byte_dropped", "crc", cobs.encode(good[:10] + good[11:])),
        ("version_2", "version", cobs.encode(raw_frame(version=2))),
        ("version_0", "version", cobs.encode(raw_frame(version=0))),
        ("type_0x00", "type", cobs.encode(raw_frame(type=0))),
        ("type_0x7f", "type", cobs.encode(raw_frame(type=0x7F))),
        ("format_4", "format", cobs.encode(raw_frame(sample_format=4))),
        ("format_none_on_samples", "format", cobs.encode(raw_frame(sample_format=SampleFormat.NONE))),
        ("scale_zero", "format", cobs.encode(raw_frame(scale=0.0))),
        ("scale_nan", "format", cobs.encode(raw_frame(scale=float("nan")))),
        ("scale_inf", "format", cobs.encode(raw_frame(scale=float("-inf")))),
        ("length_payload_one_byte_short", "length", cobs.encode(raw_frame(payload=int16_bytes([1, 2, 3, 4])[:-1]))),
        ("length_n_samples_too_large", "length", cobs.encode(raw_frame(n_samples=5))),
        ("length_zero_channels", "length", cobs.encode(raw_frame(n_channels=0, payload=b""))),
        ("length_zero_samples", "length", cobs.encode(raw_frame(n_samples=0, payload=b""))),
        ("length_ping_3_byte_token", "length", cobs.encode(raw_control(MsgType.PING, b"\x01\x02\x03"))),
        ("length_ack_3_bytes", "length", cobs.encode(raw_control(MsgType.ACK, b"\x84\x00\x00"))),
        ("length_start_with_payload", "length", cobs.encode(raw_control(MsgType.START, b"\x01"))),
        ("rate_zero", "rate", cobs.encode(raw_frame(sample_rate=0.0))),
        ("rate_negative", "rate", cobs.encode(raw_frame(sample_rate=-25600.0))),
        ("rate_nan", "rate", cobs.encode(raw_frame(sample_rate=float("nan")))),
        ("rate_infinite", "rate", cobs.encode(raw_frame(sample_rate=float("inf")))),
        ("rate_10mhz", "rate", cobs.encode(raw_frame(sample_rate=1e7))),
        ("rate_set_rate_zero", "rate", cobs.encode(raw_control(MsgType.SET_RATE))),
        ("truncated_mid_block", "cobs", good_wire[:-5]),
        ("truncated_to_20_bytes", "short", cobs.encode(good[:20])),
        ("truncated_empty_frame", "short", cobs.encode(b"")),
        ("cobs_code_past_end", "cobs", b"\x05\x01\x02"),
        ("cobs_ff_block_short", "cobs", b"\xff" + b"\x01" * 200),
    ]
    for name, reason, chunk in v:
        try:
            decode_wire_chunk(chunk)
        except FrameError as exc:
            assert exc.reason == reason, (name, exc)
        else:
            raise AssertionError(f"{name} decodes")
    return v


def hexs(b: bytes) -> str:
    return b.hex() if b else "-"


def render() -> str:
    lines = [
        "# Wire protocol v1 test vectors, generated by make_vectors.py from edge_agent/protocol (do not edit).",
        "# Format: see README.md. Fields are separated by one space.",
        "# valid <name> <version> <type> <sensor_id> <n_channels> <sample_format> <n_samples> <scale_bits> <rate_bits> <seq> <timestamp_us> <payload_hex> <wire_hex>",
        "# invalid <name> <reason> <wire_hex>",
    ]
    for name, f in valid_vectors():
        wire = encode_wire(f)
        assert decode_wire_chunk(wire[:-1]) == f, name
        fields = (f.version, int(f.type), f.sensor_id, f.n_channels, int(f.sample_format), f.n_samples)
        lines.append(" ".join([
            "valid", name, *map(str, fields), f"{f32_bits(f.scale):08x}", f"{f32_bits(f.sample_rate):08x}",
            str(f.seq), str(f.timestamp_us), hexs(f.payload), wire.hex(),
        ]))
    for name, reason, chunk in invalid_vectors():
        lines.append(f"invalid {name} {reason} {chunk.hex()}00")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ValidVector:
    name: str
    frame: Frame
    wire: bytes  # COBS-encoded, delimiter included


@dataclass(frozen=True)
class InvalidVector:
    name: str
    reason: str  # one of frame.REASONS
    wire: bytes  # delimiter included


def parse(text: str) -> tuple[list[ValidVector], list[InvalidVector]]:
    """The vectors in ``text`` (the format of vectors.txt), for the tests."""
    valid, invalid = [], []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        kind, name, *f = line.split(" ")
        if kind == "valid":
            version, mtype, sensor, nch, fmt, nsamp = map(int, f[:6])
            scale, rate = (struct.unpack("<f", struct.pack("<I", int(x, 16)))[0] for x in f[6:8])
            payload = b"" if f[10] == "-" else bytes.fromhex(f[10])
            frame = Frame(mtype, sensor, nch, fmt, nsamp, scale, rate, int(f[8]), int(f[9]), payload, version)
            valid.append(ValidVector(name, frame, bytes.fromhex(f[11])))
        elif kind == "invalid":
            invalid.append(InvalidVector(name, f[0], bytes.fromhex(f[1])))
        else:
            raise ValueError(f"unknown vector kind {kind!r}")
    return valid, invalid


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text() == text
        print("vectors.txt is up to date" if same else "vectors.txt differs from make_vectors.py: regenerate it")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - 4} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
