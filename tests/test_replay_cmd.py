"""``edge-agent replay`` (edge_agent/replay_cmd.py) with the real int8 test pack: the
contract's JSONL shape on wav, csv and the real CWRU recordings (12 kHz and 48 kHz), and
one-line exit-2 errors. The tiny pack is not a diagnostic model: no accuracy is asserted."""
import io
import json
import math
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from edge_agent import replay_cmd
from tests.cli_helpers import edge_agent_cmd, run_cli

TINY = str(Path(__file__).parent / "data" / "tiny.pack")
LABELS = {"normal", "inner_race", "outer_race", "ball"}
KEYS = {"t_start", "label", "scores", "anomaly_score", "alert"}
LENGTH, HOP = 4096, 2048  # the tiny pack's window


def n_windows(n_samples):
    return 0 if n_samples < LENGTH else (n_samples - LENGTH) // HOP + 1


def check_jsonl(stdout, expected_windows, fs):
    lines = stdout.splitlines()
    assert len(lines) == expected_windows
    prev = -1.0
    for line in lines:
        obj = json.loads(line)
        assert set(obj) == KEYS
        assert isinstance(obj["t_start"], float) and obj["t_start"] > prev
        prev = obj["t_start"]
        assert obj["label"] in LABELS
        assert set(obj["scores"]) == LABELS
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in obj["scores"].values())
        assert obj["label"] == max(obj["scores"], key=obj["scores"].get) or \
            obj["scores"][obj["label"]] == max(obj["scores"].values())
        assert isinstance(obj["anomaly_score"], float) and math.isfinite(obj["anomaly_score"])
        assert isinstance(obj["alert"], bool)
    starts = [json.loads(x)["t_start"] for x in lines]
    assert starts[0] == 0.0
    if len(starts) > 1:
        assert starts[1] == pytest.approx(HOP / fs, abs=1e-5)
    return [json.loads(x) for x in lines]


def signal(fs, seconds, rpm=1797.0, seed=0):
    """Noise plus periodic impacts at an inner-race-like rate."""
    rng = np.random.default_rng(seed)
    n = int(fs * seconds)
    x = 0.05 * rng.standard_normal(n)
    period = int(fs / (5.415 * rpm / 60))
    ring = np.exp(-np.arange(200) / 30.0) * np.sin(2 * np.pi * 3000 / fs * np.arange(200))
    for k in range(0, n - 200, period):
        x[k:k + 200] += 0.5 * ring
    return x


def write_wav(path, x, fs):
    pcm = np.clip(x / 2.0 * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(fs))
        w.writeframes(pcm.tobytes())


def test_wav_jsonl(tmp_path):
    fs = 48000
    x = signal(fs, 2.0)
    write_wav(tmp_path / "rec.wav", x, fs)
    r = run_cli("replay", str(tmp_path / "rec.wav"), "--rpm", "1797", "--model", TINY, "--jsonl")
    assert r.returncode == 0, r.stderr
    check_jsonl(r.stdout, n_windows(len(x)), fs)
    assert "replay summary" in r.stderr and "windows/s" in r.stderr


def test_csv_jsonl_and_table(tmp_path):
    fs = 12000
    x = signal(fs, 3.0, seed=1)
    np.savetxt(tmp_path / "rec.csv", x[:, None], delimiter=",", header="accel", comments="", fmt="%.6f")
    r = run_cli("replay", str(tmp_path / "rec.csv"), "--fs", str(fs), "--rpm", "1797", "--model", TINY, "--jsonl")
    assert r.returncode == 0, r.stderr
    check_jsonl(r.stdout, n_windows(len(x)), fs)
    table = run_cli("replay", str(tmp_path / "rec.csv"), "--fs", str(fs), "--model", TINY)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.strip().splitlines()
    assert rows[0].split()[:2] == ["t_start_s", "label"] and len(rows) == 1 + n_windows(len(x))
    assert "assuming 1500 rpm" in table.stderr  # csv gives no speed and --rpm was not given


@pytest.mark.parametrize("name", ["1797_IR_7_DE12.npz", "1797_normal_DE48_part1.npz"])
def test_real_cwru_recordings(cwru_dir, name):
    path = cwru_dir / name
    with np.load(path) as z:
        n, fs = len(z["DE"]), float(z["fs"])
    r = run_cli("replay", str(path), "--model", TINY, "--jsonl")
    assert r.returncode == 0, r.stderr
    check_jsonl(r.stdout, n_windows(n), fs)
    assert "Traceback" not in r.stderr
    for label in LABELS:
        assert label in r.stderr  # the summary table names every label


def test_in_process_matches_the_daemon_rule(cwru_dir):
    out, err = io.StringIO(), io.StringIO()
    assert replay_cmd.run_replay(str(cwru_dir / "1797_IR_7_DE12.npz"), model=TINY, jsonl=True, out=out, err=err) == 0
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert rows and all(r["alert"] == (
        (r["label"] != "normal" and r["scores"][r["label"]] >= 0.6) or r["anomaly_score"] >= 3.0) for r in rows)


