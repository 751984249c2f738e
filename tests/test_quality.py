"""edge_agent.quality: each condition is detected on synthetic windows, none on healthy
emulator or real CWRU windows, and the per-channel counters and persistent-problem alerts
behave as documented. The compiled measurements (ext/quality.pyx) agree exactly with the
NumPy reference (edge_agent/reference_quality.py): flags and every figure, on random and
hand-made windows, and a missing build is a clear error."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.emulator.signal import SCENARIOS, SignalGenerator, SignalSpec
from edge_agent.quality import (
    CLIP_LEVEL, FLAGS, PersistentProblems, QualityCounts, QualityLimits, QualityReport, check_window, check_windows,
)
from edge_agent.reference_quality import reference_check_windows

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


# ---------------------------------------------------------------- compiled vs NumPy reference
REPORT_ARRAYS = ("nonfinite", "ptp", "repeat", "clipped", "clip_ref", "peak", "fs")


def assert_same_report(got: QualityReport, want: QualityReport, where: str = "") -> None:
    """Exactly the same: flags, and every figure with its dtype (NaN where NaN)."""
    assert got.flags == want.flags, where
    for name in REPORT_ARRAYS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, f"{where} {name}: {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{where} {name}"
        assert np.array_equal(a, b, equal_nan=True), f"{where} {name}: {a} != {b}"
    for i in range(len(want.flags)):
        assert got.describe(i) == want.describe(i), where


def check_all_forms(samples, fs, full_scale, limits: QualityLimits = QualityLimits()) -> QualityReport:
    """The compiled check on a 2-D array and on a list of rows, each agreeing with the reference."""
    want = reference_check_windows(samples, fs, full_scale, limits)
    got = check_windows(samples, fs, full_scale, limits)
    assert_same_report(got, want, "2-D")
    assert_same_report(check_windows(list(np.asarray(samples)), fs, full_scale, limits), want, "list of rows")
    return got


# Values that make ties, repeats and edge cases likely: signed zeros, a subnormal, the float32
# extremes, NaN/Inf, and values at and just below 0.999 of the full scales used below.
_LEVEL_2 = float(np.float32(CLIP_LEVEL * 2.0))
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, _LEVEL_2, -_LEVEL_2,
           float(np.nextafter(np.float32(_LEVEL_2), np.float32(0))), 1.5, -1.5, 3.4028235e38, -3.4028235e38,
           float("nan"), float("inf"), float("-inf"), 600.0, -600.0]
FULL_SCALES = [float("nan"), 0.0, -1.0, 2.0, 1.5, 1e-3, 600.0, float("inf"), 1e300, 3.4028235e38, 1e-45]


@st.composite
def batches(draw):
    """(samples, full_scale, limits): a batch of float32 windows built from a few shapes of
    trouble (noise, quantised, clipped, stuck, constant, special values, NaN/Inf)."""
    n = draw(st.integers(1, 6))
    length = draw(st.sampled_from([2, 3, 7, 64, 255, 256, 257, 1024]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        kind = draw(st.sampled_from(["noise", "quantised", "clipped", "stuck", "constant", "special", "nonfinite"]))
        scale = draw(st.sampled_from([1.0, 1e-4, 1e-38, 1e30, 300.0]))
        x = rng.normal(0.0, 1.0, length) * scale
        if kind == "quantised":
            x = np.round(x / scale * 8) / 8 * scale
        elif kind == "clipped":
            rail = draw(st.sampled_from([0.5, 1.5, 2.0, _LEVEL_2])) * scale
            x = np.clip(x * 3, -rail, rail)
        elif kind == "stuck":
            k = draw(st.integers(0, length))
            x[:k] = x[0]
        elif kind == "constant":
            x = np.full(length, draw(st.sampled_from(SPECIAL)))
        elif kind == "special":
            x = np.array(draw(st.lists(st.sampled_from(SPECIAL), min_size=length, max_size=length)))
        x = x.astype(np.float32)
        if kind == "nonfinite" or draw(st.booleans()):
            holes = draw(st.lists(st.integers(0, length - 1), max_size=4))
            x[holes] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        rows.append(x)
    full_scale = np.array(draw(st.lists(st.sampled_from(FULL_SCALES), min_size=n, max_size=n)))
    limits = QualityLimits(
        flatline_ptp_g=draw(st.sampled_from([1e-3, 0.0, 1e-40, 5.0])),
        flatline_repeat=draw(st.sampled_from([0.5, 0.0, 0.3, 1.0])),
        clip_fraction=draw(st.sampled_from([0.005, 0.0, 0.5, 1.0])),
        max_abs_g=draw(st.sampled_from([0.0, 0.0, 2.0, 1.5, 1e-3, float("inf")])),
        range_g=draw(st.sampled_from([500.0, 1.0, float("inf")])),
        expected_fs=draw(st.sampled_from([0.0, 25600.0])),
    )
    return np.stack(rows), full_scale, limits


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_compiled_check_agrees_exactly_with_the_numpy_reference(batch) -> None:
    samples, full_scale, limits = batch
    fs = np.where(np.arange(len(samples)) % 2 == 0, FS, 12000.0)
    with np.errstate(over="ignore"):  # full scales beyond float32 overflow to Inf in both
        check_all_forms(samples, fs, full_scale, limits)


@pytest.mark.parametrize("seed", range(5))
def test_agreement_on_emulator_scenarios_and_a_known_full_scale(seed: int) -> None:
    windows = np.concatenate([_emulator_windows(s, FS, 8, seed) for s in SCENARIOS])
    n = len(windows)
    for full_scale in (np.full(n, np.nan), np.full(n, 32.767), np.full(n, np.abs(windows).max() / CLIP_LEVEL)):
        for limits in (QualityLimits(), QualityLimits(max_abs_g=2.0), QualityLimits(expected_fs=FS)):
            check_all_forms(windows, np.full(n, FS), full_scale, limits)


def test_agreement_on_the_real_cwru_records(cwru_dir) -> None:
    for path in sorted(cwru_dir.glob("*.npz")):
        with np.load(path) as rec:
            x, fs = rec["DE"], float(rec["fs"])
        windows = np.lib.stride_tricks.sliding_window_view(x, N)[:: N // 2]  # float64, not contiguous
        n = len(windows)
        check_all_forms(windows, np.full(n, fs), np.full(n, np.nan), QualityLimits(expected_fs=fs))
        check_all_forms(windows, np.full(n, fs), np.full(n, np.abs(x).max()), QualityLimits())


def _figures(report: QualityReport, i: int = 0) -> tuple:
    return (int(report.nonfinite[i]), float(report.ptp[i]), float(report.repeat[i]), float(report.clipped[i]),
            float(report.clip_ref[i]), float(report.peak[i]))


def _one(x, full_scale: float = np.nan, limits: QualityLimits = QualityLimits()) -> QualityReport:
    x = np.asarray(x, dtype=np.float32)
    return check_all_forms(x[None, :], np.array([FS]), np.array([full_scale]), limits)


def test_exact_figures_of_flat_windows() -> None:
    # all zeros: every sample repeats and sits "at" the (zero) peak, but a zero reference never clips
    r = _one(np.zeros(N))
    assert _figures(r) == (0, 0.0, 1.0, (N - 1) / N, 0.0, 0.0) and r.flags == [{"flatline"}]
    # signed zeros are equal: +0, -0 alternating is as flat
    r = _one(np.where(np.arange(N) % 2 == 0, 0.0, -0.0))
    assert _figures(r) == (0, 0.0, 1.0, (N - 1) / N, 0.0, 0.0) and r.flags == [{"flatline"}]
    # a constant against its own peak is a flatline, not clipping
    c = float(np.float32(0.37))
    r = _one(np.full(N, c))
    assert _figures(r) == (0, 0.0, 1.0, (N - 1) / N, c, c) and r.flags == [{"flatline"}]
    # stuck at a known full scale: flatline and clipping, every sample at the rail
    r = _one(np.full(N, 2.0), full_scale=2.0)
    assert _figures(r) == (0, 0.0, 1.0, 1.0, 2.0, 2.0) and r.flags == [{"flatline", "clipping"}]
    # ... and at the configured range
    r = _one(np.full(N, -2.0), limits=QualityLimits(max_abs_g=2.0))
    assert _figures(r) == (0, 0.0, 1.0, 1.0, 2.0, 2.0) and r.flags == [{"flatline", "clipping"}]
    # the shortest window
    r = _one([1.0, 1.0])
    assert _figures(r) == (0, 0.0, 1.0, 0.5, 1.0, 1.0) and r.flags == [{"flatline"}]


def test_exact_figures_with_nan_and_inf() -> None:
    # NaN/Inf are measured as 0: a window of them alone is a flat zero
    r = _one(np.full(N, np.nan))
    assert _figures(r) == (N, 0.0, 1.0, (N - 1) / N, 0.0, 0.0) and r.flags == [{"nonfinite", "flatline"}]
    x = noise()
    x[[0, 10, 11, N - 1]] = [np.inf, np.nan, -np.inf, np.nan]
    clean = x.copy()
    clean[[0, 10, 11, N - 1]] = 0.0
    r, rc = _one(x), _one(clean)
    assert r.nonfinite[0] == 4 and rc.nonfinite[0] == 0
    assert _figures(r)[1:] == _figures(rc)[1:]  # the rest measured as if they were 0
    assert r.repeat[0] == 1 / (N - 1)  # the NaN after the -Inf: 0 == 0
    assert r.flags == [{"nonfinite"}]
    # Inf is not out of range nor at a known full scale: it is not measured at all
    y = noise()
    y[5] = np.inf
    assert _one(y, full_scale=2.0).flags == [{"nonfinite"}]


def test_exact_clip_counts_at_the_float32_level() -> None:
    level = np.float32(CLIP_LEVEL * 2.0)  # what a sample must reach, against a full scale of 2 g
    below = np.nextafter(level, np.float32(0))
    x = noise()
    x[:40] = level  # counted
    x[40:80] = -level  # counted (|x|)
    x[80:120] = below  # not counted
    r = _one(x, full_scale=2.0)
    assert r.clipped[0] == 80 / N and r.clip_ref[0] == 2.0 and r.flags == [{"clipping"}]
    r = _one(x, limits=QualityLimits(max_abs_g=2.0))
    assert r.clipped[0] == 80 / N and r.flags == [{"clipping"}]
    # against its own peak (= level): the flat tops at the peak level, repeats only
    r = _one(x)
    own = np.float32(CLIP_LEVEL * float(level))
    assert own < below  # the runs at `below` are flat tops too
    assert r.clipped[0] == (39 + 39 + 39) / N and r.clip_ref[0] == float(level) and r.flags == [{"clipping"}]
    # a peak reached once, never repeated: no flat top
    y = noise()
    y[100] = 3.0
    assert _figures(_one(y))[3] == 0.0


def test_own_peak_level_is_rounded_to_float32_as_the_reference() -> None:
    # Per window: its peak p once, then pairs just below, at and just above the level
    # float32(0.999 * p) (computed in double, then rounded): the flat tops are the two last.
    peaks = np.random.default_rng(11).uniform(0.01, 100.0, 4096).astype(np.float32)
    level = (CLIP_LEVEL * peaks.astype(np.float64)).astype(np.float32)
    down, up = np.nextafter(level, np.float32(0)), np.nextafter(level, np.float32(np.inf))
    x = np.zeros((len(peaks), 16), np.float32)
    x[:, 0] = peaks
    x[:, 2:4], x[:, 5:7], x[:, 8:10] = down[:, None], level[:, None], up[:, None]
    x[:, 11:] = np.arange(1, 6, dtype=np.float32) * 1e-3  # no more repeats
    r = check_all_forms(x, np.full(len(x), FS), np.full(len(x), np.nan))
    assert np.all(r.clipped == 2 / 16)


def test_sequence_of_windows_is_read_as_the_stacked_array() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.0, 0.5, (6, 2 * N))
    rows = [
        base[0, :N].astype(np.float32),  # C-contiguous float32: read in place
        base[1].astype(np.float32)[::2],  # a strided view
        base[2, :N],  # float64: converted to float32
        np.clip(base[3, :N], -0.4, 0.4).astype(np.float32).tolist(),  # a plain list
        np.full(N, 0.25, np.float32),
        base[5, :N].astype(">f4"),  # big-endian
    ]
    fs, full_scale = np.full(6, FS), np.array([np.nan, 1.0, np.nan, np.nan, 0.25, np.nan])
    want = reference_check_windows(np.array(rows, dtype=np.float32), fs, full_scale)
    assert_same_report(check_windows(rows, fs, full_scale), want)
    assert_same_report(check_windows(tuple(rows), fs, full_scale), want)


@pytest.mark.parametrize("rows, match", [
    ([], "no windows"),
    ([np.zeros(N, np.float32), np.zeros(N - 1, np.float32)], "window 1 has 4095 samples"),
    ([np.zeros((2, N), np.float32)], "2 dimensions"),
    ([np.zeros(1, np.float32)], "2 to"),
])
def test_bad_sequences_are_refused(rows, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_windows(rows, np.full(len(rows), FS), np.full(len(rows), np.nan))


def test_an_empty_2d_batch_gives_an_empty_report() -> None:
    x = np.zeros((0, N), np.float32)
    r = check_windows(x, np.zeros(0), np.zeros(0))
    assert_same_report(r, reference_check_windows(x, np.zeros(0), np.zeros(0)))
    assert r.flags == []


def test_missing_build_is_a_clear_error() -> None:
    # A fresh interpreter where the compiled module cannot be imported (a checkout that was
    # never built): importing the quality checks must say how to build, not fall back.
    code = (
        "import sys; sys.modules['edge_agent._native.quality'] = None\n"
        "from edge_agent.native import NativeExtensionMissing\n"
        "try:\n"
        "    import edge_agent.quality\n"
        "except NativeExtensionMissing as e:\n"
        "    print('MISSING:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MISSING: the compiled extension edge_agent._native.quality is not built")
    assert "make install" in out
