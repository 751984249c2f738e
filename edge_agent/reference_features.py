"""NumPy/SciPy reference of the feature vector of docs/FEATURES.md: the yardstick.

What it is for: the compiled implementation (:mod:`edge_agent.features`, ext/*.pyx) must
agree with this one within 1e-4 relative (1e-6 absolute near zero) on every feature
(tests/test_features.py) and must beat it on speed (benches/bench_features.py). It is
written independently, from the specification only, one textbook library call per step:
``scipy.stats`` moments, ``scipy.fft.rfft``, ``scipy.signal.stft`` for the spectral
kurtosis, ``scipy.signal.hilbert`` for the envelope, ``numpy.median`` for noise floors.
Clear and obviously right, not fast.

Never import it at run time: it needs SciPy, which the agent does not ship (a test checks
that ``edge_agent.agent`` and ``edge_agent.cli`` import no scipy). Only tests/ and
benches/ import it.

>>> from edge_agent.features import FeatureSpec
>>> import numpy as np
>>> x = np.sin(2 * np.pi * 100.0 * np.arange(4096) / 4096.0)  # 1 g at 100 Hz, on a bin
>>> v = dict(zip(reference_feature_names(FeatureSpec.default()),
...              reference_features(x, 4096.0, 1800.0, FeatureSpec.default())))
>>> round(float(v["band_rms_10_500"]), 6)  # 1/sqrt(2)
0.707107
>>> round(float(v["velocity_rms_mm_s"]), 3)  # 1000 g0 / (2 pi 100) / sqrt(2)
11.036
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
import scipy.signal
import scipy.stats

if TYPE_CHECKING:
    from edge_agent.features import FeatureSpec

G0 = 9.80665  # m/s^2 per g (standard gravity)
VELOCITY_BAND_HZ = (10.0, 1000.0)  # ISO 10816-1 / 20816-1, both ends included
ORDER_HARMONICS = (1, 2, 3)
FAMILIES = ("bpfo", "bpfi", "bsf", "ftf")
TIME_NAMES = (
    "mean", "rms", "peak", "peak_to_peak", "crest", "kurtosis",
    "skewness", "shape", "impulse", "clearance",
)


def _ratio(a: float, b: float) -> float:
    """a / b, and 0 when b is 0 (spec section 1)."""
    return float(a / b) if b != 0 else 0.0


# ----------------------------------------------------------------------------- names
def reference_feature_names(spec: FeatureSpec) -> tuple[str, ...]:
    """Names in the order of docs/FEATURES.md, "Order of the vector"."""
    edges = spec.band_edges_hz
    bands = [f"band_rms_{lo:g}_{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    env = [f"env_{fam}_{k}" for fam in FAMILIES for k in ORDER_HARMONICS]
    extra = ["env_bpfi_sb_lo", "env_bpfi_sb_hi", "env_bsf2_sb_lo", "env_bsf2_sb_hi", "env_shaft_1", "env_shaft_2"]
    return (*TIME_NAMES, *bands, "spectral_centroid_hz", "velocity_rms_mm_s", *env, *extra)


# ----------------------------------------------------------------------------- 1. time domain
def reference_time_features(x: np.ndarray) -> np.ndarray:
    """The 10 time-domain features (spec section 1), population moments via scipy.stats."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.mean(x)
    rms = np.sqrt(np.mean(x**2))
    peak = np.max(np.abs(x))
    mean_abs = np.mean(np.abs(x))
    mean_sqrt = np.mean(np.sqrt(np.abs(x)))
    if np.ptp(x) == 0:  # constant window: m2 = 0, the moment ratios are 0 by the spec
        kurtosis = skewness = 0.0
    else:
        kurtosis = scipy.stats.kurtosis(x, fisher=False, bias=True)
        skewness = scipy.stats.skew(x, bias=True)
    return np.array([
        mean,
        rms,
        peak,
        np.max(x) - np.min(x),
        _ratio(peak, rms),
        kurtosis,
        skewness,
        _ratio(rms, mean_abs),
        _ratio(peak, mean_abs),
        _ratio(peak, mean_sqrt**2),
    ], dtype=np.float64)


