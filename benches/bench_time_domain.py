"""Time-domain feature block: compiled ext/ against the textbook NumPy/SciPy baseline.

Baseline: scipy.stats moments plus NumPy reductions, one pass per statistic, as a
reference implementation would compute them. Reported in samples per second.
"""
import numpy as np
import pytest
from scipy import stats

from edge_agent.features import time_features

CASES = [(4096, 12000.0), (16384, 48000.0)]


def scipy_reference(x):
    x64 = x.astype(np.float64)
    rms = np.sqrt(np.mean(x64**2))
    peak = np.max(np.abs(x64))
    mean_abs = np.mean(np.abs(x64))
    return (
        np.mean(x64), rms, peak, np.ptp(x64), peak / rms,
        stats.kurtosis(x64, fisher=False), stats.skew(x64), rms / mean_abs, peak / mean_abs,
        peak / np.mean(np.sqrt(np.abs(x64))) ** 2,
    )


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}@{c[1] / 1000:g}kHz")
def window(request):
    n, _fs = request.param
    return np.random.default_rng(0).normal(size=n).astype(np.float32)


def _per_second(benchmark, n):
    benchmark.extra_info["samples_per_s"] = n / benchmark.stats.stats.median


@pytest.mark.benchmark(group="time-domain")
def test_compiled(benchmark, window):
    benchmark(time_features, window)
    _per_second(benchmark, len(window))


@pytest.mark.benchmark(group="time-domain")
def test_scipy_baseline(benchmark, window):
    benchmark(scipy_reference, window)
    _per_second(benchmark, len(window))
