"""The serial source against the MCU emulator, over real ptys that pyserial opens by path.

The emulator runs as the real ``edge-agent emulate`` subprocess; its ``--stats`` file says
what it sent, which the frames the source decoded are checked against exactly.
"""
from __future__ import annotations

import json
import random
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import edge_agent_cmd
from edge_agent import pacing
from edge_agent.config import default_config
from edge_agent.pacing import Pace
from edge_agent.protocol.frame import Frame, MsgType, decode_wire_chunk, encode_wire, samples_frame
from edge_agent.sources import make_source
from edge_agent.sources.serial_port import EMPTY_READS_MAX, SerialSource

STREAM_TYPES = {"samples": MsgType.SAMPLES, "speed": MsgType.SPEED, "temperature": MsgType.TEMPERATURE}
FRAME_S = 256 / 25600  # one accelerometer frame at the default rate


# ------------------------------------------------------------------------------------ helpers
class Emulator:
    """``edge-agent emulate`` in a subprocess, its link and --stats file in ``folder``."""

    def __init__(self, folder: Path, scenario: str, *args: str) -> None:
        self.link = folder / "ttyEMU"
        self.stats_path = folder / "emulator-stats.json"
        self.log_path = folder / "emulator.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*edge_agent_cmd(), "emulate", "--link", str(self.link), "--scenario", scenario, "--stats", str(self.stats_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_for_link(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.link.is_symlink():
            assert self.proc.poll() is None, f"emulator exited {self.proc.returncode}: {self.log()}"
            assert time.monotonic() < deadline, f"no link {self.link} after {timeout} s: {self.log()}"
            time.sleep(0.01)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def stats(self) -> dict:
        return json.loads(self.stats_path.read_text())

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()


def sent_seqs(stats: dict) -> dict[int, set[int]]:
    """Per message type, the seqs the emulator transmitted (corrupted ones included)."""
    return {
        int(STREAM_TYPES[name]): {seq for first, last in s["seq_ranges"] for seq in range(first, last + 1)}
        for name, s in stats["streams"].items()
    }


class SourceRun:
    """A SerialSource (from a real config entry) on its own thread, recording what it produces."""

    def __init__(self, port: Path | str, read_timeout_s: float = 0.05, pace: Pace | None = None) -> None:
        cfg = default_config(source=[{"type": "serial", "port": str(port), "read_timeout_s": read_timeout_s}]).sources[0]
        self.frames: list[tuple[float, Frame]] = []  # (arrival, frame)
        self.blocks: list[tuple[float, object]] = []  # (arrival, SampleBlock)
        self.emitted: list[tuple[float, float | None]] = []  # (time.time() of the emit, the block's ``arrived``)
        source = make_source(cfg)
        assert isinstance(source, SerialSource)
        source.pace = pace
        source.on_frame = lambda frame: self.frames.append((time.monotonic(), frame))
        self.source = source
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="source:test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.source.run(self._emit, self.stop_event)
        except BaseException as exc:  # the test asserts there is none
            self.error = exc

    def _emit(self, block, arrived: float | None = None) -> bool:
        self.emitted.append((time.time(), arrived))
        self.blocks.append((time.monotonic(), block))
        return True

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the source did not stop within 5 s"
        assert self.error is None, f"exception escaped SerialSource.run: {self.error!r}"

    def decoded(self, mtype: int) -> list[int]:
        return [f.seq for _, f in list(self.frames) if f.type == mtype]

    def wait_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.error is None, f"exception escaped SerialSource.run: {self.error!r}"
            assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}; counters {self.source.counters()}"
            time.sleep(0.01)


def _rejected(counters: dict) -> dict:
    return {k: v for k, v in counters.items() if k.startswith("rejected_") and v}


@pytest.fixture
def emulators(tmp_path):
    """Factory of Emulator processes, killed at teardown if still running."""
    made: list[Emulator] = []

    def start(scenario: str, *args: str) -> Emulator:
        emu = Emulator(tmp_path, scenario, *args)
        made.append(emu)
        emu.wait_for_link()
        return emu

    yield start
    for emu in made:
        emu.kill()


def _finish(run: SourceRun, emu: Emulator, timeout: float) -> dict:
    """Wait for the emulator to exit 0, for the source to notice the port is gone, then stop it."""
    assert emu.wait(timeout) == 0, emu.log()
    assert not emu.link.exists(), "the emulator left its link behind"
    run.wait_until(lambda: run.source.disconnects >= 1, 5.0, "the source to see the port vanish")
    run.stop()
    return emu.stats()


