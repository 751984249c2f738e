"""Decoded frames of one source -> SampleBlocks, with the continuity checks of each stream.

A stream is one sensor's one message type (``sensor_id``, type). Its frame ``seq`` must go
up by one per frame (modulo 2^32): a jump is a gap (counted, with the number of frames
missing); a repeat or a small step back is a duplicate or a reordered frame (counted and
dropped); a larger step back is the MCU restarting its counter (a reboot): counted as a
restart, and the stream starts afresh there with a gap before it. The
sample sequence handed to the windower advances by the samples actually received, plus the
estimated samples missing across a gap, so the windower never joins samples across it.
Timestamps are checked against the previous frame's end (a jump of more than a few sample
periods without a seq gap is counted: a clock problem on the MCU). The shaft speed attached
to the vibration blocks comes from SPEED frames (rpm measured by the MCU) or, with
``tacho_channel`` set, from that channel of the sample frames: a tachometer's pulse train
(tacho.py), which is then not passed on as vibration. Temperature frames are kept as the
latest reading per sensor.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edge_agent import native
from edge_agent.protocol.frame import Frame, MsgType
from edge_agent.tacho import TachoSpeed
from edge_agent.window import SampleBlock

SEQ_MOD = 1 << 32
TIMESTAMP_TOLERANCE_PERIODS = 4.0  # sample periods of timestamp error tolerated between frames
RATE_TOLERANCE = 0.01  # relative difference between a frame's rate and the expected rate
REORDER_WINDOW = 16  # a step back of at most this many frames is a duplicate/reordering, more is a restart
_TYPE_NAMES = {int(t): t.name.lower() for t in MsgType}
# one pass from the payload to a row per channel (ext/frames.pyx); the wire is little-endian
_channels = native.load("frames").channels if sys.byteorder == "little" else None


def frame_channels(frame: Frame) -> np.ndarray:
    """The frame's samples in physical units, one float32 row per channel (n_channels,
    n_samples); each row is contiguous."""
    if _channels is None:
        return np.ascontiguousarray(frame.samples().T)
    return _channels(frame.payload, frame.sample_format, frame.n_channels, frame.n_samples, frame.scale)


@dataclass(slots=True)
class _Stream:
    last_seq: int
    next_sample: int  # sample sequence number of the next frame's first sample
    next_ts_us: float  # expected timestamp of the next frame's first sample
    fs: float


class FrameAssembler:
    def __init__(
        self, source_name: str, expected_fs: float | None = None, tacho_channel: int | None = None,
        pulses_per_rev: int = 1,
    ) -> None:
        self.source_name = source_name
        self.expected_fs = expected_fs or None
        self.tacho_channel = tacho_channel if tacho_channel is not None and tacho_channel >= 0 else None
        self.pulses_per_rev = pulses_per_rev
        self._tachos: dict[int, TachoSpeed] = {}  # per sensor
        self._streams: dict[tuple[int, int], _Stream] = {}
        self.rpm: float | None = None
        self.temperature_c: dict[int, float] = {}
        self.frames: Counter[str] = Counter()  # accepted frames by type name
        self.seq_gaps = 0
        self.frames_missing = 0
        self.duplicates = 0
        self.restarts = 0
        self.timestamp_jumps = 0
        self.rate_mismatches = 0
        self.replies: list[Frame] = []  # PONG / ACK frames, for whoever sent the command
        self._names: dict[tuple[int, int], str] = {}

    def channel_name(self, sensor_id: int, channel: int) -> str:
        name = self._names.get((sensor_id, channel))
        if name is None:
            name = self._names[(sensor_id, channel)] = f"{self.source_name}.s{sensor_id}.ch{channel}"
        return name

    def blocks(self, frame: Frame) -> list[SampleBlock]:
        """The vibration blocks in ``frame`` (none for speed, temperature and replies)."""
        mtype = frame.type
        if mtype in (MsgType.PONG, MsgType.ACK):
            self.frames[_TYPE_NAMES[mtype]] += 1
            self.replies.append(frame)
            del self.replies[:-16]
            return []
        if mtype not in (MsgType.SAMPLES, MsgType.SPEED, MsgType.TEMPERATURE):
            self.frames["ignored"] += 1  # a command echoed back, or a gateway->MCU type
            return []
        stream = self._continuity(frame)
        if stream is None:
            return []
        self.frames[_TYPE_NAMES[mtype]] += 1
        x = frame_channels(frame)
        if mtype == MsgType.SPEED:
            self.rpm = float(np.mean(x[0]))
            return []
        if mtype == MsgType.TEMPERATURE:
            self.temperature_c[frame.sensor_id] = float(x[0, -1])
            return []
        first = stream.next_sample - frame.n_samples
        channels = range(frame.n_channels)
        if self.tacho_channel is not None and self.tacho_channel < frame.n_channels:
            tacho = self._tachos.get(frame.sensor_id)
            if tacho is None:
                tacho = self._tachos[frame.sensor_id] = TachoSpeed(self.pulses_per_rev)
            rpm = tacho.feed(x[self.tacho_channel], frame.sample_rate)
            if rpm is not None:
                self.rpm = rpm
            channels = [c for c in channels if c != self.tacho_channel]
        return [
            SampleBlock(
                channel=self.channel_name(frame.sensor_id, c), samples=x[c],
                fs=frame.sample_rate, t0_us=frame.timestamp_us, seq=first, rpm=self.rpm, full_scale=frame.full_scale,
            )
            for c in channels
        ]

    def _continuity(self, frame: Frame) -> _Stream | None:
        """Update the frame's stream; None when the frame must be dropped (duplicate)."""
        key = (frame.sensor_id, frame.type)
        fs = float(frame.sample_rate)
        st = self._streams.get(key)
        period_us = 1e6 / fs
        step = 1 if st is None else (frame.seq - st.last_seq) % SEQ_MOD
        if st is not None and (step == 0 or SEQ_MOD - step <= REORDER_WINDOW):
            self.duplicates += 1
            return None
        if (
            frame.type == MsgType.SAMPLES and self.expected_fs
            and abs(fs - self.expected_fs) > RATE_TOLERANCE * self.expected_fs
        ):
            self.rate_mismatches += 1
        if st is None or step > SEQ_MOD // 2:
            if st is not None:
                self.restarts += 1
                gap = st.next_sample + 1  # one sample of daylight: the windower restarts here
            else:
                gap = 0
            st = self._streams[key] = _Stream(frame.seq, gap + frame.n_samples, frame.timestamp_us + frame.n_samples * period_us, fs)
            return st
        if step > 1:
            self.seq_gaps += 1
            self.frames_missing += step - 1
            st.next_sample += (step - 1) * frame.n_samples
        elif abs(frame.timestamp_us - st.next_ts_us) > TIMESTAMP_TOLERANCE_PERIODS * period_us:
            self.timestamp_jumps += 1
        st.last_seq = frame.seq
        st.next_sample += frame.n_samples
        st.next_ts_us = frame.timestamp_us + frame.n_samples * period_us
        st.fs = fs
        return st

    def counters(self) -> dict[str, int]:
        return {
            # dict() copies atomically under the GIL: the source thread may be adding keys
            **{f"frames_{k}": v for k, v in dict(self.frames).items()},
            "seq_gaps": self.seq_gaps,
            "frames_missing": self.frames_missing,
            "duplicates": self.duplicates,
            "restarts": self.restarts,
            "timestamp_jumps": self.timestamp_jumps,
            "rate_mismatches": self.rate_mismatches,
        }
