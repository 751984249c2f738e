"""Replay: recordings (.npz, .csv, .wav) -> SampleBlocks, every sample exactly once and in
order, on the real CWRU records and on files the tests write; one clear line for each bad
case; and through the agent's samples queue without a drop."""
from __future__ import annotations

import threading
import time
import wave
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.recordings import Recording, RecordingError, load_recording
from edge_agent.sources.replay import BLOCK, ReplaySource
from edge_agent.window import SampleBlock


def replay_config(path: Path, fs: float = 0.0, rpm: float = 0.0, loop: bool = False, name: str = "rec"):
    cfg = default_config(source=[{"type": "replay", "name": name, "path": str(path), "fs": fs, "rpm": rpm, "loop": loop}])
    return cfg.sources[0]


def run_to_end(source: ReplaySource) -> list[SampleBlock]:
    blocks: list[SampleBlock] = []
    source.run(blocks.append, threading.Event())
    return blocks


def assert_replayed_exactly(blocks: list[SampleBlock], rec: Recording, source_name: str) -> None:
    """Every channel: blocks in order, seq contiguous from 0, samples equal to the file's."""
    per: dict[str, list[SampleBlock]] = defaultdict(list)
    for b in blocks:
        per[b.channel].append(b)
    assert set(per) == {f"{source_name}.{ch}" for ch in rec.channels}
    for ch, x in rec.channels.items():
        got = per[f"{source_name}.{ch}"]
        assert [b.seq for b in got] == list(range(0, len(x), BLOCK))
        assert all(b.seq_end == nxt.seq for b, nxt in zip(got, got[1:]))
        joined = np.concatenate([b.samples for b in got])
        assert joined.dtype == np.float32
        np.testing.assert_array_equal(joined, x)
        assert all(b.fs == rec.fs and b.rpm == rec.rpm for b in got)
        assert [b.t0_us for b in got] == [round(b.seq * 1e6 / rec.fs) for b in got]


# -- the real CWRU records -----------------------------------------------------------------
@pytest.mark.parametrize("file, fs", [("1797_IR_7_DE12.npz", 12000.0), ("1797_normal_DE48_part1.npz", 48000.0)])
def test_cwru_records_are_replayed_sample_for_sample(cwru_dir: Path, file: str, fs: float) -> None:
    path = cwru_dir / file
    with np.load(path) as npz:
        de = npz["DE"].copy()
        assert float(npz["fs"]) == fs
    src = ReplaySource(replay_config(path))
    rec = src.recording
    assert (rec.fs, rec.rpm, list(rec.channels)) == (fs, 1797.0, ["DE"])
    np.testing.assert_array_equal(rec.channels["DE"], de)
    blocks = run_to_end(src)
    assert_replayed_exactly(blocks, rec, "rec")
    assert src.counters() == {"blocks": len(blocks), "samples": len(de), "loops": 0, "finished": 1}


def test_fs_and_rpm_given_override_the_file(cwru_dir: Path) -> None:
    rec = load_recording(cwru_dir / "1797_IR_7_DE12.npz", fs=24000.0, rpm=1750.0)
    assert (rec.fs, rec.rpm) == (24000.0, 1750.0)
    assert "24000 Hz (given)" in rec.source_desc and "1750 rpm (given)" in rec.source_desc
    src = ReplaySource(replay_config(cwru_dir / "1797_IR_7_DE12.npz", fs=24000.0, rpm=1750.0))
    blocks = run_to_end(src)
    assert {b.fs for b in blocks} == {24000.0} and {b.rpm for b in blocks} == {1750.0}


# -- files the tests write ------------------------------------------------------------------
def signal(n: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.3, (n, channels)).astype(np.float32)


def test_npz_with_data_key_and_two_channels(tmp_path: Path) -> None:
    x = signal(10_000, 2)
    np.savez(tmp_path / "two.npz", data=x, fs=np.int32(25600))
    src = ReplaySource(replay_config(tmp_path / "two.npz"))
    rec = src.recording
    assert list(rec.channels) == ["data0", "data1"] and rec.fs == 25600.0 and rec.rpm is None
    blocks = run_to_end(src)
    assert_replayed_exactly(blocks, rec, "rec")
    np.testing.assert_array_equal(rec.channels["data1"], x[:, 1])
    # blocks of one stretch of time go out together: ch0 then ch1, block after block
    assert [b.channel for b in blocks[:4]] == ["rec.data0", "rec.data1", "rec.data0", "rec.data1"]


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path: Path, header: bool) -> None:
    x = signal(9_000, 3, seed=1)
    path = tmp_path / "three.csv"
    np.savetxt(path, x, delimiter=",", fmt="%.9g", header="x,y,z" if header else "", comments="")
    if not header:  # np.savetxt writes an empty first line for header=""
        path.write_text(path.read_text().lstrip("\n"))
    with pytest.raises(RecordingError) as err:
        load_recording(path)
    assert str(err.value) == (
        f"recording {path}: no sample rate: a .csv file does not say it; give it with --fs HZ "
        "(replay command) or fs = HZ (replay [[source]] in the config)"
    )
    src = ReplaySource(replay_config(path, fs=20000.0))
    rec = src.recording
    assert list(rec.channels) == (["x", "y", "z"] if header else ["ch0", "ch1", "ch2"])
    assert rec.fs == 20000.0
    for i, ch in enumerate(rec.channels):
        np.testing.assert_array_equal(rec.channels[ch], x[:, i])  # %.9g round-trips float32
    assert_replayed_exactly(run_to_end(src), rec, "rec")


