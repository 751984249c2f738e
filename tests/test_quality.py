"""edge_agent.quality: each condition is detected on synthetic windows, none on healthy
emulator or real CWRU windows, and the per-channel counters and persistent-problem alerts
behave as documented."""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent.emulator.signal import SCENARIOS, SignalGenerator, SignalSpec
from edge_agent.quality import (
    FLAGS, PersistentProblems, QualityCounts, QualityLimits, check_window, check_windows,
)

FS = 25600.0
N = 4096


def noise(seed: int = 0, sigma: float = 0.1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, N).astype(np.float32)


def test_a_healthy_window_has_no_flags() -> None:
    assert check_window(noise(), FS) == frozenset()


def test_nonfinite_samples() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = noise()
        x[100] = bad
        assert check_window(x, FS) == {"nonfinite"}
    x = noise()
    x[[1, 5, 9]] = np.nan
    report = check_windows(x[None, :], np.array([FS]), np.array([np.nan]))
    assert report.nonfinite.tolist() == [3]
    assert report.describe(0) == "3 NaN/Inf samples"


def test_flatline_constant_and_tiny_peak_to_peak() -> None:
    assert check_window(np.full(N, 0.37, np.float32), FS) == {"flatline"}
    tiny = (noise() * 1e-3).astype(np.float32)  # peak-to-peak ~ 7e-4 g < 1e-3 g
    assert np.ptp(tiny) < 1e-3
    assert check_window(tiny, FS) == {"flatline"}
    assert check_window(tiny, FS, limits=QualityLimits(flatline_ptp_g=1e-4)) == frozenset()


def test_flatline_when_most_samples_repeat() -> None:
    # a sensor whose output is stuck for 60% of the window, live for the rest
    x = noise()
    x[: int(0.6 * N)] = x[0]
    report = check_windows(x[None, :], np.array([FS]), np.array([np.nan]))
    assert report.flags == [frozenset({"flatline"})]
    assert report.repeat[0] == pytest.approx(0.6, abs=1e-3)
    # stuck for 40%: below the default "most of the window" (0.5), flagged at 0.3
    x = noise()
    x[: int(0.4 * N)] = x[0]
    assert check_window(x, FS) == frozenset()
    assert check_window(x, FS, limits=QualityLimits(flatline_repeat=0.3)) == {"flatline"}


def test_clipping_against_the_frames_full_scale() -> None:
    full_scale = 32767 * 0.001  # an int16 frame with scale 0.001 g
    # driven beyond its range (sigma 15 g): ~3% of the counts saturate at +-32767
    raw = np.clip(np.round(noise(sigma=15.0) / 0.001), -32767, 32767)
    x = (raw * 0.001).astype(np.float32)
    report = check_windows(x[None, :], np.array([FS]), np.array([full_scale]))
    assert report.flags == [frozenset({"clipping"})]
    assert report.clipped[0] > 0.005
    # the same signal well inside the range
    x = (noise(sigma=2.0)).astype(np.float32)
    assert check_window(x, FS, full_scale=full_scale) == frozenset()


def test_clipping_against_the_configured_range() -> None:
    x = np.clip(noise(sigma=1.0) * 4, -2.0, 2.0).astype(np.float32)
    assert check_window(x, FS, limits=QualityLimits(max_abs_g=2.0)) == {"clipping"}
    assert check_window(noise(sigma=1.0), FS, limits=QualityLimits(max_abs_g=50.0)) == frozenset()


def test_clipping_as_flat_tops_when_the_range_is_unknown() -> None:
    x = np.clip(noise(sigma=1.0), -1.5, 1.5).astype(np.float32)  # ~13% of samples on the rails
    report = check_windows(x[None, :], np.array([FS]), np.array([np.nan]))
    assert report.flags == [frozenset({"clipping"})]
    assert report.clip_ref[0] == pytest.approx(1.5)
    assert "at +-1.5 g" in report.describe(0)
    # a pure, finely sampled sine passes within 0.1% of its peak often, but never repeats
    sine = np.sin(2 * np.pi * 50.0 * np.arange(N) / FS).astype(np.float32)
    assert check_window(sine, FS) == frozenset()


def test_out_of_range() -> None:
    x = noise()
    x[7] = 600.0
    assert check_window(x, FS) == {"out_of_range"}
    assert check_window(x, FS, limits=QualityLimits(range_g=1000.0)) == frozenset()
    # beyond the frame's own full scale: impossible for that sensor (scaling error)
    x = noise()
    x[7] = 40.0
    assert check_window(x, FS, full_scale=32.767) == {"out_of_range"}


def test_rate_mismatch_only_when_a_rate_is_expected() -> None:
    x = noise()
    assert check_window(x, 12000.0) == frozenset()
    limits = QualityLimits(expected_fs=FS)
    assert check_window(x, 12000.0, limits=limits) == {"rate_mismatch"}
    assert check_window(x, FS * 1.005, limits=limits) == frozenset()  # within 1%
    assert check_window(x, FS * 1.02, limits=limits) == {"rate_mismatch"}


