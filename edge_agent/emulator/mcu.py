"""The sensor MCU, emulated behind a pty: what ``edge-agent emulate`` runs.

Why: the serial source, the decoder and the whole agent need a sensor that speaks the wire
protocol (edge_agent/protocol/frame.py) over a real serial device, misbehaves on demand and
can be checked afterwards. This one creates a raw pty (:class:`PtyPair`), symlinks ``--link``
to it, and from then on acts like the MCU on a USB-serial link.

What it sends (sensor_id 1), each stream with its own frame ``seq`` counter:

* ``samples``: SAMPLES frames, ``channels`` accelerometers interleaved, int16 with
  ``scale`` = range / 32768 (range +-16 g; +-1 g in the ``clipping`` scenario, where the
  vibration exceeds it), 256 samples per channel per frame (10 ms, 100 frames/s and
  ~2.1 kB per frame on the wire at 25.6 kHz x 4 channels). The signal is
  SignalGenerator's (emulator/signal.py), generated 4 frames at a time;
* ``speed``: SPEED frames, one float32 rpm per frame, 10 Hz, SignalGenerator's slowly
  varying shaft speed;
* ``temperature``: TEMPERATURE frames, one float32 degC per frame, 1 Hz: a slow warm-up,
  plus up to 15 degC more as a bearing fault's severity grows.

Acquisition and the clock. Acquisition starts at the first START after boot and then runs
in real time, paced by the select() timeout (no busy loop). The MCU's clock is a
microsecond timer since boot that acquisition zeroes when it starts (unless a TIME_SYNC
came first); TIME_SYNC sets it to the gateway's time. A frame's timestamp is the clock at its
first sample, counted on the sample clock, so the same seed gives the same bytes whenever
the START comes. A frame ``seq`` counts acquired frames, so a frame that is not transmitted
(link down, streaming stopped, transmit buffer full) still uses its seq: the gateway sees
lost time as a seq gap.

Commands from the gateway (any sensor_id: the link is point to point), as in
firmware_bridge/PROTOCOL.md section 4: each is answered, with the command's seq, by an ACK
(command type, status 0 done / 1 value not supported) except PING. A command with the type
and seq of the previous one is a retry: answered again, not acted on again.

* PING (u32 token) -> PONG with the same token;
* START / STOP: transmit frames, or not (acquisition goes on once started);
* SET_RATE (header ``sample_rate``): accelerometer rate from the next frame, 1 kHz to 200 kHz;
* TIME_SYNC (header ``timestamp_us``): the clock reads that now.

Transmission. Frames wait in a transmit buffer (at most 1 MiB, ~5 s at the default rate)
and are written to the pty as it accepts them, so a gateway that stalls for a moment loses
nothing; a frame that does not fit is dropped (``overflow``). If nothing can be written for
5 s (no gateway reading), the buffer is emptied and transmission stops until the next
START, as a USB CDC device does when its host goes away.

Scenarios: SignalGenerator's (``healthy``, ``inner_race``, ``outer_race``, ``ball``: severity
ramps from 5 s to 25 s; ``flatline``, ``clipping``: from 5 s), and ``disconnect``: 5 s after
acquisition starts, and every 20 s after that, the port vanishes (pty closed, link
removed) for 5 s, then comes back as a new pty at the same link path; acquisition goes on
meanwhile, and transmission resumes at the gateway's START on the new port.
``--fault-at SECONDS`` moves that onset (5 s) to SECONDS of acquisition time: a healthy
signal until then, the scenario's fault after (severity ramps over the next 20 s as above).
The moment of the onset is printed and kept in ``--stats`` (``fault_onset``), so a test can
measure from the onset itself.

``--corrupt RATE`` damages that fraction of the transmitted stream frames on the wire
(emulator/corrupt.py: bit flips, dropped or inserted bytes, truncation), inside the frame
and never its 0x00 delimiter. The same seed gives the same bytes, given the same pacing
and commands. ``--stats FILE`` gets a JSON account at exit (see :meth:`Mcu.stats`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import select
import struct
import sys
import termios
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from edge_agent.emulator.corrupt import corrupt, corruption_for
from edge_agent.emulator.signal import FAULTS, SignalGenerator, SignalSpec
from edge_agent.protocol.frame import Frame, MsgType, SampleFormat, encode_wire, samples_frame
from edge_agent.protocol.stream import StreamDecoder
from edge_agent.ptypair import PtyPair

SENSOR_ID = 1
SAMPLES_PER_FRAME = 256
DEFAULT_FS = 25600.0
DEFAULT_CHANNELS = 4
RANGE_G = 16.0  # accelerometer range, +-g
SPEED_FS = 10.0
TEMPERATURE_FS = 1.0
CHUNK_FRAMES = 4  # accelerometer frames generated per SignalGenerator call (fixed: determinism)
RATE_MIN, RATE_MAX = 1000.0, 200000.0
MAX_BACKLOG = 1 << 20  # transmit buffer, bytes
STALL_S = 5.0  # nothing written for this long: the gateway is gone, stop transmitting
OUTAGE_S, OUTAGE_EVERY_S = 5.0, 20.0  # disconnect scenario
PROGRESS_EVERY_S = 10.0
MAX_WAIT_S = 0.2  # longest select() wait, so a stop request is seen promptly
ACK_OK, ACK_BAD_ARGUMENT = 0, 1


@dataclass(frozen=True, slots=True)
class EmulateOptions:
    link: str
    scenario: str
    seconds: float | None = None  # None: until stopped
    fs: float = DEFAULT_FS
    channels: int = DEFAULT_CHANNELS
    corrupt: float = 0.0
    seed: int = 0
    stats: str | None = None
    fault_at: float | None = None  # acquisition time of the fault's onset, s; None: the scenario's (5 s)


@dataclass(slots=True)
class _Stream:
    """One stream's frame clock: frames of ``n`` samples at ``fs``, in rate segments."""

    name: str
    mtype: MsgType
    fs: float
    n: int
    seq: int = 0
    seg_t0: float = 0.0  # acquisition time at which the current rate started, s
    seg_k: int = 0  # frames since then
    generated: int = 0
    sent: int = 0
    not_sent: int = 0  # link down or streaming stopped
    overflow: int = 0  # transmit buffer full
    ranges: list[list[int]] = field(default_factory=list)  # transmitted seqs, [first, last]

    @property
    def start_s(self) -> float:
        """Acquisition time of the next frame's first sample."""
        return self.seg_t0 + self.seg_k * self.n / self.fs

    @property
    def due_s(self) -> float:
        """Acquisition time at which the next frame is complete."""
        return self.seg_t0 + (self.seg_k + 1) * self.n / self.fs

    def advance(self) -> None:
        self.seq += 1
        self.seg_k += 1
        self.generated += 1

    def set_rate(self, fs: float) -> None:
        self.seg_t0, self.seg_k, self.fs = self.start_s, 0, fs

    def record_sent(self, seq: int) -> None:
        self.sent += 1
        if self.ranges and self.ranges[-1][1] == seq - 1:
            self.ranges[-1][1] = seq
        else:
            self.ranges.append([seq, seq])