# ------------------------------------------------------------------------------------ acceptance
@pytest.mark.slow
def test_sixty_seconds_at_full_rate_every_frame_decoded(emulators):
    """60 s of 4 channels x 25.6 kHz int16: every frame sent is decoded, nothing lost or refused."""
    emu = emulators("inner_race", "--seconds", "64", "--seed", "11")
    run = SourceRun(emu.link)
    stats = _finish(run, emu, timeout=100)

    assert stats["corrupted"] == [] and stats["disconnects"] == [] and stats["stalls"] == 0
    assert all(s["overflow"] == 0 for s in stats["streams"].values()), stats["streams"]
    sent = sent_seqs(stats)
    assert len(sent[MsgType.SAMPLES]) >= 60 / FRAME_S, f"only {len(sent[MsgType.SAMPLES])} accelerometer frames in 60 s"
    for mtype, seqs in sent.items():
        decoded = run.decoded(mtype)
        assert len(decoded) == len(set(decoded)) == len(seqs) and set(decoded) == seqs, MsgType(mtype).name
    c = run.source.counters()
    assert _rejected(c) == {}, c
    assert c["seq_gaps"] == c["frames_missing"] == c["duplicates"] == c["timestamp_jumps"] == c["frame_errors"] == 0, c
    assert c["port_opens"] == 1 and c["start_retries"] == 0, c
    assert c["frames_samples"] == stats["frames_sent"]["samples"] and c["frames_speed"] == stats["frames_sent"]["speed"]
    assert c["frames_temperature"] == stats["frames_sent"]["temperature"] >= 59
    print(f"full rate: {stats['frames_sent']} frames sent and decoded in {stats['acquisition_s']} s, {c['bytes_in']} bytes")
    # every frame became one block per channel, consecutive in each channel's sample count
    blocks = [b for _, b in run.blocks]
    assert len(blocks) == 4 * stats["frames_sent"]["samples"]
    for ch in range(4):
        mine = [b for b in blocks if b.channel == f"serial0.s1.ch{ch}"]
        assert all(b.fs == 25600.0 and len(b.samples) == 256 for b in mine)
        assert all(b.seq == a.seq_end for a, b in zip(mine, mine[1:]))
    x = np.concatenate([b.samples for b in mine[-400:]])
    assert 0.02 < float(np.std(x)) < 2.0 and blocks[-1].full_scale == pytest.approx(16.0, rel=1e-3)
    assert 1300 < blocks[-1].rpm < 1700


def test_corrupted_frames_are_rejected_and_every_intact_one_decoded(emulators):
    emu = emulators("outer_race", "--seconds", "20", "--corrupt", "0.01", "--seed", "3")
    run = SourceRun(emu.link)
    stats = _finish(run, emu, timeout=40)

    corrupted = {(int(STREAM_TYPES[c["stream"]]), c["seq"]) for c in stats["corrupted"]}
    assert len(corrupted) == len(stats["corrupted"]) >= 5, stats["corrupted"]
    sent = sent_seqs(stats)
    assert corrupted <= {(t, s) for t, seqs in sent.items() for s in seqs}
    for mtype, seqs in sent.items():
        decoded = run.decoded(mtype)
        bad = {s for t, s in corrupted if t == mtype}
        assert len(decoded) == len(set(decoded)), "a frame was decoded twice"
        assert set(decoded) == seqs - bad, MsgType(mtype).name
    c = run.source.counters()
    # one rejected chunk per corrupted frame: the damage never spilled into a neighbour
    assert sum(_rejected(c).values()) == len(corrupted), (c, stats["corrupted"])
    assert set(_rejected(c)) <= {"rejected_cobs", "rejected_crc", "rejected_short"}  # refused by COBS or CRC
    # the assembler sees each run of corrupted frames inside a stream as one gap, of their number
    gaps = missing = inside = 0
    for mtype in sent:
        decoded = sorted(run.decoded(mtype))
        holes = [b - a - 1 for a, b in zip(decoded, decoded[1:]) if b - a > 1]
        gaps, missing = gaps + len(holes), missing + sum(holes)
        inside += sum(1 for t, s in corrupted if t == mtype and decoded[0] < s < decoded[-1])
    assert (c["seq_gaps"], c["frames_missing"]) == (gaps, missing) and missing == inside
    assert c["duplicates"] == c["timestamp_jumps"] == c["frame_errors"] == c["start_retries"] == 0, c


