"""The agent's drift monitor (issue #6): per-window cost in the processing thread, the
sketches' bounded size, and the summary's size.

Baseline: the issue's anchor for DataSketches' KLL update, 37 ns per value in a batch of
10^6 (21 features per window would be ~0.8 us per window), and the ~115 us per window the
rest of the pipeline costs (replay bench): the monitor should be a small share of it.

* ``observe-64[healthy|drifting]``: ``DriftMonitor.observe`` with the shipped pack's profile, a batch of 64
  windows (the processing loop's usual round) of one channel in one regime: the KLL
  sketches of 21 features, exact bin counts, the regime's recent-window ring and its
  judgement every 50 windows, Page-Hinkley and ADWIN on two score streams. ``healthy``: the
  monitored features drawn from the regime's reference (judgements find nothing; KS is not
  computed), ``drifting``: every feature off the reference (KS computed for each, the alert
  path). Reports ``us_per_window``.
* ``sketch-bytes``: after 10^6 windows in one regime, the serialised size of the 21
  sketches (the bound: KLL keeps O(k log(n/k)) items), and the JSON size of one summary of
  a 60 s interval at 12 kHz (350 windows).
Run: .venv/bin/python -m pytest benches/bench_drift.py -o python_files='bench_*.py' --benchmark-only
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import default_config
from edge_agent.drift_monitor import DriftMonitor
from edge_agent.pack_scorer import PackScorer

PACK = Path(__file__).resolve().parent.parent / "models" / "default.pack"


@pytest.fixture(scope="module")
def scorer():
    return PackScorer(str(PACK), default_config())


def _features(n: int, names: list[str], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.5, 0.4, (n, len(names)))  # unlike the reference: every judgement finds drift (the costly path)


def _healthy(n: int, mon, seed: int) -> np.ndarray:
    """Rows whose monitored features follow the regime's reference (inverse CDF): no drift."""
    x = _features(n, mon.names, seed)
    rng = np.random.default_rng(seed + 1000)
    _, feats, watched = mon.profile.reference_for(1200.0, 1800.0)
    for f in watched:
        q = np.asarray(feats[f]["cdf"])
        x[:, mon.names.index(f)] = np.interp(rng.uniform(size=n), np.linspace(0, 1, len(q)), q)
    return x


@pytest.mark.parametrize("case", ["healthy", "drifting"])
def test_observe_64(benchmark, scorer, case):
    mon = DriftMonitor.for_model(default_config(), scorer, scorer.extractor)
    names = mon.names
    batches = [(_healthy(64, mon, i) if case == "healthy" else _features(64, names, seed=i)) for i in range(50)]
    rpm = np.full(64, 1500.0)
    chans = ["ch0"] * 64
    anomaly = np.random.default_rng(1).gamma(2.0, 0.1, 64)
    conf = np.full(64, 0.97)
    state = {"i": 0}

    def one():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        mon.observe(chans, rpm, b, anomaly, conf, 0.002)

    benchmark.pedantic(one, rounds=400, warmup_rounds=20)
    us = benchmark.stats.stats.median * 1e6 / 64
    benchmark.extra_info["us_per_window"] = round(us, 2)
    print(f"\ndrift monitor, {case}: {us:.1f} us per window ({mon.judgements} judgements, "
          f"last status {mon.alerts.open_alerts() and 'drift alert open' or 'no alert'})")


def test_sketch_bytes(benchmark, scorer):
    cfg = default_config()

    def fill():
        mon = DriftMonitor.for_model(cfg, scorer, scorer.extractor)
        for i in range(1_000_000 // 4096):
            mon.sketches.update(_features(4096, mon.names, seed=i), np.full(4096, 1500.0))
        return mon

    mon = benchmark.pedantic(fill, rounds=1)
    regime = next(iter(mon.sketches.peek().values()))
    big = sum(len(s.serialize()) for s in regime.sketches.values())
    small_mon = DriftMonitor.for_model(cfg, scorer, scorer.extractor)
    small_mon.observe(["ch0"] * 350, np.full(350, 1500.0), _features(350, small_mon.names, 9),
                      np.full(350, 0.2), np.full(350, 0.97), 0.002)
    part, _ = small_mon.summarize()
    summary_bytes = len(json.dumps(part, separators=(",", ":")))
    benchmark.extra_info.update({"sketch_bytes_1e6_windows": big, "summary_part_bytes_350_windows": summary_bytes})
    print(f"\n21 sketches after 10^6 windows: {big} bytes; drift part of a 350-window summary: {summary_bytes} bytes")
    assert big < 21 * 4096  # bounded: a few kB a feature whatever n