class _ShiftedGenerator(SignalGenerator):
    """A SignalGenerator whose own time 0 is acquisition time ``t0`` (after SET_RATE)."""

    def __init__(self, spec: SignalSpec, channel: int, t0: float) -> None:
        self.t0 = t0
        super().__init__(replace(spec, onset_s=spec.onset_s - t0), channel)

    def rpm_at(self, t):  # type: ignore[no-untyped-def]
        return super().rpm_at(t + self.t0)


class _Accelerometers:
    """The vibration channels: SignalGenerator output quantised to int16."""

    def __init__(self, spec: SignalSpec, channels: int, range_g: float) -> None:
        self.spec = spec
        self.channels = channels
        self.scale = range_g / 32768.0
        self._segment = 0
        self._generators: list[SignalGenerator] = [SignalGenerator(spec, c) for c in range(channels)]
        self._buffer = np.empty((0, channels), np.float32)

    def set_rate(self, fs: float, t0: float) -> None:
        """New generators at ``fs`` that carry on from acquisition time ``t0``."""
        self._segment += 1
        spec = replace(self.spec, fs=fs, seed=self.spec.seed * 1_000_003 + self._segment)
        self._generators = [_ShiftedGenerator(spec, c, t0) for c in range(self.channels)]
        self._buffer = np.empty((0, self.channels), np.float32)

    def next_frame(self, n: int) -> np.ndarray:
        """The next ``n`` samples of every channel, raw int16, shape (n, channels)."""
        if len(self._buffer) < n:
            fresh = np.column_stack([g.next_block(n * CHUNK_FRAMES)[0] for g in self._generators])
            self._buffer = np.concatenate([self._buffer, fresh]) if len(self._buffer) else fresh
        x, self._buffer = self._buffer[:n], self._buffer[n:]
        return np.clip(np.rint(x / self.scale), -32768, 32767).astype("<i2")