def test_port_vanishes_for_5_s_and_the_source_reconnects_within_2_s(emulators):
    emu = emulators("disconnect", "--seconds", "14", "--seed", "5")
    run = SourceRun(emu.link)
    down = up = None
    while emu.proc.poll() is None and up is None:  # watch the link as the gateway would see it
        exists = emu.link.exists()
        if down is None and not exists:
            down = time.monotonic()
        elif down is not None and exists:
            up = time.monotonic()
        time.sleep(0.002)
    assert down is not None and up is not None, emu.log()
    stats = _finish(run, emu, timeout=30)

    assert up - down == pytest.approx(5.0, abs=0.5)
    first_after = next(t for t, _ in run.blocks if t > up)
    reconnect_s = first_after - up
    print(f"reconnect: first block {reconnect_s:.3f} s after the port came back")
    assert reconnect_s < 2.0
    [outage] = stats["disconnects"]
    assert (outage["down_s"], outage["up_s"]) == (5.0, 10.0)

    c = run.source.counters()
    assert c["port_opens"] == 2 and c["port_disconnects"] >= 2 and c["frame_errors"] == 0, c
    decoded = {t: sorted(run.decoded(t)) for t in sent_seqs(stats)}
    for mtype, seqs in sent_seqs(stats).items():
        assert set(decoded[mtype]) <= seqs
    holes = {t: [b - a - 1 for a, b in zip(d, d[1:]) if b - a > 1] for t, d in decoded.items()}
    assert all(len(h) == 1 for h in holes.values()), holes  # one gap per stream
    assert c["seq_gaps"] == 3 and c["frames_missing"] == sum(h[0] for h in holes.values())
    # about 5 s of accelerometer frames missing: the outage, plus the time to reopen and START
    assert 5.0 <= holes[MsgType.SAMPLES][0] * FRAME_S <= 5.0 + 2.5
    # the blocks carry the gap, so the windower never joins samples across it
    ch0 = [b for _, b in run.blocks if b.channel == "serial0.s1.ch0"]
    jumps = [b.seq - a.seq_end for a, b in zip(ch0, ch0[1:]) if b.seq != a.seq_end]
    assert jumps == [holes[MsgType.SAMPLES][0] * 256]