@pytest.mark.parametrize("width, dtype", [(2, np.int16), (4, np.int32)])
def test_wav_written_with_the_wave_module(tmp_path: Path, width: int, dtype: type) -> None:
    info = np.iinfo(dtype)
    raw = np.random.default_rng(2).integers(info.min, info.max, size=(7_000, 2), dtype=dtype, endpoint=True)
    path = tmp_path / "two.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(16000)
        w.writeframes(raw.astype(f"<i{width}").tobytes())
    src = ReplaySource(replay_config(path))
    rec = src.recording
    assert (rec.fs, list(rec.channels), rec.full_scale) == (16000.0, ["ch0", "ch1"], 1.0)
    full = np.float32(-float(info.min))
    for i in range(2):
        np.testing.assert_array_equal(rec.channels[f"ch{i}"], raw[:, i].astype(np.float32) / full)
    blocks = run_to_end(src)
    assert_replayed_exactly(blocks, rec, "rec")
    assert {b.full_scale for b in blocks} == {1.0}
    assert load_recording(path, fs=8000.0).fs == 8000.0


# -- bad input: one line each ---------------------------------------------------------------
def _write(tmp_path: Path, name: str, make) -> Path:
    path = tmp_path / name
    make(path)
    return path


def _wav8(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(range(200)))


def _flip_a_data_byte(path: Path) -> None:
    np.savez(path, DE=np.arange(20_000, dtype=np.float32), fs=12000)
    raw = bytearray(path.read_bytes())
    raw[40_000] ^= 0xFF  # inside DE's samples: only the zip's CRC-32 tells
    path.write_bytes(bytes(raw))


def _cut_short(path: Path) -> None:
    np.savez(path, DE=np.arange(20_000, dtype=np.float32), fs=12000)
    path.write_bytes(path.read_bytes()[:50_000])


BAD_CASES = {
    "missing": ("nothere.npz", None, "file not found"),
    "extension": ("rec.mat", lambda p: p.write_bytes(b"x"), "unknown file type '.mat'; replay reads .npz, .csv, .wav"),
    "no signal key": ("nokey.npz", lambda p: np.savez(p, FE=np.zeros(10), fs=12000),
                      "no signal: expected an array named 'DE' or 'data', found 'FE', 'fs'"),
    "npz without fs": ("nofs.npz", lambda p: np.savez(p, DE=np.zeros(10, np.float32)), "no sample rate"),
    "empty npz": ("empty.npz", lambda p: np.savez(p, DE=np.zeros(0, np.float32), fs=12000), "the signal is empty (0 samples)"),
    "nan npz": ("nan.npz", lambda p: np.savez(p, DE=np.array([0.1, np.nan, 0.2, np.inf], np.float32), fs=12000),
                "channel 'DE' has 2 non-finite value(s) (NaN or Inf), the first at sample 1"),
    "bad crc": ("flipped.npz", _flip_a_data_byte, "cannot read 'DE': Bad CRC-32 for file 'DE.npy'"),
    "cut short": ("cut.npz", _cut_short, "not a readable .npz file"),
    "not a zip": ("garbage.npz", lambda p: p.write_bytes(b"this is not numpy at all" * 10), "not a readable .npz file"),
    "transposed": ("wide.npz", lambda p: np.savez(p, data=np.zeros((2, 5000)), fs=12000), "is the array transposed?"),
    "strings": ("text.npz", lambda p: np.savez(p, DE=np.array(["a", "b"]), fs=12000), "holds <U1 values, not numbers"),
    "empty csv": ("empty.csv", lambda p: p.write_text(""), "the signal is empty (no rows)"),
    "header only csv": ("head.csv", lambda p: p.write_text("a,b\n"), "the signal is empty (a header and no rows)"),
    "ragged csv": ("ragged.csv", lambda p: p.write_text("1,2\n3\n"), "not a table of numbers with one column per channel"),
    "text in csv": ("text.csv", lambda p: p.write_text("1,2\n3,abc\n"), "not a table of numbers with one column per channel"),
    "nan csv": ("nan.csv", lambda p: p.write_text("1,2\n3,nan\n"), "channel 'ch1' has 1 non-finite value(s)"),
    "8-bit wav": ("eight.wav", _wav8, "8-bit samples; replay reads 16- or 32-bit integer PCM .wav"),
    "not a wav": ("bad.wav", lambda p: p.write_bytes(b"RIFF0000WAVEjunk"), "not a PCM .wav file this reader understands"),
}


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mapped"])
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_recordings_give_one_clear_line(tmp_path: Path, case: str, mapped: bool) -> None:
    name, make, expected = BAD_CASES[case]
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(RecordingError) as err:
        load_recording(path, fs=12000.0 if name.endswith(".csv") else None, mapped=mapped)
    message = str(err.value)
    assert message.startswith(f"recording {path}: ")
    assert expected in message
    assert "\n" not in message


