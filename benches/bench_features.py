"""Feature extraction (issue #4): the compiled vector against the NumPy/SciPy reference.

Baselines, all of docs/FEATURES.md:
* ``reference``: edge_agent/reference_features.py (scipy.stats moments, scipy.fft, scipy.signal
  stft and hilbert, numpy median), one window per call, as a reference computes it;
* ``plain-python``: the time-domain block only, in pure-Python loops over a list of floats
  (no NumPy; the list is made outside the timing): what "no native code at all" costs.

Groups, on 4096-sample windows at 12 kHz and 16384 at 48 kHz (Gaussian noise, float32,
1797 rpm, automatic envelope band):
* ``time-<shape>``: the 10 time-domain features: compiled ``time_features`` vs reference vs
  plain Python. Goal: compiled >= 50x faster than the reference.
* ``vector-<shape>``: the whole vector: compiled ``FeatureExtractor.extract`` on one window
  per call and on a batch of 16 (per-window figure) vs ``reference_features``. Goal:
  compiled >= 10x faster than the reference.
* ``gil-<shape>``: two channels of 16 windows each: one thread extracting both, then two
  threads each extracting its own (own extractor). speedup = one-thread / two-thread time:
  > 1 means the work ran in parallel, i.e. the GIL was released.

Each benchmark reports ``samples_per_s`` (median); the compiled ones also report
``x_reference`` (how many times faster than the reference median measured earlier in the
same run) and the two-thread one ``speedup_vs_one_thread``.
Run: .venv/bin/python -m pytest benches/bench_features.py -o python_files='bench_*.py' --benchmark-only
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edge_agent.features import FeatureExtractor, FeatureSpec, time_features
from edge_agent.reference_features import reference_features, reference_time_features
from edge_agent.native import load as load_native
from edge_agent.window import Window

time_features_into = load_native("time_domain").time_features  # (x, out): no allocation

CASES = [(4096, 12000.0), (16384, 48000.0)]
RPM = 1797.0
BATCH = 16
SPEC = FeatureSpec.default()
_medians: dict[tuple[str, str], float] = {}  # (group, name) -> median seconds per window, this run


def plain_python_time_features(xs: list[float]) -> list[float]:
    """The 10 time-domain features in pure Python (two passes: mean, then the rest)."""
    n = len(xs)
    mean = sum(xs) / n
    m2 = m3 = m4 = sq = sabs = ssqrt = 0.0
    vmax = vmin = xs[0]
    for v in xs:
        d = v - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
        sq += v * v
        a = abs(v)
        sabs += a
        ssqrt += math.sqrt(a)
        if v > vmax:
            vmax = v
        if v < vmin:
            vmin = v
    m2, m3, m4 = m2 / n, m3 / n, m4 / n
    rms = math.sqrt(sq / n)
    peak = max(abs(vmax), abs(vmin))
    mean_abs, mean_sqrt = sabs / n, ssqrt / n

    def ratio(a: float, b: float) -> float:
        return a / b if b != 0 else 0.0

    return [mean, rms, peak, vmax - vmin, ratio(peak, rms), ratio(m4, m2 * m2), ratio(m3, m2**1.5),
            ratio(rms, mean_abs), ratio(peak, mean_abs), ratio(peak, mean_sqrt**2)]


def shape_id(case: tuple[int, float]) -> str:
    return f"{case[0]}@{case[1] / 1000:g}kHz"


def windows_of(n: int, fs: float, count: int, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng([seed, n])
    return [Window(f"ch{seed}", rng.normal(size=n).astype(np.float32), fs, RPM, 0, 0, n - 1) for _ in range(count)]


@pytest.fixture(params=CASES, ids=shape_id)
def case(request):
    return request.param


def record(benchmark, group: str, name: str, samples: int, windows: int = 1) -> None:
    """samples/s, and the speed against the reference measured earlier in this run."""
    median = benchmark.stats.stats.median
    benchmark.extra_info["samples_per_s"] = samples / median
    _medians[(group, name)] = median / windows
    ref = _medians.get((group, "reference"))
    if ref is not None and name != "reference":
        benchmark.extra_info["x_reference"] = ref / (median / windows)


# ----------------------------------------------------------------------------- time-domain block
def test_time_reference(benchmark, case):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    benchmark.group = f"time-{shape_id(case)}"
    benchmark(reference_time_features, x)
    record(benchmark, "time" + shape_id(case), "reference", n)


def test_time_plain_python(benchmark, case):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    xs = x.astype(np.float64).tolist()
    np.testing.assert_allclose(plain_python_time_features(xs), reference_time_features(x), rtol=1e-9)
    benchmark.group = f"time-{shape_id(case)}"
    benchmark(plain_python_time_features, xs)
    record(benchmark, "time" + shape_id(case), "plain-python", n)


def test_time_compiled(benchmark, case):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    np.testing.assert_allclose(time_features(x), reference_time_features(x), rtol=1e-4, atol=1e-6)
    benchmark.group = f"time-{shape_id(case)}"
    benchmark(time_features, x)
    record(benchmark, "time" + shape_id(case), "compiled", n)


# ----------------------------------------------------------------------------- whole vector
def test_vector_reference(benchmark, case):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    benchmark.group = f"vector-{shape_id(case)}"
    benchmark(reference_features, x, fs, RPM, SPEC)
    record(benchmark, "vector" + shape_id(case), "reference", n)


def test_vector_compiled_one_window(benchmark, case):
    n, fs = case
    windows = windows_of(n, fs, 1)
    extractor = FeatureExtractor(SPEC)
    benchmark.group = f"vector-{shape_id(case)}"
    benchmark(extractor.extract, windows)
    record(benchmark, "vector" + shape_id(case), "compiled-1", n)


def test_vector_compiled_batch(benchmark, case):
    n, fs = case
    windows = windows_of(n, fs, BATCH)
    extractor = FeatureExtractor(SPEC)
    benchmark.group = f"vector-{shape_id(case)}"
    benchmark(extractor.extract, windows)
    record(benchmark, "vector" + shape_id(case), f"compiled-{BATCH}", n * BATCH, windows=BATCH)


# ----------------------------------------------------------------------------- GIL release
@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def test_gil_one_thread(benchmark, case):
    n, fs = case
    channels = [windows_of(n, fs, BATCH, seed) for seed in (1, 2)]
    extractor = FeatureExtractor(SPEC)

    def both():
        for windows in channels:
            extractor.extract(windows)

    benchmark.group = f"gil-{shape_id(case)}"
    benchmark(both)
    record(benchmark, "gil" + shape_id(case), "one-thread", 2 * n * BATCH)


def test_gil_two_threads(benchmark, case, pool):
    n, fs = case
    channels = [windows_of(n, fs, BATCH, seed) for seed in (1, 2)]
    extractors = [FeatureExtractor(SPEC), FeatureExtractor(SPEC)]

    def each_its_own():
        futures = [pool.submit(ex.extract, windows) for ex, windows in zip(extractors, channels)]
        for f in futures:
            f.result()

    benchmark.group = f"gil-{shape_id(case)}"
    benchmark(each_its_own)
    record(benchmark, "gil" + shape_id(case), "two-threads", 2 * n * BATCH)
    one = _medians.get(("gil" + shape_id(case), "one-thread"))
    if one is not None:
        benchmark.extra_info["speedup_vs_one_thread"] = one / benchmark.stats.stats.median


# The compiled kernel alone: the same 64 time-domain calls on one thread, then split over two.
KERNEL_CALLS = 1024  # enough work that the two futures' hand-off (~0.1 ms) does not count


def test_gil_kernel_one_thread(benchmark, case):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    outs = [np.empty(10), np.empty(10)]

    def run():
        for i in range(KERNEL_CALLS):
            time_features_into(x, outs[i % 2])

    benchmark.group = f"gil-kernel-{shape_id(case)}"
    benchmark(run)
    record(benchmark, "gil-kernel" + shape_id(case), "one-thread", KERNEL_CALLS * n)


def test_gil_kernel_two_threads(benchmark, case, pool):
    n, fs = case
    x = windows_of(n, fs, 1)[0].samples
    outs = [np.empty(10), np.empty(10)]

    def half(out):
        for _ in range(KERNEL_CALLS // 2):
            time_features_into(x, out)

    def run():
        for f in [pool.submit(half, out) for out in outs]:
            f.result()

    benchmark.group = f"gil-kernel-{shape_id(case)}"
    benchmark(run)
    record(benchmark, "gil-kernel" + shape_id(case), "two-threads", KERNEL_CALLS * n)
    one = _medians.get(("gil-kernel" + shape_id(case), "one-thread"))
    if one is not None:
        benchmark.extra_info["speedup_vs_one_thread"] = one / benchmark.stats.stats.median