def test_commands_over_the_real_pty(emulators):
    emu = emulators("healthy", "--seed", "2")
    run = SourceRun(emu.link)
    src = run.source
    samples = lambda: [f for _, f in list(run.frames) if f.type == MsgType.SAMPLES]  # noqa: E731
    run.wait_until(lambda: len(samples()) >= 20, 10, "the first frames")

    # PING -> PONG with the token, twice (each answer matches its own token)
    for token in (0xDEADBEEF, 7):
        ping = Frame(type=MsgType.PING, sensor_id=0, payload=struct.pack("<I", token))
        pong = src.command(ping, timeout=3)
        assert pong is not None and pong.type == MsgType.PONG and struct.unpack("<I", pong.payload) == (token,)

    # SET_RATE: acknowledged, and the frames that follow carry the new rate and spacing
    ack = src.command(Frame(type=MsgType.SET_RATE, sensor_id=0, sample_rate=12800.0), timeout=3)
    assert ack is not None and ack.payload == bytes([MsgType.SET_RATE, 0])
    run.wait_until(lambda: sum(f.sample_rate == 12800.0 for f in samples()) >= 10, 5, "frames at 12800 Hz")
    frames = samples()
    first_new = next(i for i, f in enumerate(frames) if f.sample_rate == 12800.0)
    assert all(f.sample_rate == 25600.0 for f in frames[:first_new])
    assert all(f.sample_rate == 12800.0 for f in frames[first_new:])
    assert {b.timestamp_us - a.timestamp_us for a, b in zip(frames[first_new:], frames[first_new + 1:])} == {20_000}
    assert frames[first_new].timestamp_us - frames[first_new - 1].timestamp_us == 10_000  # no jump at the change
    # a rate the accelerometer cannot do is refused, and nothing changes
    ack = src.command(Frame(type=MsgType.SET_RATE, sensor_id=0, sample_rate=500000.0), timeout=3)
    assert ack is not None and ack.payload == bytes([MsgType.SET_RATE, 1])

    # TIME_SYNC: acknowledged, and the MCU clock reads the gateway's time from then on
    gateway_us = 4_000_000_000_000_000
    n_before = len(samples())
    ack = src.command(Frame(type=MsgType.TIME_SYNC, sensor_id=0, timestamp_us=gateway_us), timeout=3)
    assert ack is not None and ack.payload == bytes([MsgType.TIME_SYNC, 0])
    assert gateway_us <= ack.timestamp_us < gateway_us + 1_000_000
    run.wait_until(lambda: samples()[-1].timestamp_us > gateway_us, 5, "frames on the new clock")
    late = [f for f in samples()[n_before:] if f.timestamp_us >= gateway_us]
    assert late and all(f.timestamp_us < gateway_us + 5_000_000 and f.sample_rate == 12800.0 for f in late)

    # STOP: frames stop; START: they resume, the frames not sent meanwhile are a seq gap
    ack = src.command(Frame(type=MsgType.STOP, sensor_id=0), timeout=3)
    assert ack is not None and ack.payload == bytes([MsgType.STOP, 0])
    time.sleep(0.2)
    stopped_at = len(samples())
    time.sleep(0.5)
    assert len(samples()) == stopped_at
    ack = src.command(Frame(type=MsgType.START, sensor_id=0), timeout=3)
    assert ack is not None and ack.payload == bytes([MsgType.START, 0])
    run.wait_until(lambda: len(samples()) > stopped_at + 5, 5, "frames after START")
    c = src.counters()
    holes = {t: [b - a - 1 for a, b in zip(d, d[1:]) if b - a > 1] for t in STREAM_TYPES.values() for d in [run.decoded(t)]}
    assert len(holes[MsgType.SAMPLES]) == 1 and holes[MsgType.SAMPLES][0] * 256 / 12800 >= 0.6, holes
    assert len(holes[MsgType.SPEED]) == 1 and len(holes[MsgType.TEMPERATURE]) <= 1
    assert c["seq_gaps"] == sum(map(len, holes.values())) and c["frames_missing"] == sum(map(sum, holes.values()))
    assert _rejected(c) == {} and c["frame_errors"] == 0

    # SIGTERM: exit 0, link removed, the commands accounted for
    assert emu.terminate() == 0, emu.log()
    assert not emu.link.exists()
    run.wait_until(lambda: src.disconnects >= 1, 5, "the source to see the port vanish")
    run.stop()
    commands = emu.stats()["commands"]
    assert commands["PING"] == 2 and commands["SET_RATE"] == 2 and commands["STOP"] == 1
    assert commands["START"] == 2 and commands["TIME_SYNC"] == 2  # one of each on open


def _bursts(emitted, gap_s: float = 0.004) -> list[list[tuple[float, float | None]]]:
    """Emits grouped into bursts: consecutive emits less than ``gap_s`` apart."""
    out: list[list] = []
    for e in emitted:
        if out and e[0] - out[-1][-1][0] < gap_s:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def test_with_a_pace_the_bytes_wait_for_the_next_window_and_keep_their_read_time(emulators):
    """pacing.py: while the next window is not due, the source reads every frame as it comes
    but decodes in batches (at most HOLD_MAX_S apart); each block carries the time its bytes
    were read; once the window is near, every frame is decoded as it arrives. Nothing is
    lost or reordered either way."""
    emu = emulators("healthy", "--seed", "4")
    pace = Pace()
    pace.due_at = time.time() + 3600.0  # not due for an hour: hold as long as allowed
    run = SourceRun(emu.link, pace=pace)
    run.wait_until(lambda: len(run.blocks) >= 4 * 100, 15, "a second of blocks")
    time.sleep(1.5)
    held = list(run.emitted)
    pace.due_at = time.time() - 1.0  # the window is due: decode as frames come
    n_held = len(held)
    time.sleep(1.5)
    live = run.emitted[n_held:]
    run.stop()
    assert emu.terminate() == 0

    assert all(a is not None and a <= t for t, a in held + live)
    # held: 100 frames/s decoded in batches, each batch at most HOLD_MAX_S after its first read
    bursts = _bursts(held[-4 * 100:])  # the last second, past start-up
    assert len(bursts) <= 100 / 5, f"{len(bursts)} decode batches for 100 frames"
    waits = [b[0][0] - b[0][1] for b in bursts]
    assert max(waits) >= 0.5 * pacing.HOLD_MAX_S and min(t - a for t, a in held[-4 * 100:]) >= 0.0
    assert max(waits) < 2 * pacing.HOLD_MAX_S + 0.5, waits  # bounded (scheduling slack allowed)
    # due: decoded frame by frame again
    frames_live = len(live) / 4
    assert len(_bursts(live)) >= frames_live / 2, (len(_bursts(live)), frames_live)
    for ch in range(4):
        mine = [b for _, b in run.blocks if b.channel == f"serial0.s1.ch{ch}"]
        assert len(mine) >= 300 and all(b.seq == a.seq_end for a, b in zip(mine, mine[1:]))