LAYOUTS = {
    "1-D float32": lambda x: x[:, 0].astype(np.float32),
    "1-D big-endian float64": lambda x: x[:, 0].astype(">f8"),
    "2-D C order int16": lambda x: (x * 1000).astype(np.int16),
    "2-D Fortran order float64": lambda x: np.asfortranarray(x),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_mapped_npz_is_the_read_one(tmp_path: Path, layout: str, compressed: bool) -> None:
    """replay maps a stored .npz signal instead of reading it (recordings._map_member); what
    it sees is the same, a deflated one is read, and a mapped one cannot be written to."""
    x = LAYOUTS[layout](signal(5_000, 3, seed=5))
    path = tmp_path / "rec.npz"
    (np.savez_compressed if compressed else np.savez)(path, DE=x, fs=12000, rpm=1500.0)
    read, mapped = load_recording(path), load_recording(path, mapped=True)
    assert list(read.channels) == list(mapped.channels) and (read.fs, read.rpm) == (mapped.fs, mapped.rpm)
    for ch in read.channels:
        assert mapped.channels[ch].dtype == np.float32 and mapped.channels[ch].flags.c_contiguous
        np.testing.assert_array_equal(mapped.channels[ch], read.channels[ch])
    one = next(iter(mapped.channels.values()))
    if not compressed and x.ndim == 1 and x.dtype == np.float32:  # used in place: the file's pages
        assert not one.flags.writeable
        with pytest.raises(ValueError):
            one[0] = 1.0


def test_bad_overrides_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="sample rate -1.0 must be a positive number"):
        load_recording(tmp_path / "x.npz", fs=-1.0)
    with pytest.raises(RecordingError, match="shaft speed nan must be a positive number"):
        load_recording(tmp_path / "x.npz", rpm=float("nan"))


def test_a_bad_file_stops_the_agent_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "nofs.csv"
    path.write_text("1,2\n3,4\n")
    cfg = default_config(source=[{"type": "replay", "path": str(path)}], storage={"dir": str(tmp_path / "s")})
    with pytest.raises(RecordingError, match="no sample rate"):
        Agent(cfg)


# -- looping -------------------------------------------------------------------------------
def test_loop_marks_a_gap_at_each_wrap_and_repeats_the_samples(tmp_path: Path) -> None:
    x = signal(10_000, 1)[:, 0]
    np.savez(tmp_path / "short.npz", DE=x, fs=12000)
    src = ReplaySource(replay_config(tmp_path / "short.npz", loop=True))
    blocks: list[SampleBlock] = []
    stop = threading.Event()

    def emit(b: SampleBlock) -> None:
        blocks.append(b)
        if len(blocks) >= 3 * 3 + 1:  # 3 blocks per pass: stop early in the fourth pass
            stop.set()

    src.run(emit, stop)
    assert src.counters()["loops"] == 3 and src.counters()["finished"] == 0
    passes = [blocks[i : i + 3] for i in range(0, 9, 3)]
    for k, p in enumerate(passes):
        start = k * (len(x) + 1)  # one sequence number skipped at each wrap
        assert [b.seq for b in p] == [start, start + 4096, start + 8192]
        np.testing.assert_array_equal(np.concatenate([b.samples for b in p]), x)
        assert p[0].t0_us == round(start * 1e6 / 12000)


# -- through the agent: back-pressure instead of drops ---------------------------------------
def test_replay_through_the_agent_drops_nothing(tmp_path: Path, cwru_dir: Path) -> None:
    """A tiny samples queue (8 blocks): the replay source waits for room instead of
    dropping, so the windower sees one gap-free stream and cuts every window there is."""
    path = cwru_dir / "1797_IR_7_DE12.npz"
    cfg = default_config(source=[{"type": "replay", "path": str(path)}], storage={"dir": str(tmp_path / "state")},
                         broker={"enabled": False}, queues={"samples": 8})
    agent = Agent(cfg)
    n = agent.sources[0].recording.n_samples
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t0 = time.monotonic()
    t.start()
    assert agent.sources_done.wait(60)
    deadline = time.monotonic() + 30
    expected_windows = 1 + (n - cfg.window.length) // cfg.window.hop
    while agent.windows_total < expected_windows and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    channel = "replay0.DE"
    assert agent.samples.dropped == 0
    assert agent.samples.accepted == -(-n // BLOCK)  # every block, once
    assert agent.windower.gaps[channel] == 0
    assert agent.windows_total == agent.windower.windows[channel] == expected_windows
    assert agent.snapshot()["sources"]["replay0"] == {"blocks": -(-n // BLOCK), "samples": n, "loops": 0, "finished": 1}
    assert time.monotonic() - t0 < 60
