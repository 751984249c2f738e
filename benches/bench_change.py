"""Score-drift detectors (issue #6): per-value cost of ours (ext/change.pyx) against River's.

Goal: per-value cost below River's ``drift.PageHinkley`` and ``drift.ADWIN`` ``update`` loops
(the issue measured 1271 ns and 294 ns per value on this VM).

Stream: an anomaly-score-like series, Beta(2, 8) for 50,000 values, then Beta(4, 8) (one
change, which both detectors detect; before and after it ADWIN's window grows to tens or
hundreds of thousands of values, so its bucket scans are as deep as in service). The 10^5
runs are the first 10^5 values of the 10^6 one. Every round starts from a new detector.

Per detector (group ``<detector>``):
* ``river-loop``: River's ``update`` then ``drift_detected`` per value, over 10^5 values (a
  Python loop over a list of floats made outside the timing);
* ``ours-update-loop``: the same loop over ours (``update`` returns the bool): single calls;
* ``ours-batch-1e5`` / ``ours-batch-1e6``: ``update_many`` on the whole array, one call:
  how the agent feeds it (one call per batch of windows). 10^5 is River's stream exactly.

Each benchmark reports ``ns_per_value`` (median round) and ours ``x_river`` (River's ns/value
measured earlier in the same run over ours). River missing: its rows skip, ours still run.
Run: .venv/bin/python -m pytest benches/bench_change.py -o python_files='bench_*.py' --benchmark-only
"""
from __future__ import annotations

import numpy as np
import pytest

from edge_agent.change_detect import ADWIN, PageHinkley

N_SMALL = 100_000
N_LARGE = 1_000_000
DETECTORS = {"page_hinkley": PageHinkley, "adwin": ADWIN}
RIVER_NAMES = {"page_hinkley": "PageHinkley", "adwin": "ADWIN"}
_ns: dict[tuple[str, str], float] = {}  # (detector, case) -> median ns per value, this run


def score_stream(n: int) -> np.ndarray:
    rng = np.random.default_rng(6)
    a = np.where(np.arange(n) < N_SMALL // 2, 2.0, 4.0)
    return rng.beta(a, 8.0)


STREAM = score_stream(N_LARGE)


@pytest.fixture(params=list(DETECTORS), ids=list(DETECTORS))
def detector(request):
    return request.param


def record(benchmark, detector: str, case: str, n: int) -> None:
    ns = benchmark.stats.stats.median / n * 1e9
    benchmark.extra_info["ns_per_value"] = ns
    _ns[(detector, case)] = ns
    river = _ns.get((detector, "river-loop"))
    if river is not None and case != "river-loop":
        benchmark.extra_info["x_river"] = river / ns


def test_river_loop(benchmark, detector):
    drift = pytest.importorskip("river.drift", reason="River (test-only) not installed: pip install -e '.[dev]'")
    cls = getattr(drift, RIVER_NAMES[detector])
    xs = STREAM[:N_SMALL].tolist()

    def run(det):
        found = 0
        for v in xs:
            det.update(v)
            if det.drift_detected:
                found += 1
        return found

    benchmark.group = detector
    found = benchmark.pedantic(run, setup=lambda: ((cls(),), {}), rounds=5, warmup_rounds=0)
    assert found == len(DETECTORS[detector]().update_many(STREAM[:N_SMALL]))  # same detections
    record(benchmark, detector, "river-loop", N_SMALL)


def test_ours_update_loop(benchmark, detector):
    cls = DETECTORS[detector]
    xs = STREAM[:N_SMALL].tolist()

    def run(det):
        found = 0
        for v in xs:
            if det.update(v):
                found += 1
        return found

    benchmark.group = detector
    found = benchmark.pedantic(run, setup=lambda: ((cls(),), {}), rounds=15, warmup_rounds=1)
    assert found == len(cls().update_many(STREAM[:N_SMALL]))
    record(benchmark, detector, "ours-update-loop", N_SMALL)


@pytest.mark.parametrize("n", [N_SMALL, N_LARGE], ids=["1e5", "1e6"])
def test_ours_batch(benchmark, detector, n):
    cls = DETECTORS[detector]
    x = np.ascontiguousarray(STREAM[:n])
    benchmark.group = detector
    found = benchmark.pedantic(lambda det: det.update_many(x), setup=lambda: ((cls(),), {}),
                               rounds=30 if n == N_SMALL else 10, warmup_rounds=1)
    assert len(found) >= 1
    record(benchmark, detector, f"ours-batch-{'1e5' if n == N_SMALL else '1e6'}", n)