def test_a_held_source_answers_commands_at_once_and_decodes_what_it_holds_when_stopped(emulators, monkeypatch):
    monkeypatch.setattr(pacing, "HOLD_MAX_S", 30.0)  # would hold for the whole test
    emu = emulators("healthy", "--seed", "5")
    pace = Pace()
    pace.due_at = time.time() + 3600.0
    run = SourceRun(emu.link, pace=pace)
    run.wait_until(lambda: run.source.opens == 1, 15, "the port open")
    time.sleep(1.0)
    assert run.blocks == []  # a second of frames read and held, none decoded
    pong = run.source.command(Frame(type=MsgType.PING, sensor_id=0, payload=struct.pack("<I", 99)), timeout=1.0, tries=1)
    assert pong is not None and pong.type == MsgType.PONG  # a command waiting is never held back
    n = len(run.blocks)
    assert n > 0  # what was held came out with the answer
    time.sleep(0.5)
    run.stop()  # held bytes are decoded before run() returns
    assert len(run.blocks) > n + 4 * 20
    mine = [b for _, b in run.blocks if b.channel == "serial0.s1.ch0"]
    assert all(b.seq == a.seq_end for a, b in zip(mine, mine[1:]))
    assert emu.terminate() == 0


# ------------------------------------------------------------------------------------ the source alone
def test_a_port_missing_at_start_is_retried_until_it_appears(tmp_path, emulators):
    link = tmp_path / "ttyEMU"
    run = SourceRun(link)
    time.sleep(1.5)
    c = run.source.counters()
    assert run.thread.is_alive() and c["port_opens"] == 0 and 3 <= c["port_open_failures"] <= 8, c
    emu = emulators("healthy", "--seconds", "3")
    appeared = time.monotonic()
    run.wait_until(lambda: run.blocks, 5, "blocks once the port exists")
    assert run.blocks[0][0] - appeared < 2.0
    _finish(run, emu, timeout=20)
    assert run.source.counters()["port_opens"] == 1


def test_garbage_on_the_line_is_counted_and_good_frames_still_come_through(pty_pair):
    run = SourceRun(pty_pair.slave_path)
    # on open the source sends TIME_SYNC (with the gateway's clock) then START
    hello = b""
    deadline = time.monotonic() + 5
    while hello.count(b"\x00") < 2 and time.monotonic() < deadline:
        hello += pty_pair.read(1, timeout=0.5)
    commands = [decode_wire_chunk(c) for c in hello.split(b"\x00") if c]
    assert [f.type for f in commands] == [MsgType.TIME_SYNC, MsgType.START]
    assert abs(commands[0].timestamp_us / 1e6 - time.time()) < 5

    rng = random.Random(1)
    good = lambda seq: encode_wire(samples_frame(  # noqa: E731
        np.full((256, 2), seq, np.int16), sensor_id=4, seq=seq, timestamp_us=seq * 10_000, sample_rate=25600.0, scale=0.001))
    noise = bytes(rng.randrange(256) for _ in range(5000))
    babble = bytes(rng.randrange(1, 256) for _ in range(200_000))  # longer than any frame, no delimiter
    odd = [  # well-formed COBS and CRC, unusable content
        encode_wire(Frame(type=MsgType.SAMPLES, sensor_id=4, n_channels=3, sample_format=1, n_samples=2, sample_rate=1.0, payload=b"\x01" * 12)),
        encode_wire(Frame(type=MsgType.PONG, sensor_id=4, payload=b"\x01\x02")),
        encode_wire(Frame(type=0x7F, sensor_id=4)),
    ]
    for chunk in [good(0), noise, b"\x00", good(1), babble, b"\x00", good(2), *odd, good(3)]:
        pty_pair.write(chunk, timeout=5)
    run.wait_until(lambda: len(run.blocks) >= 8, 5, "the good frames")
    time.sleep(0.2)
    assert run.thread.is_alive()
    run.stop()
    blocks = [b for _, b in run.blocks]
    assert sorted({b.seq for b in blocks if b.channel == "serial0.s4.ch0"}) == [0, 256, 512, 768]
    assert [b.samples[0] for b in blocks if b.channel == "serial0.s4.ch1"] == pytest.approx([0, 0.001, 0.002, 0.003])
    c = run.source.counters()
    assert c["rejected_oversize"] == 1 and sum(_rejected(c).values()) >= 4 and c["frame_errors"] == 0
    assert c["frames_samples"] == 4 and c["seq_gaps"] == 0 and c["duplicates"] == 1  # odd[0] repeats seq 0


