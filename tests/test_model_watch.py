"""The shadow gate and the health check (edge_agent/model_watch.py) on hand-made predictions;
the end-to-end behaviour with real agents is in tests/test_updates.py."""
import gc
import threading
import time

import numpy as np
import pytest
from scipy import stats

from edge_agent.baseline import Prediction
from edge_agent.model_watch import (HealthCheck, RecentHits, ShadowGate, compute_clock, hit_of, ks_statistic,
                                    typical_seconds_per_window)


class Pack:  # what model_watch needs of a pack scorer: its hit rule
    def hit(self, p):
        return p.label if p.label != "normal" else None


class Baseline:
    threshold = 6.0


def _p(label="normal", score=1.0):
    return Prediction(label, score, {label: 0.9}, ())


def test_hit_of_a_pack_and_of_the_baseline():
    assert hit_of(Pack(), _p("ball")) and not hit_of(Pack(), _p("normal"))
    assert hit_of(Baseline(), _p("anomaly", 7.0)) and not hit_of(Baseline(), _p("normal", 5.9))
    assert not hit_of(Baseline(), _p("learning", 99.0))


def test_ks_statistic_is_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.3, 1.2, size=200)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def _gate(**kw):
    args = dict(windows=10, min_agreement=0.9, max_extra_alert_rate=0.05, max_latency_ratio=3.0, compare_labels=True)
    args.update(kw)
    return ShadowGate(**args)


def test_an_agreeing_candidate_passes_with_its_figures():
    g = _gate()
    active = [_p("normal")] * 9 + [_p("ball")]
    g.add_active(Pack(), active, 0.010)
    g.add_candidate(Pack(), list(active), 0.012, active)
    assert g.done and g.verdict() == (True, "")
    f = g.figures()
    assert (f["agreement"], f["active_alert_rate"], f["candidate_alert_rate"], f["latency_ratio"]) == (1.0, 0.1, 0.1, 1.2)


@pytest.mark.parametrize("cand, seconds, words", [
    ([_p("ball")] * 10, 0.01, "agreement 0.000"),
    ([_p("normal", float("nan"))] + [_p("normal")] * 9, 0.01, "NaN/Inf outputs on 1 windows"),
    ([_p("normal")] * 10, 0.05, "inference time 5.00x"),
])
def test_a_failing_candidate_is_rejected_with_the_reason(cand, seconds, words):
    g = _gate()
    active = [_p("normal")] * 10
    g.add_active(Pack(), active, 0.01)
    g.add_candidate(Pack(), cand, seconds, active)
    passed, why = g.verdict()
    assert not passed and words in why


def test_extra_alerts_fail_the_gate_even_without_label_agreement():
    g = _gate(compare_labels=False)  # e.g. the baseline active, a pack as candidate
    g.add_active(Baseline(), [_p("normal", 1.0)] * 10, 0.01)
    g.add_candidate(Pack(), [_p("inner_race")] * 2 + [_p("normal")] * 8, 0.01)
    passed, why = g.verdict()
    assert g.figures()["agreement"] is None and not passed and "+0.200" in why


def test_health_check_rolls_back_a_loud_model_but_not_during_a_real_fault():
    loud = HealthCheck(windows=20, max_alert_rate=0.5, max_latency_ratio=5, previous_alert_rate=0.0,
                       previous_seconds_per_window=0.001)
    loud.add(Pack(), [_p("ball")] * 19, 0.019)
    assert loud.problem() is None  # not yet judged: 19 < 20
    loud.add(Pack(), [_p("ball")], 0.001)
    assert "alert-window rate 1.000 over 20 windows" in loud.problem()
    fault = HealthCheck(20, 0.5, 5, previous_alert_rate=0.9, previous_seconds_per_window=0.001)
    fault.add(Pack(), [_p("ball")] * 20, 0.02)
    assert fault.problem() is None and fault.passed


