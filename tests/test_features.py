"""Acceptance of issue #4: the feature vector of docs/FEATURES.md.

Three kinds of check:

* the reference (edge_agent/reference_features.py) against the physics the spec promises:
  Parseval, velocity RMS of a known sine, spectral kurtosis finding a resonance, the
  envelope spectrum peaking at an impulse train's order;
* the compiled :class:`FeatureExtractor` against the reference, within 1e-4 relative or
  1e-6 absolute on EVERY feature, and the same envelope band, on synthetic windows at three
  rates and on real windows of every CWRU recording;
* the features on real and emulated faults: the fault's own defect order wins on real CWRU
  inner- and outer-race records, and follows the shaft speed given with each window.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_agent import features as features_mod
from edge_agent.bearing import BearingGeometry
from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.features import TIME_FEATURES, FeatureExtractor, FeatureSpec, feature_names
from edge_agent.reference_features import (
    G0,
    envelope_spectrum,
    reference_envelope_band,
    reference_feature_names,
    reference_features,
    spectral_kurtosis,
)
from edge_agent.window import Window

RTOL, ATOL = 1e-4, 1e-6  # docs/FEATURES.md: the agreement every feature must meet
SPEC = FeatureSpec.default()  # SKF 6205 (the CWRU drive-end bearing), automatic envelope band
# Every parameter of [features] away from its default, another bearing, a configured band.
CONFIGURED = FeatureSpec(
    orders=BearingGeometry(n_balls=13, ball_diameter=0.25, pitch_diameter=1.8, contact_angle_deg=15.0).orders(),
    band_edges_hz=(0.0, 250.0, 2500.0, 6000.0, 30000.0),
    envelope_band_hz=(1000.0, 4000.0),
    order_tolerance=0.03,
    noise_floor_bins=12,
)
SPECS = {"auto-band": SPEC, "configured": CONFIGURED}
# Real recordings: their own bearing (SKF 6205), with the automatic or a configured band.
CWRU_SPECS = {"auto-band": SPEC, "configured-band": FeatureSpec(orders=SPEC.orders, envelope_band_hz=(2000.0, 5000.0))}
SHAPES = [(4096, 12000.0), (16384, 48000.0), (8192, 25600.0)]
# The contents of ../shared/data/cwru/index.csv (checked by test_cwru_index_is_as_expected).
CWRU_FILES = (
    "1797_B_14_DE12.npz", "1797_B_21_DE12.npz", "1797_B_7_DE12.npz",
    "1797_IR_14_DE12.npz", "1797_IR_21_DE12.npz", "1797_IR_7_DE12.npz",
    "1797_OR@6_14_DE12.npz", "1797_OR@6_21_DE12.npz", "1797_OR@6_7_DE12.npz",
    "1797_normal_DE48_part1.npz",
)
# The order check compares one feature per defect family: the family's fundamental defect
# rate (k=1), and for the ball 2 x BSF, its impulse rate (it strikes both races).
CONTENDERS = {"bpfo": "env_bpfo_1", "bpfi": "env_bpfi_1", "ball": "env_bsf_2", "ftf": "env_ftf_1"}


# ----------------------------------------------------------------------------- helpers
def window(x: np.ndarray, fs: float, rpm: float) -> Window:
    samples = np.ascontiguousarray(x, dtype=np.float32)
    return Window("ch0", samples, fs, rpm, 0, 0, len(samples) - 1)


def as_dict(spec: FeatureSpec, vector: np.ndarray) -> dict[str, float]:
    return dict(zip(feature_names(spec), (float(v) for v in vector)))


def assert_agree(got: np.ndarray, want: np.ndarray, names: tuple[str, ...], where: str) -> None:
    """Every feature within RTOL or ATOL; on failure, list each feature that is not."""
    assert got.shape == want.shape == (len(names),), (got.shape, want.shape, len(names))
    err = np.abs(got - want)
    ok = (err <= ATOL) | (err <= RTOL * np.abs(want))
    bad = [f"  {names[i]}: compiled {got[i]!r}, reference {want[i]!r}" for i in np.flatnonzero(~ok)]
    assert not bad, f"{where}: {len(bad)} feature(s) disagree:\n" + "\n".join(bad)


def check_compiled_against_reference(windows: list[Window], spec: FeatureSpec, where: str) -> None:
    """One batched compiled call against the reference, window by window: features and band."""
    extractor = FeatureExtractor(spec)
    got = extractor.extract(windows)
    assert got.shape == (len(windows), len(extractor.names))
    for i, w in enumerate(windows):
        here = f"{where}, window {i} ({len(w.samples)} @ {w.fs:g} Hz, {w.rpm:g} rpm)"
        assert_agree(got[i], reference_features(w.samples, w.fs, w.rpm, spec), extractor.names, here)
        # The same band: another choice of centre differs by a whole SK bin (fs/L > 70 Hz).
        np.testing.assert_allclose(
            extractor.last_bands[i], reference_envelope_band(w.samples, w.fs, w.rpm, spec),
            rtol=0, atol=1e-6, err_msg=f"{here}: envelope band",
        )


def ringing(fs: float, n: int, hit_times_s: np.ndarray, resonance_hz: float, rng: np.random.Generator,
            noise_g: float = 0.05, impulse_g: float = 1.0, decay_s: float = 0.0005) -> np.ndarray:
    """Impulses at ``hit_times_s`` each ringing a resonance (decaying sine), in Gaussian noise."""
    t = np.arange(n) / fs
    x = rng.normal(0.0, noise_g, n)
    for t0 in hit_times_s:
        after = t >= t0
        dt = t[after] - t0
        x[after] += impulse_g * np.exp(-dt / decay_s) * np.sin(2 * np.pi * resonance_hz * dt)
    return x


def synthetic_windows(n: int, fs: float, rpm: float) -> list[Window]:
    """Gaussian, impulsive (Student t, 3 dof), with an offset, and a tone in noise; 3 seeds."""
    t = np.arange(n) / fs
    out = []
    for seed in range(3):
        rng = np.random.default_rng([seed, n])
        out += [
            window(rng.normal(0.0, 0.5, n), fs, rpm),
            window(0.2 * rng.standard_t(3, n), fs, rpm),
            window(2.5 + rng.normal(0.0, 0.3, n), fs, rpm),
            window(0.8 * np.sin(2 * np.pi * 1234.5 * t + seed) + rng.normal(0.0, 0.05, n), fs, rpm),
        ]
    return out


def cwru_windows(cwru_dir: Path, name: str, count: int | None = None) -> list[Window]:
    """Non-overlapping windows of one recording (4096 at 12 kHz, 16384 at 48 kHz) with its
    real shaft speed; ``count`` of them spread over the record, or all of them."""
    row = cwru_index(cwru_dir)[name]
    fs, rpm = float(row["fs"]), float(row["rpm"])
    n = 4096 if fs == 12000.0 else 16384
    data = np.load(cwru_dir / name)
    x = data["DE"]
    assert x.dtype == np.float32 and float(data["fs"]) == fs
    starts = np.arange(len(x) // n) * n
    if count is not None:
        starts = starts[np.linspace(0, len(starts) - 1, count).round().astype(int)]
    return [window(x[s : s + n], fs, rpm) for s in starts]


def cwru_index(cwru_dir: Path) -> dict[str, dict[str, str]]:
    with open(cwru_dir / "index.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def winners(spec: FeatureSpec, vectors: np.ndarray) -> list[str]:
    """Per window, the family whose contender (see CONTENDERS) has the largest SNR."""
    names = feature_names(spec)
    cols = [names.index(c) for c in CONTENDERS.values()]
    fams = list(CONTENDERS)
    return [fams[int(np.argmax(row[cols]))] for row in vectors]


# ----------------------------------------------------------------------------- the reference vs the spec
def test_names_follow_the_spec_order():
    for spec in SPECS.values():
        assert feature_names(spec) == reference_feature_names(spec)
    assert len(feature_names(SPEC)) == 10 + 5 + 2 + 18
    assert feature_names(CONFIGURED)[10:14] == ("band_rms_0_250", "band_rms_250_2500", "band_rms_2500_6000",
                                                "band_rms_6000_30000")


@pytest.mark.parametrize(("n", "fs"), SHAPES)
def test_reference_parseval(n, fs):
    """Bands tiling 0 .. Nyquist hold all the power: sum of band_rms^2 = mean(x^2); a band
    wholly above Nyquist holds none."""
    rng = np.random.default_rng(7)
    t = np.arange(n) / fs
    x = (0.7 + 0.3 * rng.standard_t(4, n) + 0.5 * np.sin(2 * np.pi * 777.7 * t)).astype(np.float32)
    spec = FeatureSpec(orders=SPEC.orders, band_edges_hz=(0.0, 1000.0, fs / 4, fs / 2 + 1.0, fs))
    v = as_dict(spec, reference_features(x, fs, 1500.0, spec))
    bands = [v[name] for name in feature_names(spec) if name.startswith("band_rms_")]
    x64 = x.astype(np.float64)
    assert sum(b**2 for b in bands[:3]) == pytest.approx(np.mean(x64**2), rel=1e-12)
    assert bands[3] == 0.0


@pytest.mark.parametrize(("n", "fs", "rpm"), [(4096, 12000.0, 1797.0), (256, 48000.0, 1500.0), (8192, 25600.0, 1200.0)])
def test_reference_sk_and_envelope_are_the_spec_formulas(n, fs, rpm):
    """scipy.signal.stft as configured in the reference gives the spec's SK_j (explicit loop
    over the M = N // L segments m L .. m L + L, periodic Hann, L from the BPFI period), and
    hilbert of the band-passed signal taken at every N/M-th sample gives the spec's
    baseband envelope e_m = (M/N) |ifft(Z)_m|, Z_j = 2 X_{k0+j} (the shift to baseband
    changes only the phase)."""
    x = np.random.default_rng(5).standard_t(3, n)
    bpfi_hz = SPEC.orders.bpfi * rpm / 60
    length = 2 ** int(np.floor(np.log2(fs / (2 * bpfi_hz))))
    length = min(max(length, 16), n // 4)
    h = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
    segments = [x[m * length : m * length + length] for m in range(n // length)]
    S = np.array([np.fft.rfft(h * seg) for seg in segments])
    sk = np.mean(np.abs(S) ** 4, axis=0) / np.mean(np.abs(S) ** 2, axis=0) ** 2 - 2
    f_j, sk_ref = spectral_kurtosis(x, fs, bpfi_hz)
    np.testing.assert_allclose(f_j, np.arange(length // 2 + 1) * fs / length, rtol=1e-15)
    np.testing.assert_allclose(sk_ref, sk, rtol=1e-9, atol=1e-12)

    lo, hi = fs / 10, fs / 3
    X = np.fft.rfft(x)
    k = np.arange(n // 2 + 1)
    band = np.flatnonzero((k >= 1) & (k < n // 2) & (k * fs / n >= lo) & (k * fs / n < hi))
    targets = [SPEC.orders.bpfi * rpm / 60]
    m = min(2 ** int(np.ceil(np.log2(2 * max(len(band), np.ceil(targets[0] * 1.02 / (fs / n)) + 21)))), n)
    Z = np.zeros(m, complex)
    Z[: len(band)] = 2 * X[band]
    e = (m / n) * np.abs(np.fft.ifft(Z))
    E = 2 / m * np.abs(np.fft.rfft(e - e.mean()))
    np.testing.assert_allclose(envelope_spectrum(x, fs, (lo, hi), targets, SPEC), E, rtol=1e-9, atol=1e-12 * E.max())


@pytest.mark.parametrize(("amplitude_g", "bin_k", "n", "fs"), [
    (1.0, 34, 4096, 12000.0),  # 99.6 Hz
    (0.25, 171, 4096, 12000.0),  # 501 Hz
    (2.0, 320, 8192, 25600.0),  # 1000 Hz: the band's upper edge is included
    (0.5, 60, 16384, 48000.0),  # 175.8 Hz
])
def test_reference_velocity_rms_of_a_sine(amplitude_g, bin_k, n, fs):
    """A g at f Hz (on a bin, so no leakage) has velocity amplitude A g0 / (2 pi f) m/s:
    RMS = 1000 A g0 / (2 pi f) / sqrt(2) mm/s. The centroid is f."""
    f = bin_k * fs / n
    x = amplitude_g * np.sin(2 * np.pi * f * np.arange(n) / fs)
    v = as_dict(SPEC, reference_features(x, fs, 1800.0, SPEC))
    assert v["velocity_rms_mm_s"] == pytest.approx(1000 * amplitude_g * G0 / (2 * np.pi * f) / np.sqrt(2), rel=1e-9)
    assert v["spectral_centroid_hz"] == pytest.approx(f, rel=1e-9)


def test_reference_velocity_ignores_power_outside_10_to_1000_hz():
    n, fs = 4096, 12000.0
    t = np.arange(n) / fs
    for f in (342 * fs / n, 4 * fs / n):  # 1001.95 Hz and 11.72 Hz: just out, just in
        v = as_dict(SPEC, reference_features(np.sin(2 * np.pi * f * t), fs, 1800.0, SPEC))
        inside = 10.0 <= f <= 1000.0
        assert (v["velocity_rms_mm_s"] > 1.0) == inside, (f, v["velocity_rms_mm_s"])
        if not inside:
            assert v["velocity_rms_mm_s"] < 1e-9


@pytest.mark.parametrize(("n", "fs", "resonance_hz"), [
    (4096, 12000.0, 3500.0),
    (4096, 12000.0, 1500.0),
    (16384, 48000.0, 9000.0),
    (8192, 25600.0, 5000.0),
])
def test_reference_spectral_kurtosis_finds_the_resonance(n, fs, resonance_hz):
    """Ten random times, each an impulse ringing one resonance (0.5 ms decay), in white
    noise (0.1 g RMS, above the ringing's ~0.06 g over the window): on each of 5 seeds the
    automatic band contains the resonance. (At 0.3 g noise the resonance's SK is no larger
    than the noise bins' and the band lands anywhere: the check is of the reference, not of
    the method's detection limit.)"""
    for seed in range(5):
        rng = np.random.default_rng([seed, int(resonance_hz)])
        hits = np.sort(rng.uniform(0, n / fs, 10))
        x = ringing(fs, n, hits, resonance_hz, rng, noise_g=0.1, impulse_g=1.0)
        lo, hi = reference_envelope_band(x, fs, 1797.0, SPEC)
        assert lo <= resonance_hz < hi, (seed, lo, hi)


ORDER_OF = {"bpfo": lambda o: o.bpfo, "bpfi": lambda o: o.bpfi, "ball": lambda o: 2 * o.bsf}


def periodic_train(family: str, n: int, fs: float, rpm: float, seed: int, noise_g: float) -> np.ndarray:
    """Impulses at the family's defect rate ringing a 3000 Hz resonance, in white noise."""
    rate_hz = ORDER_OF[family](SPEC.orders) * rpm / 60
    rng = np.random.default_rng(seed)
    return ringing(fs, n, np.arange(0.0, n / fs, 1 / rate_hz) + 0.001, 3000.0, rng, noise_g=noise_g)


@pytest.mark.parametrize("family", list(ORDER_OF))
@pytest.mark.parametrize(("n", "fs", "rpm"), [(4096, 12000.0, 1797.0), (16384, 48000.0, 1200.0)])
def test_reference_envelope_peaks_at_the_impulse_order(family, n, fs, rpm):
    """A periodic train of ringing impulses at a defect order (0.2 g noise, band configured
    around the resonance so that this checks the envelope and order steps alone): on each of
    5 seeds the family's contender has the largest SNR of the four, > 5 and more than twice
    the next (measured: 9.5 .. 44 against <= 3.1, smallest ratio 3.5)."""
    spec = FeatureSpec(orders=SPEC.orders, envelope_band_hz=(2000.0, 4000.0))
    for seed in range(5):
        v = as_dict(spec, reference_features(periodic_train(family, n, fs, rpm, seed, 0.2), fs, rpm, spec))
        scores = {fam: v[name] for fam, name in CONTENDERS.items()}
        others = max(score for fam, score in scores.items() if fam != family)
        assert scores[family] > max(5.0, 2 * others), (seed, scores)


def test_reference_spectral_kurtosis_finds_the_resonance_of_a_periodic_train():
    """The automatic band holds the 3 kHz resonance that a BPFI impulse train in noise rings:
    SK segments are at most half the defect period (docs/FEATURES.md), so each holds at most
    one impulse. (With the first spec's 10.7 ms segments, longer than the 6.2 ms BPFI period,
    0 of 10 seeds found it.)"""
    n, fs, rpm = 4096, 12000.0, 1797.0
    inside = 0
    for seed in range(5):
        lo, hi = reference_envelope_band(periodic_train("bpfi", n, fs, rpm, seed, 0.1), fs, rpm, SPEC)
        inside += lo <= 3000.0 < hi
    assert inside >= 4, f"resonance inside the automatic band on {inside}/5 seeds"


# ----------------------------------------------------------------------------- compiled vs reference
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("rpm", [1200.0, 1797.0])
@pytest.mark.parametrize(("n", "fs"), SHAPES, ids=[f"{n}@{fs:g}" for n, fs in SHAPES])
def test_compiled_agrees_on_synthetic_windows(n, fs, rpm, spec_name):
    check_compiled_against_reference(synthetic_windows(n, fs, rpm), SPECS[spec_name], f"{spec_name}")


def test_compiled_agrees_on_a_mixed_batch():
    """Windows of different lengths, rates and speeds in one call, in interleaved order."""
    batch = []
    for i in range(4):
        for n, fs in SHAPES:
            batch.append(synthetic_windows(n, fs, 900.0 + 300.0 * i)[i])
    check_compiled_against_reference(batch, SPEC, "mixed batch")


@pytest.mark.parametrize("value", [0.0, 2.0])
def test_compiled_agrees_on_a_constant_window(value):
    """The spec's zero-denominator rule: finite everywhere, and the same as the reference.
    (The band is not compared: the SK of a constant window is rounding noise.)"""
    x = np.full(4096, value, dtype=np.float32)
    got = FeatureExtractor(SPEC).extract([window(x, 12000.0, 1797.0)])[0]
    assert np.all(np.isfinite(got))
    assert_agree(got, reference_features(x, 12000.0, 1797.0, SPEC), feature_names(SPEC), f"constant {value}")


def test_compiled_agrees_when_a_target_is_exactly_half_way_between_bins():
    """round(f/df) rounds half to even in both (docs/FEATURES.md): a tie picks the same bin."""
    fs, n = 12000.0, 4096
    rpm = 10.5 * fs / n * 60  # shaft rate 30.76171875 Hz = 10.5 bins, exact in binary
    x = np.random.default_rng(3).normal(size=n).astype(np.float32)
    check_compiled_against_reference([window(x, fs, rpm)], SPEC, "half-bin target")


def test_cwru_index_is_as_expected(cwru_dir):
    index = cwru_index(cwru_dir)
    assert sorted(index) == sorted(CWRU_FILES)
    assert {row["rpm"] for row in index.values()} == {"1797"}


@pytest.mark.parametrize("spec_name", list(CWRU_SPECS))
@pytest.mark.parametrize("name", CWRU_FILES)
def test_compiled_agrees_on_cwru_windows(cwru_dir, name, spec_name):
    """Six windows spread over every record (7 in all at 48 kHz), at the real shaft speed."""
    windows = cwru_windows(cwru_dir, name, count=6)
    check_compiled_against_reference(windows, CWRU_SPECS[spec_name], f"{name} {spec_name}")


# ----------------------------------------------------------------------------- real faults: the order check
# On every non-overlapping 4096-sample window (29 per record) with the real shaft speed
# (1797 rpm) and the SKF 6205 geometry (FeatureSpec.default(), automatic band), the fault's
# family must have the largest contender of the four: env_bpfi_1 for inner-race records,
# env_bpfo_1 for outer-race ones, against env_bpfo_1/env_bpfi_1/env_bsf_2/env_ftf_1.
# Measured (compiled = reference to 1e-11): IR 7/14/21: 29/29 each; OR@6 7: 29/29;
# OR@6 21: 27/29 (93%; the 2 others go to env_bsf_2). Required: the measured minimum over the
# diagnosable records less one window, 26/29 (89.7%). OR@6 14 measures 2/29 (7%; BPFI wins
# 17): the shared README, after Smith & Randall (MSSP 2015), says the 14 mil outer-race
# records are not diagnosable by any known technique, so it is an expected failure (strict:
# a pass would need looking at). (Figures with SK segments of at most half the BPFI period;
# the first spec's 128-sample segments gave OR@6 21 25/29 and OR@6 14 6/29.)
MIN_WIN_FRACTION = 26 / 29
DIAGNOSABLE = [
    ("1797_IR_7_DE12.npz", "bpfi"), ("1797_IR_14_DE12.npz", "bpfi"), ("1797_IR_21_DE12.npz", "bpfi"),
    ("1797_OR@6_7_DE12.npz", "bpfo"), ("1797_OR@6_21_DE12.npz", "bpfo"),
]
ORDER_CASES = [
    *DIAGNOSABLE,
    pytest.param("1797_OR@6_14_DE12.npz", "bpfo", marks=pytest.mark.xfail(strict=True, reason=(
        "14 mil outer-race records are not diagnosable by any known technique (Smith & Randall 2015, "
        "shared README); measured: BPFO wins 2/29 windows (7%)"))),
]


@pytest.mark.parametrize(("name", "fault"), ORDER_CASES)
def test_cwru_fault_order_wins(cwru_dir, name, fault):
    windows = cwru_windows(cwru_dir, name)
    assert len(windows) == 29
    won = Counter(winners(SPEC, FeatureExtractor(SPEC).extract(windows)))
    fraction = won[fault] / len(windows)
    assert fraction >= MIN_WIN_FRACTION, f"{name}: {fault} wins {won[fault]}/{len(windows)}; all: {dict(won)}"


@pytest.mark.parametrize("name", ["1797_B_7_DE12.npz", "1797_B_14_DE12.npz", "1797_B_21_DE12.npz",
                                  "1797_normal_DE48_part1.npz"])
def test_cwru_ball_and_healthy_records_give_sound_vectors(cwru_dir, name):
    """No textbook signature is expected here (Smith & Randall: no ball record shows one).
    What must hold: finite vectors, SNRs >= 0, and bands inside the spec's candidate range.
    Measured winners with the reference (bpfo/bpfi/ball/ftf, of 29; healthy: of 7): B_7
    8/4/12/5, B_14 1/1/7/20, B_21 4/9/12/4, healthy 3/1/2/1."""
    windows = cwru_windows(cwru_dir, name)
    extractor = FeatureExtractor(SPEC)
    vectors = extractor.extract(windows)
    assert np.all(np.isfinite(vectors))
    env = [i for i, nm in enumerate(extractor.names) if nm.startswith("env_")]
    assert np.all(vectors[:, env] >= 0)
    fs = windows[0].fs
    assert np.all(extractor.last_bands[:, 0] >= fs / 64 - 1e-9)
    assert np.all(extractor.last_bands[:, 1] <= 0.95 * fs / 2 + 1e-9)


def test_cwru_healthy_windows_stay_below_diagnosable_faults(cwru_dir):
    """On every healthy window the inner- and outer-race SNRs are below the median SNR of
    the fault's own order on every diagnosable record (measured: healthy max 2.1 (BPFI),
    1.8 (BPFO); fault medians 6.2 .. 10.8 (BPFI), 5.7 .. 10.1 (BPFO))."""
    extractor = FeatureExtractor(SPEC)
    ix = {fam: extractor.names.index(CONTENDERS[fam]) for fam in ("bpfi", "bpfo")}
    healthy = extractor.extract(cwru_windows(cwru_dir, "1797_normal_DE48_part1.npz"))
    for name, fault in DIAGNOSABLE:
        faulty = extractor.extract(cwru_windows(cwru_dir, name))
        median = np.median(faulty[:, ix[fault]])
        assert healthy[:, ix[fault]].max() < median, (name, healthy[:, ix[fault]].max(), median)


# ----------------------------------------------------------------------------- speed follows rpm
# The emulator's inner-race fault (SignalGenerator: impulses at BPFI, 1% slip, shaft-rate
# modulation, resonance 3200 Hz, speed wandering ~5% over tens of seconds), 40 consecutive
# windows of 4096 samples, each with the block's own mean rpm. Given that rpm, BPFI must win
# on >= 90% of the windows at both speeds (reference: 40/40 in all four cases). Given the
# other speed's rpm instead, the features must stop pointing at BPFI: BPFI no longer wins a
# majority (reference: 2, 8, 0 and 15 of 40) and the median env_bpfi_1 falls by more than 3x
# (reference: 8.9 -> 1.2, 7.7 -> 1.4, 8.4 -> 0.95, 16.3 -> 1.1).
# Cases: 12 kHz and 25.6 kHz (the emulator's rate) with the automatic band, and 25.6 kHz with a
# configured band around its resonance. (With the first spec's SK segments of ~10 ms, longer
# than the defect period, the automatic band at 25.6 kHz missed the resonance on many windows:
# BPFI won 28/40 at 1200 rpm and 20/40 at 1800; segments of at most half the BPFI period fixed it.)
SPEED_CASES = {
    "12kHz-auto-band": (12000.0, None),
    "25.6kHz-auto-band": (25600.0, None),
    "25.6kHz-configured-band": (25600.0, (2400.0, 4000.0)),
}


def emulated_inner_race(fs: float, rpm: float, count: int = 40, n: int = 4096) -> list[Window]:
    gen = SignalGenerator(SignalSpec(fs=fs, rpm=rpm, scenario="inner_race", onset_s=0.0, ramp_s=1e-3, seed=1))
    out = []
    for _ in range(count):
        x, block_rpm = gen.next_block(n)
        out.append(window(x, fs, block_rpm))
    return out


@pytest.mark.parametrize("case", list(SPEED_CASES))
@pytest.mark.parametrize("rpm", [1200.0, 1800.0])
def test_bpfi_follows_the_shaft_speed(case, rpm):
    fs, band = SPEED_CASES[case]
    spec = FeatureSpec(orders=SPEC.orders, envelope_band_hz=band)
    extractor = FeatureExtractor(spec)
    windows = emulated_inner_race(fs, rpm)
    assert all(abs(w.rpm / rpm - 1) < 0.06 for w in windows)  # the speed wanders, a little
    bpfi = extractor.names.index("env_bpfi_1")
    right_vectors = extractor.extract(windows)
    right = Counter(winners(spec, right_vectors))
    assert right["bpfi"] >= 0.90 * len(windows), dict(right)
    right_snr = np.median(right_vectors[:, bpfi])
    other = 3000.0 - rpm  # 1800 for the 1200 rpm signal and the reverse
    wrong_vectors = extractor.extract([window(w.samples, fs, other) for w in windows])
    wrong = Counter(winners(spec, wrong_vectors))
    assert wrong["bpfi"] < 0.5 * len(windows), dict(wrong)
    wrong_snr = np.median(wrong_vectors[:, bpfi])
    assert right_snr > 3 * wrong_snr, (right_snr, wrong_snr)


# ----------------------------------------------------------------------------- compiled kernels, edge cases
def test_band_bins_is_the_scan_over_every_bin():
    """band_bins finds each band's bins by arithmetic and a step or two; the answer is the
    scan's (bins 1 <= k < n/2 with lo <= k fs/n < hi) for bands on bin edges, inside one
    bin, out of range, inverted or NaN."""
    n, fs = 4096, 12000.0
    df = fs / n
    bands = [(3 * df, 10 * df), (3 * df + 1e-9, 10 * df - 1e-9), (0.1, 0.2), (-50.0, 7.5), (5000.0, 9000.0),
             (6000.0, 7000.0), (7.0, 3.0), (np.nan, 100.0), (100.0, np.nan), (-np.inf, np.inf), (1000.0, 1000.0)]
    bands += [tuple(sorted(v)) for v in np.random.default_rng(8).uniform(-100, 6500, size=(200, 2))]
    band = np.array(bands, dtype=np.float64)
    k0, nb = np.empty(len(band), np.intp), np.empty(len(band), np.intp)
    features_mod._spectral.band_bins(n, fs, band, k0, nb)
    for (lo, hi), a, b in zip(band, k0, nb):
        ks = [k for k in range(1, n // 2) if k * df >= lo and k * df < hi]
        assert (a, b) == ((ks[0], len(ks)) if ks else (0, 0)), (lo, hi)


def _order_window(e: np.ndarray, k: float, noise_bins: int) -> tuple[float, np.ndarray]:
    """With no tolerance: the largest of bins round(k) +- 1 and the noise_bins bins either side
    of them (from bin 1 to the last), as docs/FEATURES.md defines the order amplitude."""
    last = len(e) - 1
    kc = round(k)
    k_lo, k_hi = max(kc - 1, 1), min(kc + 1, last)
    noise = np.concatenate([e[max(k_lo - noise_bins, 1):k_lo], e[k_hi + 1:min(k_hi + noise_bins, last) + 1]])
    return float(e[k_lo:k_hi + 1].max()), noise


def test_order_snr_noise_floor_is_the_median_of_the_neighbours():
    """The amplitude over the median of the noise bins either side (an odd and an even count,
    by selection; with a NaN among them, by sorting): numpy's median of the same bins."""
    rng = np.random.default_rng(9)
    E = rng.uniform(0.1, 1.0, size=(3, 257))
    E[2, 40] = np.nan
    df, tol = 1.0, 0.0
    targets = np.array([[50.0, 5.0, 250.0]] * 3)
    out = np.empty((3, 3))
    features_mod._spectral.order_snr(E, df, targets, tol, 10, out, 0)
    for r in range(3):
        for t, f in enumerate(targets[r]):
            peak, noise = _order_window(E[r], f / df, 10)
            if np.isnan(noise).any():  # no order to select in: it must end, whatever it gives
                assert (r, f) == (2, 50.0)
                continue
            np.testing.assert_allclose(out[r, t], peak / np.median(noise), rtol=1e-12, err_msg=f"row {r} target {f}")
    assert {len(np.r_[max(k - 1 - 10, 1):k - 1, k + 2:min(k + 1 + 10, 256) + 1]) % 2 for k in (5, 50, 250)} == {0, 1}


@pytest.mark.parametrize("levels", [1, 2, 3, 7])
def test_order_snr_noise_floor_with_ties_is_the_median(levels):
    """Noise bins drawn from a few values (all equal when levels = 1): the selection puts the
    values equal to its pivot aside, and the even count's lower middle value may tie the
    upper one. numpy's median of the same bins, exactly."""
    rng = np.random.default_rng(levels)
    E = rng.integers(1, levels + 1, size=(4, 300)) / 4.0
    df, tol = 1.0, 0.0
    targets = np.array([[7.0, 30.0, 31.0, 150.0, 290.0]] * 4)
    out = np.empty((4, 5))
    features_mod._spectral.order_snr(E, df, targets, tol, 12, out, 0)
    for r in range(4):
        for t, f in enumerate(targets[r]):
            peak, noise = _order_window(E[r], f / df, 12)
            assert out[r, t] == peak / np.median(noise), (levels, r, f)


def chain(x: np.ndarray, fs: float, rpm: float | list[float], n: int, hop: int, channel: str = "ch0",
          seq0: int = 0) -> list[Window]:
    """The windows of ``x`` a windower would cut: length n, every hop samples, with their
    sequence numbers (so the extractor can tell which overlap)."""
    count = (len(x) - n) // hop + 1
    rpms = rpm if isinstance(rpm, list) else [rpm] * count
    samples = np.ascontiguousarray(x, dtype=np.float32)
    return [Window(channel, samples[i * hop: i * hop + n], fs, rpms[i], 0, seq0 + i * hop, seq0 + i * hop + n - 1)
            for i in range(count)]


def test_overlapping_windows_share_half_window_stfts_and_agree_with_each_alone():
    """Windows half a window apart share the SK's half-window STFTs (features.py, _sk_bands).
    A batch of such runs, broken by a channel change, a gap, a speed whose segment length
    differs and a row of another hop, gives every window the band and features it gets
    alone (to rounding: the SK's sums run in another order) and agrees with the reference."""
    fs, n = 12000.0, 4096
    rng = np.random.default_rng(11)
    t = np.arange(12 * n) / fs
    x = 0.3 * rng.standard_t(3, len(t)) + 0.5 * np.sin(2 * np.pi * 2900.0 * t)
    x += ringing(fs, len(t), np.arange(0.0, t[-1], 1 / 150.0), 3300.0, rng, noise_g=0.0)
    batch = chain(x[: 6 * n], fs, 1797.0, n, n // 2)  # one run of 11
    batch += chain(x[: 3 * n], fs, 1797.0, n, n // 2, channel="ch1")  # another channel
    batch += chain(x[5 * n:], fs, 1797.0, n, n // 2, seq0=5 * n + 7)[:4]  # a gap in ch0's numbers
    batch += chain(x[: 3 * n], fs, [1797.0, 700.0, 1797.0, 700.0, 1797.0], n, n // 2, channel="ch2")
    batch += chain(x[: 3 * n], fs, 1797.0, n, n // 4, channel="ch3")  # a quarter-window hop
    extractor = FeatureExtractor(SPEC)
    got = extractor.extract(batch)
    bands = extractor.last_bands.copy()
    alone = FeatureExtractor(SPEC)
    for i, w in enumerate(batch):
        one = alone.extract([w])[0]
        np.testing.assert_array_equal(bands[i], alone.last_bands[0], err_msg=f"window {i}: band")
        np.testing.assert_allclose(got[i], one, rtol=1e-12, atol=1e-12, err_msg=f"window {i}")
    check_compiled_against_reference(batch[:14], SPEC, "overlapping windows")
    assert len({tuple(b) for b in bands}) > 1  # the speeds moved the band: not one answer for all


def test_the_half_window_stft_is_used_only_for_windows_that_follow_each_other():
    """follows[r] is set for the next window of the same channel, half a window on (by the
    sequence numbers: a window's samples are its channel's from seq_first on)."""
    fs, n = 12000.0, 1024
    x = np.random.default_rng(2).normal(size=6 * n)
    batch = chain(x, fs, 1797.0, n, n // 2)[:3] + chain(x, fs, 1797.0, n, n // 2, channel="b")[:2]
    batch += chain(x, fs, 1797.0, n, n // 4, channel="b", seq0=10 * n)[:2]  # a gap, then a quarter hop
    extractor = FeatureExtractor(SPEC)
    extractor.extract(batch)
    ws = extractor._work[(len(batch), n)]
    assert ws.follows.tolist() == [False, True, True, False, True, False, False]


def test_a_run_of_overlapping_windows_at_one_speed_inside_a_batch_of_two_speeds():
    """Each speed's rows are one run of overlapping windows, but not the whole chunk: its
    pieces are numbered from the run's first half. Every window as alone."""
    fs, n = 12000.0, 2048
    x = np.random.default_rng(4).standard_t(4, 5 * n)
    batch = chain(x, fs, [1797.0] * 4 + [700.0] * 5, n, n // 2)
    extractor = FeatureExtractor(SPEC)
    got = extractor.extract(batch)
    alone = FeatureExtractor(SPEC)
    for i, w in enumerate(batch):
        np.testing.assert_allclose(got[i], alone.extract([w])[0], rtol=1e-12, atol=1e-12, err_msg=f"window {i}")


def test_envelope_lengths_are_the_specs_power_of_two():
    """M = min(2^ceil(log2(max(2 max(nb, ceil(top (1 + tol) / df) + noise + 1), 2))), n), as
    docs/FEATURES.md writes it in numpy; M = n for a non-finite top; the common M only when
    every row has a band and the same M."""
    rng = np.random.default_rng(8)
    n, fs, tol, noise = 4096, 12000.0, 0.02, 20
    top = np.concatenate([rng.uniform(0.0, 7000.0, 200), [np.nan, np.inf, 0.0, 1e-9, 5999.9, 6000.0]])
    nb = np.concatenate([rng.integers(0, 2100, 200), [5, 5, 0, 1, 2000, 2047]]).astype(np.intp)
    m_len = np.empty(len(top), np.intp)
    assert features_mod._spectral.envelope_lengths(n, fs, top, tol, noise, nb, m_len) == 0
    with np.errstate(invalid="ignore"):
        k_top = np.ceil(top * (1.0 + tol) / (fs / n)) + noise + 1
        want = np.minimum(2 ** np.ceil(np.log2(np.maximum(2 * np.maximum(nb, k_top), 2))), n)
    want[~np.isfinite(top)] = n
    np.testing.assert_array_equal(m_len, want.astype(np.intp))
    same = np.full(5, 100.0)
    assert features_mod._spectral.envelope_lengths(n, fs, same, tol, noise, np.full(5, 300, np.intp), m_len[:5]) == 1024
    assert features_mod._spectral.envelope_lengths(n, fs, same, tol, noise, np.array([300, 300, 0, 300, 300], np.intp), m_len[:5]) == 0


def test_the_time_domain_block_can_be_left_to_the_caller():
    """extract(..., time_domain=False) leaves the first len(TIME_FEATURES) columns NaN and the
    rest as extract() computes them; time_features_into fills them in, the same values
    (replay's worker and main process split the vector so)."""
    windows = synthetic_windows(4096, 12000.0, 1797.0)
    full = FeatureExtractor(SPEC).extract(windows)
    part = FeatureExtractor(SPEC).extract(windows, time_domain=False)
    n = len(TIME_FEATURES)
    assert np.isnan(part[:, :n]).all()
    np.testing.assert_array_equal(part[:, n:], full[:, n:])
    features_mod.time_features_into(windows, part)
    np.testing.assert_array_equal(part, full)
