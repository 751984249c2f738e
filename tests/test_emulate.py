"""``edge-agent emulate``: the command line, clean exits, determinism, and the line errors of
``--corrupt`` (emulator/corrupt.py). The source side of the link is tests/test_serial_source.py."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
import serial

from cli_helpers import edge_agent_cmd, run_cli
from edge_agent.emulator.corrupt import KINDS, corrupt, corruption_for
from edge_agent.protocol.frame import Frame, FrameError, MsgType, decode_wire_chunk, encode_wire, samples_frame
from edge_agent.protocol.stream import StreamDecoder


# ------------------------------------------------------------------------------------ --corrupt
def _wire(seq: int, n: int = 256) -> bytes:
    rng = np.random.default_rng(seq)
    x = rng.integers(-32768, 32767, size=(n, 4), dtype=np.int16)
    return encode_wire(samples_frame(x, sensor_id=1, seq=seq, timestamp_us=seq * 10_000, sample_rate=25600.0, scale=2**-11))


def test_every_kind_of_damage_costs_exactly_the_damaged_frame():
    kinds: Counter[str] = Counter()
    for seq in range(400):
        good_before, victim, good_after = _wire(seq), _wire(seq + 1, n=1 + seq % 300), _wire(seq + 2)
        damaged, kind = corrupt(victim[:-1], random.Random(seq))
        kinds[kind] += 1
        assert damaged and 0 not in damaged and damaged != victim[:-1], kind
        decoder = StreamDecoder()
        frames = decoder.feed(good_before + damaged + b"\x00" + good_after)
        assert [f.seq for f in frames] == [seq, seq + 2], kind  # the next frame is intact: resync in one frame
        assert sum(decoder.rejected.values()) == 1, (kind, decoder.rejected)
        with pytest.raises(FrameError):
            decode_wire_chunk(damaged)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 60, kinds


def test_tiny_frames_can_be_damaged_too():
    for seed in range(200):
        damaged, kind = corrupt(b"\x05", random.Random(seed))
        assert damaged and 0 not in damaged and damaged != b"\x05" and kind in KINDS


def test_which_frames_are_damaged_depends_on_seed_stream_and_seq_only():
    hits = [seq for seq in range(20_000) if corruption_for(7, "samples", seq, 0.01)]
    assert 140 <= len(hits) <= 260  # 1 % of 20000, binomial sd ~14
    assert hits == [seq for seq in range(20_000) if corruption_for(7, "samples", seq, 0.01)]
    assert hits != [seq for seq in range(20_000) if corruption_for(8, "samples", seq, 0.01)]
    assert hits != [seq for seq in range(20_000) if corruption_for(7, "speed", seq, 0.01)]
    assert corruption_for(7, "samples", 5, 0.0) is None and corruption_for(7, "samples", 5, 1.0) is not None
    # the same frame is damaged the same way every time
    a = corrupt(_wire(3)[:-1], corruption_for(1, "samples", 3, 1.0))
    assert a == corrupt(_wire(3)[:-1], corruption_for(1, "samples", 3, 1.0))


# ------------------------------------------------------------------------------------ command line
def test_help_lists_the_options():
    r = run_cli("emulate", "--help")
    assert r.returncode == 0
    for option in ("--link", "--scenario", "--seconds", "--fs", "--channels", "--corrupt", "--seed", "--stats", "disconnect"):
        assert option in r.stdout, option


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--scenario", "earthquake"], "invalid choice: 'earthquake'"),
        (["--scenario", "healthy", "--fs", "10"], "must be from 1000 to 200000"),
        (["--scenario", "healthy", "--channels", "0"], "invalid choice: 0"),
        (["--scenario", "healthy", "--seed", "-1"], "must be >= 0"),
        (["--scenario", "healthy", "--corrupt", "1.5"], "must be from 0 to 1"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path, extra, needle):
    r = run_cli("emulate", "--link", str(tmp_path / "tty"), *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "tty").exists()


def test_a_link_path_that_cannot_be_used_is_one_line_exit_2(tmp_path):
    r = run_cli("emulate", "--link", str(tmp_path / "no-such-dir" / "tty"), "--scenario", "healthy", "--seconds", "5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot create the link" in r.stderr
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    r = run_cli("emulate", "--link", str(precious), "--scenario", "healthy", "--seconds", "5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a symlink" in r.stderr
    assert precious.read_text() == "mine"
    r = run_cli("emulate", "--link", str(tmp_path / "tty"), "--scenario", "healthy", "--stats", str(tmp_path / "nope" / "s.json"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--stats" in r.stderr


def test_seconds_ends_it_with_exit_0_and_the_link_removed(tmp_path):
    link, stats = tmp_path / "tty", tmp_path / "stats.json"
    t = time.monotonic()
    p = subprocess.Popen([*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", "ball", "--seconds", "2", "--stats", str(stats)],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not link.is_symlink() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.is_symlink() and link.resolve().as_posix().startswith("/dev/pts/")
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0 and 2.0 <= time.monotonic() - t < 15, err
    assert not link.exists() and not link.is_symlink()
    assert "waiting for START" in err and "stopped" in err and "Traceback" not in err
    doc = json.loads(stats.read_text())
    assert doc["frames_sent"] == {"samples": 0, "speed": 0, "temperature": 0}  # no gateway ever said START
    assert doc["scenario"] == "ball" and doc["corrupted"] == [] and doc["disconnects"] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_end_it_cleanly(tmp_path, sig):
    link = tmp_path / "tty"
    p = subprocess.Popen([*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", "healthy"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.is_symlink()
        t = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=10)
        assert time.monotonic() - t < 3.0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not link.exists() and not link.is_symlink()


# ------------------------------------------------------------------------------------ determinism
def _first_chunks(tmp_path, seed: int, count: int = 80) -> list[bytes]:
    """The first ``count`` frames on the wire after START, as raw chunks (corrupted ones too)."""
    link = tmp_path / f"tty-{seed}-{time.monotonic_ns()}"
    p = subprocess.Popen(
        [*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", "inner_race", "--seed", str(seed),
         "--corrupt", "0.2", "--seconds", "10"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.01)
        with serial.Serial(str(link), 921600, timeout=0.2) as port:
            port.write(encode_wire(Frame(type=MsgType.START, sensor_id=0)))
            data = b""
            deadline = time.monotonic() + 5
            while len([c for c in data.split(b"\x00")[:-1] if c]) < count and time.monotonic() < deadline:
                data += port.read(max(1, port.in_waiting))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    return [c for c in data.split(b"\x00")[:-1] if c][:count]


def test_the_same_seed_gives_the_same_bytes(tmp_path):
    a, b, other = _first_chunks(tmp_path, 9), _first_chunks(tmp_path, 9), _first_chunks(tmp_path, 10)
    assert len(a) == len(b) == len(other) == 80
    assert a == b
    decoded = []
    for chunk in a:
        try:
            decoded.append(decode_wire_chunk(chunk))
        except FrameError:
            decoded.append(None)
    # what the bytes are: the ACK of START, then frames from seq 0 on a clock starting at 0,
    # about a fifth of them damaged
    assert decoded[0] is not None and decoded[0].type == MsgType.ACK and decoded[0].payload == bytes([MsgType.START, 0])
    samples = [f for f in decoded if f is not None and f.type == MsgType.SAMPLES]
    assert samples and all(f.timestamp_us == f.seq * 10_000 for f in samples)
    assert 5 <= decoded.count(None) <= 30
    # another seed: other noise, other damage
    assert a[0] == other[0] and sum(x != y for x, y in zip(a[1:], other[1:])) >= 70


# ------------------------------------------------------------------------------------ commands, raw
def test_replies_carry_the_command_seq_and_a_retry_is_answered_but_done_once(tmp_path):
    link, stats = tmp_path / "tty", tmp_path / "stats.json"
    p = subprocess.Popen([*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", "healthy", "--stats", str(stats)],
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.01)
        with serial.Serial(str(link), 921600, timeout=0.2) as port:
            set_rate = encode_wire(Frame(type=MsgType.SET_RATE, sensor_id=0, seq=41, sample_rate=6400.0))
            ping = encode_wire(Frame(type=MsgType.PING, sensor_id=0, seq=42, payload=b"\x01\x02\x03\x04"))
            port.write(set_rate + set_rate + ping)  # the second SET_RATE is a retry of the first
            data = b""
            deadline = time.monotonic() + 5
            while data.count(b"\x00") < 3 and time.monotonic() < deadline:
                data += port.read(1)
        replies = [decode_wire_chunk(c) for c in data.split(b"\x00") if c]
        assert [(f.type, f.seq, f.payload) for f in replies] == [
            (MsgType.ACK, 41, bytes([MsgType.SET_RATE, 0])), (MsgType.ACK, 41, bytes([MsgType.SET_RATE, 0])),
            (MsgType.PONG, 42, b"\x01\x02\x03\x04")]
        assert replies[0].timestamp_us > 0  # before acquisition: the timer since boot
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    assert p.returncode == 0
    doc = json.loads(stats.read_text())
    assert doc["commands"] == {"SET_RATE": 2, "PING": 1}
    assert len(doc["rate_changes"]) == 1 and doc["streams"]["samples"]["fs"] == 6400.0


# ------------------------------------------------------------------------------------ --fault-at
def _frames_after_start(link, count: int, timeout: float = 10.0) -> tuple[float, list[Frame]]:
    """START the emulator at ``link``; (time.time() when START was sent, the first ``count``
    samples frames)."""
    with serial.Serial(str(link), 921600, timeout=0.2) as port:
        sent = time.time()
        port.write(encode_wire(Frame(type=MsgType.START, sensor_id=0)))
        decoder, frames = StreamDecoder(), []
        deadline = time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            frames += [f for f in decoder.feed(port.read(max(1, port.in_waiting))) if f.type == MsgType.SAMPLES]
    return sent, frames[:count]


def test_fault_at_moves_the_onset_and_records_when_it_happened(tmp_path):
    """--fault-at: a healthy signal before the onset, the scenario's failure from it (flatline:
    every channel stuck at one value), and the onset in the stats and on stderr."""
    link, stats = tmp_path / "tty", tmp_path / "stats.json"
    p = subprocess.Popen([*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", "flatline", "--fault-at", "0.5",
                          "--stats", str(stats)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.01)
        started, frames = _frames_after_start(link, 80)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
    assert p.returncode == 0 and len(frames) == 80, err
    # 256 samples per frame at 25.6 kHz: the onset at 0.5 s is the first sample of frame 50
    ptp = [int(np.ptp(f.samples()[:, 0] / f.scale)) for f in frames]
    assert min(ptp[:50]) > 10 and max(ptp[50:]) == 0, ptp
    doc = json.loads(stats.read_text())
    onset = doc["fault_onset"]
    assert doc["fault_at_s"] == 0.5 and onset["scenario"] == "flatline" and onset["at_s"] == 0.5 and onset["frame_seq"] == 50
    # acquisition starts at START: the onset is 0.5 s after it (the pty and a loaded machine: 0.3 s slack)
    assert started + 0.45 <= onset["unix"] <= started + 0.8, (started, onset)
    assert 0 <= onset["frame_unix"] - onset["unix"] < 0.3
    assert "fault onset: flatline from acquisition time 0.5 s" in err


def test_fault_at_leaves_the_signal_before_the_onset_as_it_was():
    """The onset moves, nothing else: the same seed gives the same samples up to the earlier
    onset, then the fault's impulses (inner race) differ."""
    from edge_agent.emulator.mcu import EmulateOptions, Mcu

    def first_frames(fault_at):
        mcu = Mcu(EmulateOptions(link="unused", scenario="inner_race", fault_at=fault_at))
        return [mcu.accel.next_frame(256) for _ in range(400)]  # 4 s

    default, early = first_frames(None), first_frames(2.0)
    assert all(np.array_equal(a, b) for a, b in zip(default[:200], early[:200]))  # before 2 s: identical
    assert sum(not np.array_equal(a, b) for a, b in zip(default[200:], early[200:])) >= 150
    assert Mcu(EmulateOptions(link="unused", scenario="inner_race")).spec.onset_s == 5.0  # the default


@pytest.mark.parametrize("extra,needle", [
    (["--scenario", "inner_race", "--fault-at", "-1"], "must be a number >= 0"),
    (["--scenario", "inner_race", "--fault-at", "soon"], "not a number"),
    (["--scenario", "healthy", "--fault-at", "3"], "the healthy scenario has no fault"),
])
def test_fault_at_bad_values_are_one_line_exit_2(tmp_path, extra, needle):
    r = run_cli("emulate", "--link", str(tmp_path / "tty"), *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "tty").exists()
    assert "--fault-at" in run_cli("emulate", "--help").stdout