def test_several_flags_at_once_and_a_batch_keeps_its_order() -> None:
    bad = np.full(N, 0.0, np.float32)
    bad[0] = np.nan
    batch = np.stack([noise(1), bad, np.full(N, 0.2, np.float32), noise(2)])
    report = check_windows(batch, np.array([FS, 12000.0, FS, FS]), np.full(4, np.nan), QualityLimits(expected_fs=FS))
    assert report.flags == [frozenset(), {"nonfinite", "flatline", "rate_mismatch"}, {"flatline"}, frozenset()]
    assert set().union(*report.flags) <= set(FLAGS)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        check_windows(np.zeros(10), np.array([FS]), np.array([np.nan]))


def _emulator_windows(scenario: str, fs: float, n_windows: int, seed: int) -> np.ndarray:
    gen = SignalGenerator(SignalSpec(fs=fs, scenario=scenario, seed=seed), 0)
    return np.concatenate([gen.next_block(N)[0] for _ in range(n_windows)]).reshape(n_windows, N)


@pytest.mark.parametrize("scenario", ["healthy", "inner_race", "outer_race", "ball", "disconnect"])
@pytest.mark.parametrize("fs", [12000.0, 25600.0, 48000.0])
def test_no_false_positive_on_200_emulator_windows(scenario: str, fs: float) -> None:
    windows = _emulator_windows(scenario, fs, 200, seed=7)
    report = check_windows(windows, np.full(200, fs), np.full(200, np.nan), QualityLimits(expected_fs=fs))
    assert [f for f in report.flags if f] == []


@pytest.mark.parametrize("scenario, flag", [("flatline", "flatline"), ("clipping", "clipping")])
def test_emulator_sensor_faults_are_flagged_after_onset(scenario: str, flag: str) -> None:
    assert scenario in SCENARIOS
    windows = _emulator_windows(scenario, FS, 60, seed=3)  # onset at 5 s = sample 128000
    report = check_windows(windows, np.full(60, FS), np.full(60, np.nan))
    onset_window = 128000 // N  # window 31 holds the onset
    assert all(not f for f in report.flags[:onset_window])
    assert all(f == {flag} for f in report.flags[onset_window + 1:])


def test_no_false_positive_on_the_real_cwru_records(cwru_dir) -> None:
    files = sorted(cwru_dir.glob("*.npz"))
    assert len(files) >= 10
    total = 0
    for path in files:
        with np.load(path) as rec:
            x, fs = rec["DE"], float(rec["fs"])
        windows = np.lib.stride_tricks.sliding_window_view(x, N)[:: N // 2]  # as the agent cuts them
        n = len(windows)
        report = check_windows(windows, np.full(n, fs), np.full(n, np.nan), QualityLimits(expected_fs=fs))
        assert [f for f in report.flags if f] == [], path.name
        total += n
    assert total > 550


def test_counts_per_channel() -> None:
    counts = QualityCounts()
    counts.record("a", frozenset(), scored=True)
    counts.record("a", frozenset({"flatline"}), scored=True)
    counts.record("a", frozenset({"flatline", "nonfinite"}), scored=False)
    counts.record("b", frozenset({"clipping"}), scored=False)
    assert counts.as_dict() == {
        "windows_checked": {"a": 3, "b": 1},
        "windows_flagged": {"a": 2, "b": 1},
        "windows_unscored": {"a": 1, "b": 1},
        "flags": {"a": {"flatline": 2, "nonfinite": 1}, "b": {"clipping": 1}},
    }


def test_persistent_problem_raises_once_and_clears() -> None:
    p = PersistentProblems(alert_after=3, clear_after=2, model_version="m1")
    flat = frozenset({"flatline"})
    assert p.update("a", flat, 0, 1500.0) == []
    assert p.update("a", flat, 1, 1500.0) == []
    assert p.update("a", frozenset(), 2, 1500.0) == []  # a sound window breaks the run
    assert p.update("a", flat, 3, 1500.0) == []
    assert p.update("a", flat, 4, 1500.0) == []
    assert p.update("b", flat, 4, 1500.0) == []  # channels are independent
    (alert,) = p.update("a", flat, 5, 1500.0, "peak-to-peak 0 g")
    assert alert["type"] == "data_quality" and alert["state"] == "open" and alert["label"] == "flatline"
    assert alert["channel"] == "a" and alert["flags"] == ["flatline"] and alert["window_t_start_us"] == 5
    assert "3 windows in a row" in alert["explanation"] and "peak-to-peak 0 g" in alert["explanation"]
    assert p.update("a", flat, 6, 1500.0) == []  # one open alert per channel
    assert len(p.open_alerts()) == 1
    assert p.update("a", frozenset(), 7, 1500.0) == []
    (cleared,) = p.update("a", frozenset(), 8, 1500.0)
    assert cleared["state"] == "cleared" and cleared["id"] == alert["id"]
    assert p.open_alerts() == []