def _sample_wire(seq: int) -> bytes:
    return encode_wire(samples_frame(
        np.full((256, 2), seq, np.int16), sensor_id=4, seq=seq, timestamp_us=seq * 10_000, sample_rate=25600.0, scale=0.001))


def _empty_reads_injected(monkeypatch, how_many: int) -> list[int]:
    """Make the source's next ``how_many`` reads of a readable port return no bytes, as a
    Linux pty read with VMIN=0 now and then does right after poll said it was readable (CI
    saw it once at full rate). The bytes stay in the real pty for the next read."""
    import os as real_os

    from edge_agent.sources import serial_port

    left = [how_many]

    class _Os:  # the real os module, but for the first reads
        def __getattr__(self, name):
            return getattr(real_os, name)

        @staticmethod
        def read(fd, n):
            if left[0] > 0:
                left[0] -= 1
                return b""
            return real_os.read(fd, n)

    monkeypatch.setattr(serial_port, "os", _Os())
    return left


def _source_streaming(pty_pair) -> SourceRun:
    run = SourceRun(pty_pair.slave_path)
    hello = b""
    deadline = time.monotonic() + 5
    while hello.count(b"\x00") < 2 and time.monotonic() < deadline:  # TIME_SYNC + START: the port is open
        hello += pty_pair.read(1, timeout=0.5)
    assert hello.count(b"\x00") == 2, hello
    return run


def test_a_readable_port_that_once_returns_no_bytes_is_read_on_not_reopened(pty_pair, monkeypatch):
    """Reopening would flush the frames waiting in the port: they must all arrive."""
    run = _source_streaming(pty_pair)
    pty_pair.write(_sample_wire(0), timeout=5)
    run.wait_until(lambda: run.decoded(MsgType.SAMPLES) == [0], 5, "the first frame")
    left = _empty_reads_injected(monkeypatch, EMPTY_READS_MAX - 1)
    for seq in range(1, 6):
        pty_pair.write(_sample_wire(seq), timeout=5)
    run.wait_until(lambda: len(run.decoded(MsgType.SAMPLES)) == 6, 5, "every frame after the empty reads")
    run.stop()
    c = run.source.counters()
    assert left == [0] and c["empty_reads"] == EMPTY_READS_MAX - 1, c
    assert c["port_disconnects"] == 0 and c["port_opens"] == 1 and c["seq_gaps"] == 0, c
    assert run.decoded(MsgType.SAMPLES) == list(range(6))


def test_a_port_that_keeps_returning_no_bytes_is_taken_as_gone(pty_pair, monkeypatch):
    run = _source_streaming(pty_pair)
    _empty_reads_injected(monkeypatch, 10_000)
    pty_pair.write(_sample_wire(0), timeout=5)  # readable from now on, but every read is empty
    run.wait_until(lambda: run.source.disconnects >= 1, 5, "the source to give the port up")
    run.stop()
    c = run.source.counters()
    assert c["empty_reads"] >= EMPTY_READS_MAX and c["port_opens"] >= 1, c


def test_a_hung_up_port_is_gone_at_the_first_empty_read(pty_pair):
    run = _source_streaming(pty_pair)
    pty_pair.write(_sample_wire(0), timeout=5)
    run.wait_until(lambda: run.decoded(MsgType.SAMPLES) == [0], 5, "the first frame")
    pty_pair.close()  # the master closes: the slave is hung up (POLLHUP), as a USB unplug
    run.wait_until(lambda: run.source.disconnects == 1, 5, "the source to see the hang-up")
    run.stop()
    assert run.source.counters()["empty_reads"] == 0
