"""The serial source: a sensor MCU on a serial port (USB CDC, UART), read with pyserial.

Bytes -> StreamDecoder (frames, resync at every 0x00) -> FrameAssembler (seq gaps,
duplicates, timestamps) -> SampleBlocks, all on this source's thread.

Reading waits (``poll``) for at most ``read_timeout_s`` and then takes everything waiting
in one ``os.read``, so an idle port costs nothing and a busy one is read in large pieces.
pyserial opens, configures and writes the port; its ``read(1)`` + ``in_waiting`` + ``read(n)``
took two selects, two reads and an ioctl through several Python layers per wake-up (about a
hundred a second at 4 x 25.6 kHz), a cost measured in benches/RESULTS.md ("CPU"). Given a
``pace`` (the agent's, pacing.py), the bytes read are decoded in batches, when the next
window is nearly due, rather than every ~10 ms; each block keeps the time its bytes were
read. On every open the source sends TIME_SYNC (the gateway's clock) and START, and again
whenever no sample frame has come for 2 s while it wants data (a START lost on the line, an
MCU that rebooted and waits for one).

A sensor can vanish (USB unplugged, MCU reset): a read or write fails (SerialException,
OSError), the port reads as end of file with a hang-up (POLLHUP), or the port's path
disappears or starts naming another device. The source then closes the port, logs once,
counts a disconnect and tries to open the path again after 0.1 s, doubling to at most 1 s, so
it is back within about a second of the port's return. A port that does not exist at start
is handled the same way: the agent runs and keeps trying. The decoder's unfinished frame is
discarded on reconnect; the frames lost meanwhile show up as a seq gap in the assembler
(``seq_gaps``, ``frames_missing``). Bad input never raises out of :meth:`SerialSource.run`:
it is counted.

A read that finds no bytes without a hang-up is a spurious wake-up (Linux ptys do it now and
then), not a disconnect: it is counted (``empty_reads``) and the source reads on, since
reopening would flush the frames waiting in the port; only EMPTY_READS_MAX of them in a row
count as gone.

Other threads may send commands with :meth:`SerialSource.command` (PING, SET_RATE, ...): the
frame is written by the source thread and the MCU's PONG or ACK, matched by the command's
seq (firmware_bridge/PROTOCOL.md section 2), is handed back; without an answer the command
is sent again (3 tries in all).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import random
import select
import struct
import threading
import time
from collections import deque
from typing import Any, Callable

import serial

from edge_agent.pacing import Pace
from edge_agent.protocol.frame import Frame, MsgType, encode_wire
from edge_agent.protocol.stream import StreamDecoder
from edge_agent.sources.assembler import FrameAssembler
from edge_agent.sources.base import Emit

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 1.0
STILL_WAITING_LOG_S = 60.0  # while the port stays away, say so again this often
WRITE_TIMEOUT_S = 1.0
READ_MAX = 1 << 16
GATEWAY_SENSOR_ID = 0  # commands go to whichever MCU is on the line
RESTART_AFTER_S = 2.0  # no sample frame for this long while streaming is wanted: TIME_SYNC + START again
COMMAND_TRIES = 3
SAMPLE_TYPES = (MsgType.SAMPLES, MsgType.SPEED, MsgType.TEMPERATURE)
HANGUP_EVENTS = select.POLLHUP | select.POLLERR | select.POLLNVAL
EMPTY_READS_MAX = 3  # readable, no bytes and no hang-up this many times in a row: gone anyway


class _PortGone(Exception):
    """The open port stopped working or its path no longer names it."""


class SerialSource:
    """``[[source]] type = "serial"``: ``port``, ``baud``, ``read_timeout_s``.

    ``on_frame``, when given, is called on the source thread with every good frame before it
    is assembled (captures, tests).
    """

    def __init__(self, cfg: Any, *, on_frame: Callable[[Frame], None] | None = None) -> None:
        self.name: str = cfg.name
        self.port: str = cfg.port
        self.baud: int = cfg.baud
        self.read_timeout_s: float = cfg.read_timeout_s
        self.on_frame = on_frame
        self.decoder = StreamDecoder()
        self.assembler = FrameAssembler(cfg.name, tacho_channel=cfg.tacho_channel, pulses_per_rev=cfg.pulses_per_rev)
        self.opens = 0
        self.open_failures = 0
        self.disconnects = 0
        self.last_reconnect_ms = 0  # from losing the port to having it open again
        self.offline_ms = 0  # total time without an open port, since the first open
        self.frame_errors = 0  # frames the decoder accepted but the assembler could not use
        self.commands_sent = 0
        self.start_retries = 0  # TIME_SYNC + START sent again because no data came
        self.empty_reads = 0  # readable but no bytes, without a hang-up: a spurious wake-up, read on
        self._want_streaming = True  # False after a STOP sent through send()/command()
        self._last_data = 0.0  # monotonic time of the last sample frame, or of the last START
        self._command_seq = random.getrandbits(32)  # one counter for all our commands
        self._seq_lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Frame] = queue.SimpleQueue()
        self._replies: deque[tuple[int, Frame]] = deque(maxlen=64)
        self._reply_count = 0
        self._replied = threading.Condition()
        self._identity: tuple[int, int] = (0, 0)  # (st_rdev, st_ino) of the open device
        self.pace: Pace | None = None  # set by the agent: decode in batches (pacing.py)
        self._awaiting = 0  # command() calls waiting for their answer

    # -- the source interface -------------------------------------------------------------------
    def run(self, emit: Emit, stop: threading.Event) -> None:
        backoff = BACKOFF_MIN_S
        lost_at: float | None = None  # when the port went away (or the first failed open)
        logged_missing_at: float | None = None
        while not stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.open_failures += 1
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                if logged_missing_at is None or now - logged_missing_at >= STILL_WAITING_LOG_S:
                    waited = f" (away {now - lost_at:.0f} s)" if logged_missing_at is not None else ""
                    log.warning(
                        "source %s: cannot open %s: %s%s; retrying every %g s or sooner until it is back",
                        self.name, self.port, _reason(exc), waited, BACKOFF_MAX_S,
                    )
                    logged_missing_at = now
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            now = time.monotonic()
            if lost_at is not None and self.opens:
                self.last_reconnect_ms = round((now - lost_at) * 1000)
                self.offline_ms += self.last_reconnect_ms
                log.info("source %s: %s open again after %.1f s", self.name, self.port, now - lost_at)
            else:
                log.info("source %s: %s open at %d baud", self.name, self.port, self.baud)
            self.opens += 1
            backoff, lost_at, logged_missing_at = BACKOFF_MIN_S, None, None
            try:
                self._session(port, emit, stop)
            except (_PortGone, serial.SerialException, OSError) as exc:
                self.disconnects += 1
                lost_at = logged_missing_at = time.monotonic()  # said once here, not again per retry
                log.warning("source %s: %s lost: %s; reconnecting every %g s or sooner",
                            self.name, self.port, _reason(exc), BACKOFF_MAX_S)
            finally:
                if stop.is_set():
                    self._write_quietly(port, Frame(type=MsgType.STOP, sensor_id=GATEWAY_SENSOR_ID, seq=self._next_seq()))
                _close_quietly(port)
                self.decoder.reset()  # the rest of a partial frame is never coming

    def counters(self) -> dict[str, int]:
        return {
            **self.decoder.counters(),  # both copy their dicts: safe while the source thread runs
            **self.assembler.counters(),
            "port_opens": self.opens,
            "port_open_failures": self.open_failures,
            "port_disconnects": self.disconnects,
            "last_reconnect_ms": self.last_reconnect_ms,
            "offline_ms": self.offline_ms,
            "frame_errors": self.frame_errors,
            "commands_sent": self.commands_sent,
            "start_retries": self.start_retries,
            "empty_reads": self.empty_reads,
        }

    # -- commands ---------------------------------------------------------------------------------
    def send(self, frame: Frame) -> Frame:
        """Queue a command for the MCU (thread-safe), numbered with our next command seq;
        written by the source thread when a port is open. Returns the frame as sent."""
        frame = dataclasses.replace(frame, seq=self._next_seq())
        self._outbox.put(frame)
        return frame

    def command(self, frame: Frame, timeout: float = 0.5, tries: int = COMMAND_TRIES) -> Frame | None:
        """Send a command and wait for its answer (the PONG or ACK with its seq), sending it
        again after each ``timeout`` seconds without one, ``tries`` times in all. Returns the
        answer, or None. A TIME_SYNC is sent again with the time of the retry."""
        with self._replied:
            seen = self._reply_count
            self._awaiting += 1
        try:
            return self._command(frame, seen, timeout, tries)
        finally:
            with self._replied:
                self._awaiting -= 1

    def _command(self, frame: Frame, seen: int, timeout: float, tries: int) -> Frame | None:
        sent = self.send(frame)
        want = MsgType.PONG if frame.type == MsgType.PING else MsgType.ACK

        def answer() -> Frame | None:
            for number, reply in self._replies:
                if number >= seen and reply.seq == sent.seq and reply.type == want:
                    return reply
            return None

        for attempt in range(tries):
            if attempt:
                if frame.type == MsgType.TIME_SYNC:
                    sent = dataclasses.replace(sent, timestamp_us=time.time_ns() // 1000)
                self._outbox.put(sent)
            with self._replied:
                if self._replied.wait_for(lambda: answer() is not None, timeout=timeout):
                    return answer()
        return None

    def ping(self, token: int, timeout: float = 0.5) -> Frame | None:
        """PING with ``token`` (u32); the PONG (carrying the token back) or None."""
        reply = self.command(Frame(type=MsgType.PING, sensor_id=GATEWAY_SENSOR_ID, payload=struct.pack("<I", token)), timeout)
        return reply if reply is not None and reply.payload == struct.pack("<I", token) else None

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._command_seq = (self._command_seq + 1) & 0xFFFF_FFFF
            return self._command_seq

    def _start_streaming(self, port: serial.Serial) -> None:
        """TIME_SYNC with the gateway's clock, then START."""
        self._write(port, Frame(type=MsgType.TIME_SYNC, sensor_id=GATEWAY_SENSOR_ID, seq=self._next_seq(), timestamp_us=time.time_ns() // 1000))
        self._write(port, Frame(type=MsgType.START, sensor_id=GATEWAY_SENSOR_ID, seq=self._next_seq()))
        self._last_data = time.monotonic()

    # -- one open port ----------------------------------------------------------------------------
    def _open(self) -> serial.Serial:
        port = serial.Serial(
            self.port, self.baud, timeout=self.read_timeout_s, write_timeout=WRITE_TIMEOUT_S, exclusive=True,
        )
        try:
            self._identity = _device_identity(port)
            if self._want_streaming:
                self._start_streaming(port)
        except BaseException:
            _close_quietly(port)
            raise
        return port

    def _session(self, port: serial.Serial, emit: Emit, stop: threading.Event) -> None:
        """Read and decode until ``stop`` or the port fails (an exception). With a ``pace``
        the bytes read are held, with their read times, until the next window is nearly due
        (pacing.py); whatever is held is decoded before this returns, however it ends."""
        held: list[tuple[float, bytes]] = []
        poller = select.poll()
        poller.register(port.fileno(), select.POLLIN)
        empty_in_a_row = 0
        try:
            while not stop.is_set():
                while True:
                    try:
                        self._write(port, self._outbox.get_nowait())
                    except queue.Empty:
                        break
                if self._want_streaming and time.monotonic() - self._last_data > RESTART_AFTER_S:
                    self.start_retries += 1
                    if self.start_retries == 1 or self.start_retries % 100 == 0:
                        log.warning("source %s: no data from %s for %g s; sending START again (%d times so far)",
                                    self.name, self.port, RESTART_AFTER_S, self.start_retries)
                    self._start_streaming(port)
                timeout = self.read_timeout_s
                if held:
                    timeout = min(timeout, max(0.0, self._hold_until(held[0][0]) - time.time()))
                data = _read_ready(port, poller, timeout)
                if data is None:
                    self.empty_reads += 1
                    empty_in_a_row += 1
                    if empty_in_a_row >= EMPTY_READS_MAX:
                        raise _PortGone(f"{self.port} reports data but returns none, {empty_in_a_row} times "
                                        "in a row (device disconnected?)")
                    log.debug("source %s: %s readable but returned no bytes; reading on", self.name, self.port)
                    self._check_path()
                    continue
                empty_in_a_row = 0
                now = time.time()
                if data:
                    held.append((now, data))
                elif not held:
                    self._check_path()
                    continue
                if now >= self._hold_until(held[0][0]):
                    self._feed_held(held, emit)
        finally:
            self._feed_held(held, emit)

    def _hold_until(self, held_since: float) -> float:
        """Until when bytes read at ``held_since`` may wait undecoded: never while a command
        is queued or waits for its answer."""
        if self.pace is None or self._awaiting or not self._outbox.empty():
            return held_since
        return self.pace.hold_until(held_since)

    def _feed_held(self, held: list[tuple[float, bytes]], emit: Emit) -> None:
        while held:
            arrived, data = held.pop(0)
            self._feed(data, emit, arrived)

    def _feed(self, data: bytes, emit: Emit, arrived: float | None = None) -> None:
        try:
            frames = self.decoder.feed(data)
        except Exception as exc:  # the decoder is meant never to raise; if it does, start afresh
            self.frame_errors += 1
            log.warning("source %s: decoder failed on %d bytes, resynchronising: %r", self.name, len(data), exc)
            self.decoder.reset()
            return
        for frame in frames:
            try:
                if self.on_frame is not None:
                    self.on_frame(frame)
                blocks = self.assembler.blocks(frame)
            except Exception as exc:  # a frame the decoder passed but nothing downstream can use
                self.frame_errors += 1
                if self.frame_errors == 1 or self.frame_errors % 1000 == 0:
                    log.warning("source %s: unusable frame (%d so far): %r", self.name, self.frame_errors, exc)
                continue
            if frame.type in SAMPLE_TYPES:
                self._last_data = time.monotonic()
            elif frame.type in (MsgType.PONG, MsgType.ACK):
                with self._replied:
                    self._replies.append((self._reply_count, frame))
                    self._reply_count += 1
                    self._replied.notify_all()
            for block in blocks:
                emit(block, arrived)

    def _write(self, port: serial.Serial, frame: Frame) -> None:
        if frame.type in (MsgType.START, MsgType.STOP):
            self._want_streaming = frame.type == MsgType.START
        port.write(encode_wire(frame))
        self.commands_sent += 1

    def _write_quietly(self, port: serial.Serial, frame: Frame) -> None:
        try:
            self._write(port, frame)
        except Exception:  # the port may already be gone; stopping anyway
            pass

    def _check_path(self) -> None:
        """An idle port: make sure its path still names the device we have open."""
        try:
            now = _path_identity(self.port)
        except OSError as exc:
            raise _PortGone(f"{self.port} vanished ({exc.strerror})") from None
        if now != self._identity:
            raise _PortGone(f"{self.port} now names another device")


def _read_ready(port: serial.Serial, poller: select.poll, timeout: float) -> bytes | None:
    """What the port has, after waiting at most ``timeout`` s for a first byte; b"" when
    nothing came.

    A port that is readable but gives no bytes is gone (end of file: a USB device unplugged,
    the other end of a pty closed) when the kernel also reports a hang-up or an error
    (POLLHUP, POLLERR): :class:`_PortGone`. Without one it is a spurious wake-up: None. A
    Linux pty read with VMIN=0 (as pyserial sets it) now and then returns no bytes right
    after poll said it had some; taking that for a disconnect reopened the port, and opening
    flushes the input, so the frames waiting in it were lost (seen once in CI at 4 x 25.6
    kHz). The caller reads on, and gives up after EMPTY_READS_MAX such reads in a row.
    """
    fd = port.fileno()
    events = poller.poll(max(0, math.ceil(timeout * 1000)))
    if not events:
        return b""
    try:
        data = os.read(fd, READ_MAX)
    except (BlockingIOError, InterruptedError):
        return b""
    if data:
        return data
    if events[0][1] & HANGUP_EVENTS:
        raise _PortGone(f"{port.port} reports data but returns none (device disconnected?)")
    return None


def _device_identity(port: serial.Serial) -> tuple[int, int]:
    st = os.fstat(port.fileno())
    return st.st_rdev, st.st_ino


def _path_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_rdev, st.st_ino


def _close_quietly(port: serial.Serial) -> None:
    try:
        port.close()
    except Exception:
        pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
