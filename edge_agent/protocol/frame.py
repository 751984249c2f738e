"""Frames of the sensor wire protocol, version 1 (firmware_bridge/PROTOCOL.md is the spec).

A frame on the wire is ``COBS(header | payload | crc32) 0x00``:

    offset size  field (little-endian)
    0      1     version          = 1
    1      1     type             MsgType
    2      2     sensor_id        which sensor MCU (u16)
    4      1     n_channels       channels interleaved in the payload
    5      1     sample_format    SampleFormat: int16, int32, float32
    6      2     n_samples        samples per channel in this frame
    8      4     scale            float32: physical value = raw * scale (g, rpm, degC)
    12     4     sample_rate      float32, Hz
    16     4     seq              u32 frame counter per sensor and type, +1 per frame
    20     8     timestamp_us     u64, time of the first sample (MCU clock, microseconds)
    28     N     payload          n_samples x n_channels values, sample-major
    28+N   4     crc32            zlib CRC-32 (IEEE 802.3) of bytes 0 .. 28+N-1

COBS (Cheshire & Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM ToN 7(2), 1999)
removes every 0x00 from the frame, so 0x00 marks frame ends and a receiver that lost its
place resynchronises at the next 0x00. We use the ``cobs`` package (C), ``zlib.crc32`` and
``numpy.frombuffer``: no per-sample Python anywhere.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from cobs import cobs

VERSION = 1
HEADER = struct.Struct("<BBHBBHffIQ")
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 28
MAX_PAYLOAD = 65536  # bytes; a larger frame is refused (sensor frames are a few kB)
MAX_RAW = HEADER_SIZE + MAX_PAYLOAD + CRC.size
MAX_ENCODED = MAX_RAW + MAX_RAW // 254 + 2  # COBS worst case


class MsgType(IntEnum):
    # MCU -> gateway
    SAMPLES = 0x01  # vibration (accelerometer) samples, g
    SPEED = 0x02  # shaft speed samples, rpm
    TEMPERATURE = 0x03  # temperature samples, degC
    PONG = 0x10  # answer to PING; payload: the PING's u32 token
    ACK = 0x11  # answer to a command; payload: u8 command type, u8 status (0 = ok)
    # gateway -> MCU
    PING = 0x81  # payload: u32 token
    START = 0x82  # start streaming
    STOP = 0x83  # stop streaming
    SET_RATE = 0x84  # header sample_rate = the requested rate
    TIME_SYNC = 0x85  # header timestamp_us = gateway time; MCU sets its clock


class SampleFormat(IntEnum):
    NONE = 0  # frames without samples (commands, PONG, ACK)
    INT16 = 1
    INT32 = 2
    FLOAT32 = 3


DTYPES = {SampleFormat.INT16: np.dtype("<i2"), SampleFormat.INT32: np.dtype("<i4"), SampleFormat.FLOAT32: np.dtype("<f4")}
SAMPLE_TYPES = frozenset({MsgType.SAMPLES, MsgType.SPEED, MsgType.TEMPERATURE})
# Payload bytes of the frames that carry no samples: a v1 frame of these types with any
# other payload length is refused ("length"), so a receiver can read the token/status fields
# without bounds checks of its own.
FIXED_PAYLOAD = {
    MsgType.PONG: 4, MsgType.ACK: 2, MsgType.PING: 4, MsgType.START: 0, MsgType.STOP: 0,
    MsgType.SET_RATE: 0, MsgType.TIME_SYNC: 0,
}
MAX_RATE = 1e7  # Hz; a sample rate must satisfy 0 < rate < MAX_RATE
_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


class FrameError(ValueError):
    """A frame that cannot be used. ``reason`` is a short counter name (see REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# Every reason a frame is rejected, as counted by the decoders.
REASONS = ("cobs", "short", "crc", "version", "type", "format", "length", "rate", "oversize")


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    sensor_id: int
    n_channels: int = 0
    sample_format: int = SampleFormat.NONE
    n_samples: int = 0
    scale: float = 1.0
    sample_rate: float = 0.0
    seq: int = 0
    timestamp_us: int = 0
    payload: bytes = b""
    version: int = VERSION

    def samples(self) -> np.ndarray:
        """The samples in physical units: float32 array (n_samples, n_channels)."""
        raw = np.frombuffer(self.payload, dtype=DTYPES[SampleFormat(self.sample_format)])
        out = raw.reshape(self.n_samples, self.n_channels).astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    @property
    def full_scale(self) -> float | None:
        """Largest magnitude the sensor can report (for clipping checks); None for floats."""
        if self.sample_format == SampleFormat.INT16:
            return 32767 * abs(self.scale)
        if self.sample_format == SampleFormat.INT32:
            return 2147483647 * abs(self.scale)
        return None


def encode_raw(frame: Frame) -> bytes:
    """Header, payload and CRC of ``frame`` (before COBS): what an MQTT message carries."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError("oversize", f"payload {len(frame.payload)} bytes, at most {MAX_PAYLOAD}")
    head = HEADER.pack(
        frame.version, frame.type, frame.sensor_id, frame.n_channels, frame.sample_format, frame.n_samples,
        frame.scale, frame.sample_rate, frame.seq & 0xFFFFFFFF, frame.timestamp_us,
    )
    body = head + frame.payload
    return body + CRC.pack(zlib.crc32(body))


def encode_wire(frame: Frame) -> bytes:
    """``frame`` as it travels on the serial line: COBS-encoded, then the 0x00 delimiter."""
    return cobs.encode(encode_raw(frame)) + b"\x00"


def samples_frame(
    samples: np.ndarray, *, sensor_id: int, seq: int, timestamp_us: int, sample_rate: float,
    sample_format: SampleFormat = SampleFormat.INT16, scale: float = 1.0, msg_type: MsgType = MsgType.SAMPLES,
) -> Frame:
    """A samples frame from an (n_samples, n_channels) array of raw sensor values."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    payload = np.ascontiguousarray(x, dtype=DTYPES[sample_format]).tobytes()
    return Frame(
        type=msg_type, sensor_id=sensor_id, n_channels=x.shape[1], sample_format=sample_format,
        n_samples=x.shape[0], scale=scale, sample_rate=sample_rate, seq=seq, timestamp_us=timestamp_us,
        payload=payload,
    )


def decode_raw(raw: bytes) -> Frame:
    """Check and parse one frame (header | payload | crc); raise FrameError with the reason.

    The checks run in this order and the first failing one names the reason: short,
    oversize, crc, version, type, then for sample frames format (sample format, then scale
    finite and non-zero), length, rate, and for the
    other types length (FIXED_PAYLOAD) and, for SET_RATE, rate. The C decoder
    (firmware_bridge/c/edge_frame.h) checks in the same order.
    """
    n = len(raw)
    if n < HEADER_SIZE + CRC.size:
        raise FrameError("short", f"{n} bytes, a frame has at least {HEADER_SIZE + CRC.size}")
    if n > MAX_RAW:
        raise FrameError("oversize", f"{n} bytes, at most {MAX_RAW}")
    view = memoryview(raw)
    (crc,) = CRC.unpack_from(raw, n - 4)
    if zlib.crc32(view[:-4]) != crc:
        raise FrameError("crc", "CRC-32 mismatch")
    version, mtype, sensor, nch, fmt, nsamp, scale, fs, seq, ts = HEADER.unpack_from(raw)
    if version != VERSION:
        raise FrameError("version", f"protocol version {version}, this gateway speaks {VERSION}")
    if mtype not in _KNOWN_TYPES:
        raise FrameError("type", f"unknown message type 0x{mtype:02x}")
    n_payload = n - HEADER_SIZE - CRC.size
    if mtype in SAMPLE_TYPES:
        dtype = DTYPES.get(fmt)  # type: ignore[call-overload]
        if dtype is None:
            raise FrameError("format", f"unknown sample format {fmt}")
        if not (math.isfinite(scale) and scale != 0.0):
            raise FrameError("format", f"scale {scale} (must be a finite, non-zero number)")
        if nch == 0 or nsamp == 0 or n_payload != nch * nsamp * dtype.itemsize:
            raise FrameError("length", f"payload {n_payload} bytes does not hold {nsamp} x {nch} samples of {dtype}")
        if not (fs > 0 and fs < MAX_RATE):  # also false for NaN
            raise FrameError("rate", f"sample rate {fs}")
    else:
        if n_payload != FIXED_PAYLOAD[mtype]:
            raise FrameError("length", f"{MsgType(mtype).name} payload {n_payload} bytes, must be {FIXED_PAYLOAD[mtype]}")
        if mtype == MsgType.SET_RATE and not (fs > 0 and fs < MAX_RATE):
            raise FrameError("rate", f"SET_RATE to {fs} Hz")
    return Frame(mtype, sensor, nch, fmt, nsamp, scale, fs, seq, ts, bytes(view[HEADER_SIZE:-4]), version)


def decode_wire_chunk(chunk: bytes) -> Frame:
    """One COBS-encoded frame without its delimiter."""
    try:
        raw = cobs.decode(chunk)
    except cobs.DecodeError as exc:
        raise FrameError("cobs", str(exc)) from None
    return decode_raw(raw)