# ----------------------------------------------------------------------------- 2. spectrum
def bin_frequencies(n: int, fs: float) -> np.ndarray:
    """f_k = k df, df = fs / N, k = 0 .. N/2."""
    return np.arange(n // 2 + 1) * (fs / n)


def power_spectrum(x: np.ndarray) -> np.ndarray:
    """One-sided power P_k = w_k |X_k|^2 / N^2 (w = 1 at 0 and N/2, else 2): sums to mean(x^2)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    p = np.abs(scipy.fft.rfft(x)) ** 2 / n**2
    p[1:-1] *= 2.0  # N is even (a power of two), so the last bin is N/2
    return p


def reference_spectrum_features(x: np.ndarray, fs: float, spec: FeatureSpec) -> np.ndarray:
    """band_rms_* (one per consecutive pair of band edges), spectral_centroid_hz, velocity_rms_mm_s."""
    p = power_spectrum(x)
    f = bin_frequencies(len(x), fs)
    edges = spec.band_edges_hz
    bands = [np.sqrt(np.sum(p[(f >= lo) & (f < hi)])) for lo, hi in zip(edges[:-1], edges[1:])]
    centroid = _ratio(np.sum(f[1:] * p[1:]), np.sum(p[1:]))
    lo, hi = VELOCITY_BAND_HZ
    v = (f >= lo) & (f <= hi)
    velocity = 1000.0 * np.sqrt(np.sum(p[v] * (G0 / (2.0 * np.pi * f[v])) ** 2))
    return np.array([*bands, centroid, velocity], dtype=np.float64)


# ----------------------------------------------------------------------------- 3. envelope
def kurtogram_segment_length(n: int, fs: float, bpfi_hz: float) -> int:
    """L = 2^floor(log2(fs / (2 BPFI f_r))), clipped to [16, N/4]."""
    length = 2 ** math.floor(math.log2(fs / (2.0 * bpfi_hz)))
    return int(min(max(length, 16), n // 4))


def spectral_kurtosis(x: np.ndarray, fs: float, bpfi_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(f_j, SK_j), j = 0 .. L/2: one-level fixed-bandwidth kurtogram (Antoni 2006).

    STFT with a periodic Hann window of L samples, hop L (no overlap), no padding and no
    boundary extension, so the segments are exactly m L .. m L + L for m = 0 .. M-1. SciPy's
    scaling (1 / sum of the window) cancels in the ratio.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    length = kurtogram_segment_length(n, fs, bpfi_hz)
    hop = length
    _, _, s = scipy.signal.stft(
        x, fs=fs, window="hann", nperseg=length, noverlap=length - hop, nfft=length,
        detrend=False, return_onesided=True, boundary=None, padded=False,
    )
    assert s.shape == (length // 2 + 1, 1 + (n - length) // hop), s.shape  # the spec's M segments
    a2 = np.abs(s) ** 2
    num = np.mean(a2**2, axis=1)
    den = np.mean(a2, axis=1) ** 2
    sk = np.zeros(len(num))
    nz = den != 0
    sk[nz] = num[nz] / den[nz] - 2.0
    return np.arange(length // 2 + 1) * (fs / length), sk


def kurtogram_bandwidth(fs: float, rpm: float, spec: FeatureSpec) -> float:
    """B = min(max(6 BPFI f_r, fs/16), fs/4)."""
    return min(max(6.0 * spec.orders.bpfi * (rpm / 60.0), fs / 16.0), fs / 4.0)


def reference_envelope_band(x: np.ndarray, fs: float, rpm: float, spec: FeatureSpec) -> tuple[float, float]:
    """The envelope band [lo, hi): configured, or centred on the largest spectral kurtosis."""
    if spec.envelope_band_hz:
        lo, hi = spec.envelope_band_hz
        return float(lo), float(hi)
    f, sk = spectral_kurtosis(x, fs, spec.orders.bpfi * rpm / 60.0)
    b = kurtogram_bandwidth(fs, rpm, spec)
    candidates = np.flatnonzero((f - b / 2 >= fs / 64) & (f + b / 2 <= 0.95 * fs / 2))
    if len(candidates) == 0:
        centre = fs / 4
    else:
        centre = f[candidates[np.argmax(sk[candidates])]]  # argmax: the first one on a tie
    return float(centre - b / 2), float(centre + b / 2)


def envelope_length(n: int, df: float, n_band: int, targets_hz: list[float], spec: FeatureSpec) -> int:
    """M: the smallest power of two >= 2 max(nb, k_top), at most N (spec 3)."""
    k_top = math.ceil(max(targets_hz) * (1.0 + spec.order_tolerance) / df) + spec.noise_floor_bins + 1
    return min(2 ** math.ceil(math.log2(max(2 * max(n_band, k_top), 2))), n)


def envelope_spectrum(x: np.ndarray, fs: float, band: tuple[float, float], targets_hz: list[float],
                      spec: FeatureSpec) -> np.ndarray | None:
    """E_k = (2/M) |rfft(e - mean e)|, e = |analytic signal of the band| (Randall 2011, ch. 5)
    taken at every N/M-th sample; None when the band holds no bin.

    The band-passed signal is the inverse FFT of the spectrum kept on 1 <= k < N/2 and
    lo <= f_k < hi; scipy.signal.hilbert of it doubles those bins and zeroes the negative
    frequencies, which is the spec's analytic band signal (DC and Nyquist are already 0).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    lo, hi = band
    k = np.arange(n // 2 + 1)
    f = bin_frequencies(n, fs)
    keep = (k >= 1) & (k < n // 2) & (f >= lo) & (f < hi)
    if not keep.any():
        return None
    m = envelope_length(n, fs / n, int(keep.sum()), targets_hz, spec)
    xb = scipy.fft.irfft(np.where(keep, scipy.fft.rfft(x), 0.0), n=n)
    e = np.abs(scipy.signal.hilbert(xb))[:: n // m]
    return (2.0 / m) * np.abs(scipy.fft.rfft(e - np.mean(e)))


def order_amplitude(e_spec: np.ndarray, target_hz: float, df: float, tol: float, floor_bins: int) -> float:
    """Peak of the envelope spectrum near ``target_hz`` over its local noise floor (spec 3)."""
    half = len(e_spec) - 1  # M/2
    k_lo = math.floor(target_hz * (1.0 - tol) / df)
    if k_lo > half:
        return 0.0
    k_hi = math.ceil(target_hz * (1.0 + tol) / df)
    centre = round(target_hz / df)
    k_lo, k_hi = min(k_lo, centre - 1), max(k_hi, centre + 1)
    search = np.arange(max(k_lo, 1), min(k_hi, half) + 1)
    peak = np.max(e_spec[search])
    around = np.concatenate([np.arange(k_lo - floor_bins, k_lo), np.arange(k_hi + 1, k_hi + floor_bins + 1)])
    around = around[(around >= 1) & (around <= half)]
    floor = float(np.median(e_spec[around])) if len(around) else 0.0
    return float(peak / max(floor, 1e-12 * np.max(e_spec) + 1e-30))


def envelope_targets_hz(rpm: float, spec: FeatureSpec) -> list[float]:
    """Target frequencies in vector order: k BPFO, k BPFI, k BSF, k FTF (k = 1..3), then
    BPFI -/+ 1, 2 BSF -/+ FTF, 1 and 2 (orders), all times f_r."""
    o = spec.orders
    f_r = rpm / 60.0
    orders = [k * getattr(o, fam) for fam in FAMILIES for k in ORDER_HARMONICS]
    orders += [o.bpfi - 1.0, o.bpfi + 1.0, 2.0 * o.bsf - o.ftf, 2.0 * o.bsf + o.ftf, 1.0, 2.0]
    return [order * f_r for order in orders]


def reference_envelope_features(x: np.ndarray, fs: float, rpm: float, spec: FeatureSpec) -> np.ndarray:
    """The 18 envelope features, in vector order."""
    n = len(x)
    targets = envelope_targets_hz(rpm, spec)
    e_spec = envelope_spectrum(x, fs, reference_envelope_band(x, fs, rpm, spec), targets, spec)
    if e_spec is None:
        return np.zeros(len(targets))
    return np.array([
        order_amplitude(e_spec, f, fs / n, spec.order_tolerance, spec.noise_floor_bins)
        for f in targets
    ], dtype=np.float64)


# ----------------------------------------------------------------------------- the vector
def reference_features(x: np.ndarray, fs: float, rpm: float, spec: FeatureSpec) -> np.ndarray:
    """The whole feature vector of window ``x`` (float64, ordered as ``feature_names(spec)``)."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([
        reference_time_features(x),
        reference_spectrum_features(x, fs, spec),
        reference_envelope_features(x, fs, rpm, spec),
    ])