class Mcu:
    """The emulated sensor MCU on a pty. :meth:`run` until ``should_stop()`` or ``seconds``."""

    def __init__(self, opts: EmulateOptions, err: TextIO | None = None) -> None:
        self.opts = opts
        self.err = err or sys.stderr
        onset = {} if opts.fault_at is None else {"onset_s": float(opts.fault_at)}
        self.spec = SignalSpec(fs=opts.fs, scenario=opts.scenario, seed=opts.seed, **onset)
        range_g = self.spec.full_scale_g if opts.scenario == "clipping" else RANGE_G
        self.accel = _Accelerometers(self.spec, opts.channels, range_g)
        self.machine = SignalGenerator(self.spec)  # shaft speed and fault severity over time
        self._temperature_rng = np.random.default_rng([opts.seed, 1 << 16])
        self.streams = [
            _Stream("samples", MsgType.SAMPLES, opts.fs, SAMPLES_PER_FRAME),
            _Stream("speed", MsgType.SPEED, SPEED_FS, 1),
            _Stream("temperature", MsgType.TEMPERATURE, TEMPERATURE_FS, 1),
        ]
        self.pair: PtyPair | None = None
        self._probe_fd: int | None = None  # our own slave descriptor, to see unread bytes
        self._commands = StreamDecoder()
        # transmit buffer: bytes not yet written, and per queued frame its end position
        self._out = bytearray()
        self._out_base = 0  # bytes written to the pty so far (position of _out[0])
        self._pending: deque[tuple[int, int, _Stream | None, int, str]] = deque()  # (start, end, stream, seq, kind)
        self._last_write_progress = 0.0
        self.streaming = False
        self._t_acq0: float | None = None  # monotonic time acquisition started
        self._offset_us = 0.0
        self._t_boot = time.monotonic()
        self._sync: tuple[int, float] | None = None  # TIME_SYNC before acquisition: (gateway us, monotonic)
        self._last_command: tuple[int, int] | None = None  # (type, seq) of the last command answered
        self._last_reply = b""
        self._next_outage = self.spec.onset_s if opts.scenario == "disconnect" else math.inf
        self._outage_end = math.inf
        self.corrupted: list[dict[str, object]] = []
        self.cut: list[dict[str, object]] = []  # frames cut mid-write by a disconnect
        self.disconnects: list[dict[str, float | None]] = []
        self.commands: dict[str, int] = {}
        self.rate_changes: list[dict[str, float]] = []
        self.stalls = 0
        self._started = 0.0
        # the fault's onset (scenarios other than healthy), recorded when the first samples
        # frame that carries it is made: see :meth:`_note_onset`
        self.fault_onset: dict[str, float | int | str] | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def open_link(self) -> None:
        """Create the pty and the link (the port appears). Raises OSError on a bad link path."""
        pair = PtyPair()
        try:
            pair.link(self.opts.link)
            self._probe_fd = os.open(pair.slave_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except BaseException:
            pair.close()
            raise
        self.pair = pair
        self._commands = StreamDecoder()
        self._last_command = None  # a new host connection: its own command counter
        self.streaming = False  # and wait for its START

    def close_link(self) -> None:
        """Remove the link and hang up the pty (the port vanishes); untransmitted bytes are lost."""
        if self._probe_fd is not None:
            os.close(self._probe_fd)
            self._probe_fd = None
        if self.pair is not None:
            self.pair.close()
            self.pair = None
        if self._pending and self._pending[0][0] < self._out_base:  # partly written: cut short
            _, _, stream, seq, kind = self._pending[0]
            if stream is not None:
                self.cut.append({"stream": stream.name, "seq": seq, "kind": kind or None})
        for _, _, stream, _, _ in self._pending:
            if stream is not None:
                stream.not_sent += 1
        self._out_base += len(self._out)
        self._out.clear()
        self._pending.clear()
        self.streaming = False

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Emulate until ``should_stop()`` or ``opts.seconds``; returns :meth:`stats`.

        Opens the link first unless :meth:`open_link` was called (it raises OSError).
        """
        if self.pair is None:
            self.open_link()
        self._started = time.monotonic()
        end = self._started + self.opts.seconds if self.opts.seconds else math.inf
        self._say(
            f"{self.opts.link} -> {self.pair.slave_path}: scenario {self.opts.scenario}, "  # type: ignore[union-attr]
            f"{self.opts.channels} ch x {self.opts.fs:g} Hz int16 (+-{self.accel.scale * 32768:g} g), "
            f"{SAMPLES_PER_FRAME} samples/frame, speed {SPEED_FS:g} Hz, temperature {TEMPERATURE_FS:g} Hz"
            f"{f', corrupting {self.opts.corrupt:g} of frames' if self.opts.corrupt else ''}; waiting for START"
        )
        next_progress = self._started + PROGRESS_EVERY_S
        try:
            while not should_stop():
                now = time.monotonic()
                if now >= end:
                    break
                self._acquire(now)
                self._disconnect_schedule(now)
                if now >= next_progress:
                    next_progress += PROGRESS_EVERY_S
                    self._say(self._progress(now, "link down" if self.pair is None else "streaming" if self.streaming else "not streaming"))
                self._wait_and_serve(min(self._next_event(now), end) - now)
            self._drain()
        finally:
            self.close_link()
            stats = self.stats()
            if self.opts.stats:
                _write_json(self.opts.stats, stats)
            self._say(self._progress(time.monotonic(), "stopped"))
        return stats

    # -- acquisition --------------------------------------------------------------------------
    def _acquire(self, now: float) -> None:
        """Make every frame complete by now, in order of completion."""
        if self._t_acq0 is None:
            return
        t = now - self._t_acq0
        while True:
            stream = min(self.streams, key=lambda s: s.due_s)  # ties: samples, speed, temperature
            if stream.due_s > t:
                return
            self._transmit(stream, self._frame(stream))
            stream.advance()

    def _frame(self, s: _Stream) -> Frame:
        t = s.start_s
        ts = self._timestamp_us(t)
        if s.mtype == MsgType.SAMPLES:
            self._note_onset(s, t)
            raw = self.accel.next_frame(s.n)
            return samples_frame(raw, sensor_id=SENSOR_ID, seq=s.seq, timestamp_us=ts, sample_rate=s.fs, scale=self.accel.scale)
        if s.mtype == MsgType.SPEED:
            value = float(self.machine.rpm_at(t))
        else:
            value = self._temperature_c(t)
        return samples_frame(
            np.array([[value]], np.float32), sensor_id=SENSOR_ID, seq=s.seq, timestamp_us=ts, sample_rate=s.fs,
            sample_format=SampleFormat.FLOAT32, msg_type=s.mtype,
        )

    def _note_onset(self, s: _Stream, t: float) -> None:
        """The first samples frame that reaches the onset (``--fault-at``, else the scenario's
        5 s): record when the onset happened, in acquisition time and wall clock, and say so.

        The frame is made when it is complete (real-time pacing), so the onset sample was
        acquired ``t_end - onset`` before now: ``unix`` is that moment (time.time() scale),
        ``frame_unix`` when the frame carrying it was made (<= one frame, 10 ms, later).
        """
        if self.fault_onset is not None or self.spec.scenario == "healthy" or self._t_acq0 is None:
            return
        onset = self.spec.onset_s
        t_end = t + s.n / s.fs
        if t_end <= onset:
            return
        now_unix, now_mono = time.time(), time.monotonic()
        at_unix = now_unix - (now_mono - (self._t_acq0 + max(onset, t)))
        self.fault_onset = {
            "scenario": self.spec.scenario, "at_s": onset, "unix": round(at_unix, 6),
            "frame_seq": s.seq, "frame_unix": round(now_unix, 6),
        }
        self._say(f"fault onset: {self.spec.scenario} from acquisition time {onset:g} s "
                  f"(unix {at_unix:.6f}, samples frame {s.seq})")

    def _temperature_c(self, t: float) -> float:
        """Bearing housing temperature: warm-up over ~10 min, +15 degC at full fault severity."""
        severity = self.machine.severity_at(t) if self.spec.scenario in FAULTS else 0.0
        return 22.0 + 12.0 * (1.0 - math.exp(-t / 600.0)) + 15.0 * severity + float(self._temperature_rng.normal(0, 0.02))

    # -- the clock ----------------------------------------------------------------------------
    def _timestamp_us(self, t_acq: float) -> int:
        """The MCU clock at acquisition time ``t_acq``, as the u64 a frame carries."""
        return max(0, round(self._offset_us + t_acq * 1e6)) & 0xFFFF_FFFF_FFFF_FFFF

    def _clock_us(self, now: float) -> int:
        if self._t_acq0 is not None:
            return self._timestamp_us(now - self._t_acq0)
        if self._sync is not None:
            return max(0, round(self._sync[0] + (now - self._sync[1]) * 1e6)) & 0xFFFF_FFFF_FFFF_FFFF
        return round((now - self._t_boot) * 1e6)  # the timer since boot, until acquisition zeroes it

    # -- transmission -------------------------------------------------------------------------
    def _transmit(self, s: _Stream, frame: Frame) -> None:
        if self.pair is None or not self.streaming:
            s.not_sent += 1
            return
        wire = encode_wire(frame)
        kind = ""
        rng = corruption_for(self.opts.seed, s.name, s.seq, self.opts.corrupt)
        if rng is not None:
            damaged, kind = corrupt(wire[:-1], rng)
            wire = damaged + b"\x00"
        if len(self._out) + len(wire) > MAX_BACKLOG:
            s.overflow += 1
            return
        self._queue(wire, s, s.seq, kind)

    def _queue(self, data: bytes, stream: _Stream | None = None, seq: int = 0, kind: str = "") -> None:
        if not self._out:
            self._last_write_progress = time.monotonic()
        start = self._out_base + len(self._out)
        self._out += data
        self._pending.append((start, start + len(data), stream, seq, kind))

    def _reply(self, command: Frame, mtype: MsgType, payload: bytes, now: float) -> None:
        """Answer ``command``: the reply carries the command's seq (PROTOCOL.md section 2)."""
        frame = Frame(type=mtype, sensor_id=SENSOR_ID, seq=command.seq, timestamp_us=self._clock_us(now), payload=payload)
        self._last_command, self._last_reply = (command.type, command.seq), encode_wire(frame)
        self._queue(self._last_reply)

    def _write(self) -> None:
        if self.pair is None or not self._out:
            return
        try:
            n = os.write(self.pair.master_fd, memoryview(self._out)[:65536])
        except BlockingIOError:
            n = 0
        if n:
            self._last_write_progress = time.monotonic()
            del self._out[:n]
            self._out_base += n
            while self._pending and self._pending[0][1] <= self._out_base:
                _, _, stream, seq, kind = self._pending.popleft()
                if stream is not None:
                    stream.record_sent(seq)
                    if kind:
                        self.corrupted.append({"stream": stream.name, "seq": seq, "kind": kind})
        elif time.monotonic() - self._last_write_progress > STALL_S:
            self._stall()

    def _stall(self) -> None:
        """Nobody has read the port for STALL_S: drop the buffer, stop until the next START."""
        self.stalls += 1
        for _, _, stream, _, _ in self._pending:
            if stream is not None:
                stream.overflow += 1
        self._out_base += len(self._out)
        self._out.clear()
        self._pending.clear()
        self.streaming = False
        self._say(f"nothing read from the port for {STALL_S:g} s: transmit buffer dropped, waiting for START")

    def _unread_bytes(self) -> int:
        """Bytes written to the pty that the gateway has not read yet."""
        if self._probe_fd is None:
            return 0
        try:
            return struct.unpack("i", fcntl.ioctl(self._probe_fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def _drain(self) -> None:
        """At exit: let a reading gateway have what is queued (up to 3 s), then hang up.

        The pty loses unread bytes when it is closed, so this also waits until the gateway
        has read everything written. A gateway that reads nothing for 0.5 s is not waited for.
        """
        if self.pair is None:
            return
        deadline = time.monotonic() + 3.0
        last_progress, last_level = time.monotonic(), None
        while time.monotonic() < deadline:
            level = (len(self._out), self._unread_bytes())
            if level == (0, 0):
                return
            if level != last_level:
                last_progress, last_level = time.monotonic(), level
            elif time.monotonic() - last_progress > 0.5:
                return
            self._wait_and_serve(0.01, accept_commands=False)

    # -- commands -----------------------------------------------------------------------------
    def _wait_and_serve(self, timeout: float, accept_commands: bool = True) -> None:
        """Wait up to ``timeout`` for a command or room in the pty; serve what is ready."""
        timeout = min(max(timeout, 0.0), MAX_WAIT_S)
        if self.pair is None:
            time.sleep(timeout)
            return
        fd = self.pair.master_fd
        readable, writable, _ = select.select([fd], [fd] if self._out else [], [], timeout)
        if readable:
            self._read_commands(accept_commands)
        if writable or self._out:
            self._write()

    def _read_commands(self, accept: bool) -> None:
        try:
            data = os.read(self.pair.master_fd, 65536)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        now = time.monotonic()
        for frame in self._commands.feed(data):
            if accept:
                self._command(frame, now)

    def _command(self, frame: Frame, now: float) -> None:
        try:
            name = MsgType(frame.type).name
        except ValueError:
            name = f"0x{frame.type:02x}"
        self.commands[name] = self.commands.get(name, 0) + 1
        if (frame.type, frame.seq) == self._last_command:  # a retry: answer again, do not act again
            self._queue(self._last_reply)
            return
        if frame.type == MsgType.PING:
            self._reply(frame, MsgType.PONG, frame.payload[:4].ljust(4, b"\0"), now)
            return
        if frame.type == MsgType.START:
            self._start(now)
            status = ACK_OK
        elif frame.type == MsgType.STOP:
            if self.streaming:
                self._say("STOP: transmission stopped")
            self.streaming = False
            status = ACK_OK
        elif frame.type == MsgType.SET_RATE:
            status = self._set_rate(float(frame.sample_rate), now)
        elif frame.type == MsgType.TIME_SYNC:
            self._time_sync(frame.timestamp_us, now)
            status = ACK_OK
        else:
            return  # not a command (an MCU -> gateway type echoed back): ignored
        self._reply(frame, MsgType.ACK, bytes([frame.type, status]), now)

    def _start(self, now: float) -> None:
        if self._t_acq0 is None:
            self._t_acq0 = now
            if self._sync is not None:
                gateway_us, at = self._sync
                self._offset_us = gateway_us + (now - at) * 1e6
        if not self.streaming:
            self._say(f"START: streaming (acquisition time {now - self._t_acq0:.1f} s)")
            # a delimiter first, so any partial frame left on the line ends before ours
            self._queue(b"\x00")
        self.streaming = True

    def _set_rate(self, fs: float, now: float) -> int:
        if not RATE_MIN <= fs <= RATE_MAX:  # also false for NaN
            self._say(f"SET_RATE {fs:g} Hz refused: the accelerometers run from {RATE_MIN:g} to {RATE_MAX:g} Hz")
            return ACK_BAD_ARGUMENT
        samples = self.streams[0]
        if self._t_acq0 is not None:
            self._acquire(now)  # frames complete at the old rate keep it
        samples.set_rate(fs)
        self.accel.set_rate(fs, samples.seg_t0)
        self.rate_changes.append({"at_s": round(samples.seg_t0, 6), "fs": fs, "from_seq": samples.seq})
        self._say(f"SET_RATE: accelerometers at {fs:g} Hz from frame {samples.seq}")
        return ACK_OK

    def _time_sync(self, gateway_us: int, now: float) -> None:
        if self._t_acq0 is None:
            self._sync = (gateway_us, now)
        else:
            self._offset_us = gateway_us - (now - self._t_acq0) * 1e6

    # -- the disconnect scenario --------------------------------------------------------------
    def _disconnect_schedule(self, now: float) -> None:
        if self._t_acq0 is None:
            return
        t = now - self._t_acq0
        if self.pair is not None and t >= self._next_outage:
            self.close_link()
            self._outage_end = self._next_outage + OUTAGE_S
            self.disconnects.append({"down_unix": time.time(), "down_s": self._next_outage, "up_unix": None, "up_s": None})
            self._next_outage += OUTAGE_EVERY_S
            self._say(f"disconnect: {self.opts.link} removed, back in {OUTAGE_S:g} s")
        elif self.pair is None and t >= self._outage_end:
            try:
                self.open_link()
            except OSError as exc:  # someone took the path meanwhile: try again in a second
                self._say(f"cannot bring {self.opts.link} back: {exc.strerror or exc}; trying again in 1 s")
                self._outage_end = t + 1.0
                return
            self.disconnects[-1].update(up_unix=time.time(), up_s=self._outage_end)
            self._outage_end = math.inf
            self._say(f"reconnect: {self.opts.link} -> {self.pair.slave_path}; waiting for START")  # type: ignore[union-attr]

    def _next_event(self, now: float) -> float:
        """Monotonic time of the next frame completion or link change."""
        if self._t_acq0 is None:
            return now + MAX_WAIT_S
        nxt = min(s.due_s for s in self.streams)
        if self.pair is not None:
            nxt = min(nxt, self._next_outage)
        else:
            nxt = min(nxt, self._outage_end)
        return self._t_acq0 + nxt

    # -- reporting ----------------------------------------------------------------------------
    def stats(self) -> dict:
        """What happened, for ``--stats``.

        ``frames_sent``: frames fully written to the pty, per stream. ``streams``: per stream
        its rate, frames generated, sent, not sent (link down, stopped), lost to a full
        transmit buffer (``overflow``) and the ``seq_ranges`` [first, last] transmitted.
        ``corrupted``: every transmitted frame damaged on purpose, {stream, seq, kind}
        (corrupt.KINDS). ``cut``: frames a disconnect cut short mid-write. ``disconnects``:
        each outage: when it happened (wall clock, ``*_unix``) and its scheduled acquisition
        times (``*_s``). ``commands``:
        commands received by type; ``rate_changes``: each SET_RATE that took effect.
        ``fault_at_s``: acquisition time of the onset (``--fault-at``, else 5 s; None for
        ``healthy``); ``fault_onset``: once a frame reached it, {scenario, at_s, unix (when
        the onset sample was acquired, time.time()), frame_seq, frame_unix}, else None.
        """
        return {
            "schema": 1,
            "scenario": self.opts.scenario,
            "seed": self.opts.seed,
            "channels": self.opts.channels,
            "samples_per_frame": SAMPLES_PER_FRAME,
            "scale": self.accel.scale,
            "corrupt_rate": self.opts.corrupt,
            "acquisition_s": round(time.monotonic() - self._t_acq0, 3) if self._t_acq0 is not None else 0.0,
            "frames_sent": {s.name: s.sent for s in self.streams},
            "streams": {
                s.name: {
                    "type": int(s.mtype), "fs": s.fs, "samples_per_frame": s.n, "generated": s.generated,
                    "sent": s.sent, "not_sent": s.not_sent, "overflow": s.overflow, "seq_ranges": s.ranges,
                }
                for s in self.streams
            },
            "corrupted": self.corrupted,
            "cut": self.cut,
            "disconnects": self.disconnects,
            "commands": self.commands,
            "rate_changes": self.rate_changes,
            "stalls": self.stalls,
            "fault_at_s": None if self.opts.scenario == "healthy" else self.spec.onset_s,
            "fault_onset": self.fault_onset,
        }

    def _progress(self, now: float, state: str) -> str:
        sent = ", ".join(f"{s.name} {s.sent}" for s in self.streams)
        lost = sum(s.overflow for s in self.streams)
        return (
            f"{now - self._started:.0f} s, {state}; frames sent: {sent}; corrupted {len(self.corrupted)}, "
            f"overflow {lost}, disconnects {len(self.disconnects)}"
        )

    def _say(self, message: str) -> None:
        print(f"edge-agent emulate: {message}", file=self.err, flush=True)


def _write_json(path: str, doc: dict) -> None:
    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp")
    temp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(temp, target)


def run_emulate(opts: EmulateOptions) -> int:
    """``edge-agent emulate``: run until --seconds, SIGTERM or Ctrl-C; exit 0 (2: a bad path)."""
    import signal

    if opts.stats:
        folder = Path(opts.stats).absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            print(f"edge-agent emulate: --stats {opts.stats}: {folder} is not a writable directory", file=sys.stderr)
            return 2
    stop = False

    def _handler(signum, frame):  # type: ignore[no-untyped-def]
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        mcu = Mcu(opts)
        try:
            mcu.open_link()
        except OSError as exc:
            print(f"edge-agent emulate: cannot create the link {opts.link}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        mcu.run(lambda: stop)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0