def test_health_check_errors_nan_and_latency():
    h = HealthCheck(10, 0.5, 5, 0.0, 0.001)
    h.add(Pack(), [_p("normal", float("inf"))], 0.001)
    assert "NaN/Inf" in h.problem()
    h = HealthCheck(10, 0.5, 5, 0.0, 0.001)
    h.add_error()
    assert "processing error" in h.problem()
    h = HealthCheck(10, 0.5, 5, 0.0, 0.001)
    h.add(Pack(), [_p("normal")] * 10, 0.1)  # 10 ms a window against 1 ms
    assert "inference time 10.00x" in h.problem()


def test_typical_seconds_per_window_is_the_window_weighted_median():
    assert typical_seconds_per_window([]) is None and typical_seconds_per_window([(0.5, 0)]) is None
    assert typical_seconds_per_window([(0.001, 3), (0.5, 1), (0.002, 3)]) == 0.002
    # a batch of many windows weighs as many windows
    assert typical_seconds_per_window([(0.001, 1), (0.004, 5), (0.002, 1)]) == 0.004
    assert typical_seconds_per_window([(0.001, 1), (0.003, 1)]) == 0.001  # the lower middle


def test_one_stalled_batch_does_not_roll_back_but_a_slower_model_does():
    """The wall time of a batch also holds stalls of the whole process (GC, I/O, other
    threads): one such batch among the health check's is not the model being slow."""
    h = HealthCheck(8, 0.5, 5, 0.0, 0.001)
    for _ in range(7):
        h.add(Pack(), [_p("normal")], 0.0011)
    h.add(Pack(), [_p("normal")], 0.2)  # 200x for one window: the mean would be 26x
    assert h.problem() is None and h.passed and h.figures()["latency_ratio"] == pytest.approx(1.1)
    slow = HealthCheck(8, 0.5, 5, 0.0, 0.001)
    for s in [0.0011, 0.2, 0.006, 0.007, 0.0012, 0.008, 0.006, 0.009]:  # most windows 6-9x
        slow.add(Pack(), [_p("normal")], s)
    assert "inference time 6.00x" in slow.problem()  # the 4th of 8 sorted


def test_the_previous_models_yardstick_is_its_typical_time_too():
    r = RecentHits(50)
    for _ in range(20):
        r.add([False], 0.001)
    r.add([False], 0.5)
    assert r.seconds_per_window == 0.001


def test_recent_hits_is_bounded():
    r = RecentHits(5)
    r.add([True] * 10 + [False] * 5, 0.015)
    assert r.rate == 0.0 and r.seconds_per_window == pytest.approx(0.001)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("num_threads", [1, 2])
def test_the_compute_clock_leaves_out_garbage_collection(num_threads):
    """A collection triggered in a batch walks the whole process's objects (with 50 agents in
    one process, up to 280 ms against ~1 ms of model): not the model's time."""
    clock = compute_clock(num_threads)
    raw = time.thread_time if num_threads == 1 else time.perf_counter
    junk = [_Cycle() for _ in range(300_000)]
    del junk  # cyclic garbage: only a collection frees it
    c0, r0 = clock(), raw()
    x = sum(i * i for i in range(20_000))  # some work of the batch's own
    gc.collect()
    spent, collected = clock() - c0, raw() - r0
    assert x > 0 and collected > 0.02, f"the collection took only {collected:.4f} s: nothing to leave out"
    assert spent < 0.5 * collected, f"clock {spent:.4f} s of {collected:.4f} s, the collection included"
    assert spent > 0  # the batch's own work is still counted


def test_a_collection_is_charged_to_the_thread_that_ran_it():
    from edge_agent import model_watch

    compute_clock(1)  # installs the collector's callback
    me = threading.get_ident()
    mine = model_watch._GcTime.cpu.get(me, 0.0)
    other: list[int] = []

    def collect_elsewhere():
        other.append(threading.get_ident())
        junk = [_Cycle() for _ in range(100_000)]
        del junk
        gc.collect()

    gc.disable()  # no collection of our own meanwhile
    try:
        t = threading.Thread(target=collect_elsewhere)
        t.start()
        t.join()
    finally:
        gc.enable()
    assert model_watch._GcTime.cpu.get(me, 0.0) == mine
    assert model_watch._GcTime.cpu.get(other[0], 0.0) > 0