def _one_line_exit_2(r):
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent replay: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_missing_file(tmp_path):
    line = _one_line_exit_2(run_cli("replay", str(tmp_path / "nope.npz"), "--model", TINY, "--jsonl"))
    assert "not found" in line


def test_csv_without_fs(tmp_path):
    (tmp_path / "rec.csv").write_text("0.1\n0.2\n0.3\n")
    line = _one_line_exit_2(run_cli("replay", str(tmp_path / "rec.csv"), "--model", TINY))
    assert "--fs" in line


def test_bad_pack(tmp_path):
    write_wav(tmp_path / "rec.wav", signal(12000, 1.0), 12000)
    (tmp_path / "bad.pack").write_bytes(b"garbage")
    line = _one_line_exit_2(run_cli("replay", str(tmp_path / "rec.wav"), "--model", str(tmp_path / "bad.pack")))
    assert "bad.pack" in line
    line = _one_line_exit_2(run_cli("replay", str(tmp_path / "rec.wav"), "--model", str(tmp_path / "none.pack")))
    assert "none.pack" in line


def test_unreadable_file(tmp_path):
    (tmp_path / "rec.npz").write_bytes(b"not an npz")
    _one_line_exit_2(run_cli("replay", str(tmp_path / "rec.npz"), "--model", TINY))


def test_bad_arguments(tmp_path):
    r = run_cli("replay", "x.npz", "--fs", "-3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_default_pack_missing_names_model_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(replay_cmd, "DEFAULT_PACK", tmp_path / "models" / "default.pack")
    write_wav(tmp_path / "rec.wav", signal(12000, 1.0), 12000)
    assert replay_cmd.run_replay(str(tmp_path / "rec.wav")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model PACK" in err[0] and "default.pack" in err[0]


def test_progress_and_summary_go_to_stderr_only(cwru_dir, monkeypatch):
    monkeypatch.setattr(replay_cmd, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(replay_cmd, "BATCH_BLOCKS", 4)
    out, err = io.StringIO(), io.StringIO()
    assert replay_cmd.run_replay(str(cwru_dir / "1797_normal_DE48_part1.npz"), model=TINY, jsonl=True,
                                 out=out, err=err) == 0
    assert all(line.startswith("{") for line in out.getvalue().splitlines())
    text = err.getvalue()
    assert "windows/s" in text and "% " not in out.getvalue()
    assert sum(1 for line in text.splitlines() if line.startswith("replay: ") and "windows/s" in line) >= 2
    assert "replay summary" in text and "alert windows" in text


def test_short_recording_gives_no_windows(tmp_path):
    write_wav(tmp_path / "short.wav", signal(12000, 0.2), 12000)
    r = run_cli("replay", str(tmp_path / "short.wav"), "--model", TINY, "--jsonl")
    assert r.returncode == 0 and r.stdout == "" and "shorter than one window" in r.stderr


def test_a_reader_that_stops_early_ends_it_quietly(tmp_path):
    """``edge-agent replay ... | head -1``: the command ends at once without its interpreter's
    teardown (cli.QUICK_EXIT); a closed stdout is exit 0 with no traceback, and a whole run
    read to the end has every line and the summary (both flushed before the quick exit)."""
    path = tmp_path / "rec.npz"
    x = np.random.default_rng(5).normal(0, 0.1, 12000 * 30).astype(np.float32)
    np.savez(path, DE=x, fs=12000.0, rpm=1797.0)
    argv = [*edge_agent_cmd(), "replay", str(path), "--model", TINY, "--jsonl"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(p.stdout.readline())["t_start"] == 0.0
    p.stdout.close()  # as head does after its line
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "Traceback" not in err and "Exception ignored" not in err
    whole = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0
    check_jsonl(whole.stdout, n_windows(len(x)), 12000.0)
    assert "replay summary" in whole.stderr and whole.stderr.rstrip().endswith("x real time")


def test_scratch_storage_in_memory_only_with_room(tmp_path, monkeypatch):
    """The replay's throwaway outbox and alert log go to /dev/shm (no fsync per alert) only
    when it has room for them; a small one (a container's 64 MB) leaves them on disk."""
    monkeypatch.setattr(replay_cmd, "SCRATCH_DIR", tmp_path)
    assert replay_cmd._scratch_dir(need_mb=1.0) == str(tmp_path)
    assert replay_cmd._scratch_dir(need_mb=1e12) is None  # a petabyte: never there
    monkeypatch.setattr(replay_cmd, "SCRATCH_DIR", tmp_path / "absent")
    assert replay_cmd._scratch_dir(need_mb=1.0) is None
