"""The compiled extension is really built and imported, agrees with SciPy, and a missing
build is a clear error rather than a silent slow fallback."""
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from edge_agent import native
from edge_agent.features import TIME_FEATURES, time_features


def test_extension_is_compiled_module():
    mod = native.load("time_domain")
    assert mod.__file__.endswith(".so"), mod.__file__
    assert "edge_agent/_native/time_domain" in mod.__file__


def reference(x: np.ndarray) -> dict[str, float]:
    x = x.astype(np.float64)
    rms = np.sqrt(np.mean(x**2))
    peak = np.max(np.abs(x))
    mean_abs = np.mean(np.abs(x))
    return {
        "mean": np.mean(x),
        "rms": rms,
        "peak": peak,
        "peak_to_peak": np.ptp(x),
        "crest": peak / rms,
        "kurtosis": stats.kurtosis(x, fisher=False, bias=True),
        "skewness": stats.skew(x, bias=True),
        "shape": rms / mean_abs,
        "impulse": peak / mean_abs,
        "clearance": peak / np.mean(np.sqrt(np.abs(x))) ** 2,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_time_features_match_scipy(dtype, offset):
    rng = np.random.default_rng(1)
    x = (rng.standard_t(5, 4096) * 0.3 + offset).astype(dtype)
    got = dict(zip(TIME_FEATURES, time_features(x)))
    want = reference(x)
    for name in TIME_FEATURES:
        assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-6), name


def test_time_features_on_real_cwru_window(cwru_dir):
    data = np.load(cwru_dir / "1797_IR_7_DE12.npz")
    x = np.ascontiguousarray(data["DE"][:4096])
    got = dict(zip(TIME_FEATURES, time_features(x)))
    want = reference(x)
    for name in TIME_FEATURES:
        assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-6), name
    assert got["kurtosis"] > 4  # inner-race impulses make the real signal impulsive


def test_constant_window_gives_finite_zeros():
    out = time_features(np.full(256, 2.0, dtype=np.float32))
    assert np.all(np.isfinite(out))
    got = dict(zip(TIME_FEATURES, out))
    assert got["mean"] == pytest.approx(2.0) and got["kurtosis"] == 0.0 and got["skewness"] == 0.0


def test_empty_window_is_an_error():
    with pytest.raises(ValueError, match="empty window"):
        time_features(np.empty(0, dtype=np.float32))


def test_missing_build_is_a_clear_error():
    # A fresh interpreter where the compiled module cannot be imported (as on a checkout
    # that was never built): importing the features stage must say how to build.
    code = (
        "import sys; sys.modules['edge_agent._native.time_domain'] = None\n"
        "from edge_agent.native import NativeExtensionMissing\n"
        "try:\n"
        "    import edge_agent.features\n"
        "except NativeExtensionMissing as e:\n"
        "    print('MISSING:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("MISSING: the compiled extension edge_agent._native.time_domain is not built")
    assert "make install" in out
