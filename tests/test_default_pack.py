"""The shipped model, models/default.pack, through ``edge-agent replay`` (the daemon's own
pipeline) on the real CWRU records and on the emulator.

These are regression checks of what is shipped, not generalisation claims: the pack was
trained on the first 70% of every CWRU record (models/REPORT.md says how it was validated on
data it never saw). They catch a rebuilt pack, a feature change or a runtime change that
breaks what the pack did when it was built: the figures asserted are the issue's goals on
the evaluation part (the last 30%), with the windows the agent itself cuts.
"""
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent import replay_cmd
from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.pack_scorer import PackScorer
from edge_agent.config import default_config

DEFAULT = Path(__file__).resolve().parent.parent / "models" / "default.pack"
TRAIN_FRACTION = 0.7  # models/build.py's time split


def replay_rows(path, **kw):
    out, err = io.StringIO(), io.StringIO()
    assert replay_cmd.run_replay(str(path), jsonl=True, out=out, err=err, **kw) == 0, err.getvalue()
    return [json.loads(x) for x in out.getvalue().splitlines()], err.getvalue()


def eval_part(rows, path):
    """The rows whose window lies wholly in the record's last 30% (never trained on)."""
    with np.load(path) as z:
        n, fs = len(z["DE"]), float(z["fs"])
    t_split = int(n * TRAIN_FRACTION) / fs
    return [r for r in rows if r["t_start"] >= t_split]


def test_the_default_pack_loads_and_scales_its_window_with_the_rate():
    scorer = PackScorer(str(DEFAULT), default_config())
    assert scorer.labels == ("normal", "inner_race", "outer_race", "ball")
    assert (scorer.window_length, scorer.hop, scorer.window_reference_fs) == (4096, 2048, 12000.0)


@pytest.mark.parametrize("name,label", [
    ("1797_IR_7_DE12.npz", "inner_race"), ("1797_IR_14_DE12.npz", "inner_race"), ("1797_IR_21_DE12.npz", "inner_race"),
    ("1797_OR@6_7_DE12.npz", "outer_race"), ("1797_OR@6_21_DE12.npz", "outer_race"),
])
def test_inner_and_outer_race_records_are_diagnosed(cwru_dir, name, label):
    rows, err = replay_rows(cwru_dir / name)
    assert "window 4096 hop 2048 at 12000 Hz" in err
    ev = eval_part(rows, cwru_dir / name)
    assert len(ev) >= 15
    right = sum(r["label"] == label for r in ev)
    assert right / len(ev) >= 0.98, [r["label"] for r in ev]
    assert all(r["alert"] for r in ev)


def test_the_healthy_record_raises_nothing_at_48_khz(cwru_dir):
    path = cwru_dir / "1797_normal_DE48_part1.npz"
    rows, err = replay_rows(path)
    assert "window 16384 hop 8192 at 48000 Hz" in err  # 0.34 s, as at 12 kHz
    assert len(rows) == 13
    assert not any(r["alert"] for r in rows)
    assert all(r["label"] == "normal" for r in eval_part(rows, path))


def _emulated(tmp_path, scenario, rpm, fs, seconds, seed):
    gen = SignalGenerator(SignalSpec(fs=fs, rpm=rpm, scenario=scenario, seed=seed, onset_s=0.0, ramp_s=1e-6))
    x, speeds = [], []
    for _ in range(int(seconds)):
        block, r = gen.next_block(int(fs))
        x.append(block)
        speeds.append(r)
    path = tmp_path / f"{scenario}-{rpm}.npz"
    np.savez(path, DE=np.concatenate(x), fs=fs, rpm=float(np.mean(speeds)))
    return path


@pytest.mark.parametrize("scenario,rpm,fs", [
    ("healthy", 1650.0, 25600.0), ("inner_race", 1650.0, 25600.0), ("outer_race", 1000.0, 48000.0),
    ("healthy", 2800.0, 12000.0),
])
def test_emulated_machines_at_speeds_and_rates_it_was_not_built_on(tmp_path, scenario, rpm, fs):
    """Speeds off the training grid (600-1500, 2100-3000 rpm) and a seed never used in training."""
    rows, err = replay_rows(_emulated(tmp_path, scenario, rpm, fs, 8, seed=777))
    assert len(rows) >= 20
    want = "normal" if scenario == "healthy" else scenario
    right = sum(r["label"] == want for r in rows)
    assert right / len(rows) >= 0.9, [r["label"] for r in rows]
    if scenario == "healthy":
        assert not any(r["alert"] for r in rows)
