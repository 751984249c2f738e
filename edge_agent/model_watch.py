"""Judging a model on live windows: the shadow gate before a candidate takes over, and the
health check after it did (docs/UPDATES.md, "Shadow, activation, health, rollback").

Both only count; they never score. The agent scores each batch with the active model and,
in shadow, with the candidate too, and hands both predictions here. A *hit* is a window
that counts toward an alert (``hit_of``): the pack's rule (a fault label with enough
confidence, or an anomaly score at or above the pack's threshold), or for the built-in
baseline an anomaly score at or above its threshold. Rates are hits / windows.

Shadow gate (over ``shadow_windows`` candidate windows):
  agreement = matched windows with the same top label / matched windows (only when both
              models are packs with the same labels; else not judged and reported ``None``)
  extra alert rate = candidate hit rate - active hit rate
  latency ratio = candidate seconds per window / active seconds per window (each the
              window-weighted median over batches, ``typical_seconds_per_window``)
  pass = no NaN/Inf, agreement >= min (when judged), extra alert rate <= max, ratio <= max.
The anomaly-score distributions are reported (p50, p99 and the two-sample KS statistic
D = sup |F_a(x) - F_c(x)|, Massey 1951) for the operator; a new model may have another
score scale, so they are not gated.

Health check (over ``health_windows`` windows after an activation): roll back on a
processing error, a NaN/Inf output, typical seconds per window beyond ``max_latency_ratio``
x the previous model's (over its last batches), or a hit rate beyond ``max_alert_rate`` when
the previous model's recent hit rate was below it (a model that calls every window a fault; a real fault already seen
by the previous model is not held against the new one).

Inference time is the compute a batch's features and model took: the processing thread's
CPU time (``compute_clock``) when the interpreter runs on that thread (``num_threads`` 1,
the default), else wall time. Wall time also counts waiting, for the GIL held by other
threads or for a core taken by other processes, which says nothing about the model: in a
process busy verifying a pack on another thread, a batch's wall time grew 10-50x with the
same model (50 agents in one process, tests/test_fleet_rollout.py).
It is compared as a median, not a mean: a batch's time can also hold whatever else stalled
the thread (page faults after an SD card write, and with wall time other threads holding the
GIL), and one such batch in a short check would otherwise read as a model several times
slower. The median moves only when at least half of the windows are slower, which a slower
model does and a passing stall does not.

The clock also leaves out the time the thread spent in Python's cyclic garbage collector
(``gc.callbacks``): a collection runs in whichever thread's allocation triggers it, and it
walks every tracked object of the process, whatever allocated them. Measured with 50 agents
in one process (tests/test_fleet_rollout.py): a generation-2 collection took up to 280 ms of
CPU and a generation-1 one up to 20 ms, against ~1 ms of features and model for a batch. One
such collection in a batch holding half of a short check's windows rolled back a good model
("inference time 25.63x the previous model's", a clean-clone run on 2026-12-03).
"""
from __future__ import annotations

import gc
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.baseline import Prediction


def hit_of(model: Any, pred: Prediction) -> bool:
    """Does this window count toward an alert with this model?"""
    hit = getattr(model, "hit", None)
    if hit is not None:
        return hit(pred) is not None
    return pred.label != "learning" and pred.anomaly_score >= model.threshold


def finite(pred: Prediction) -> bool:
    return math.isfinite(pred.anomaly_score) and all(math.isfinite(v) for v in pred.scores.values())


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D over the pooled sample points."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, "right") / len(a) - np.searchsorted(b, x, "right") / len(b))))


def compute_clock(num_threads: int) -> Callable[[], float]:
    """The clock that times a batch's compute for the model comparisons (see above): the
    calling thread's CPU time, or with more interpreter threads (their work is not on the
    calling thread's clock) wall time; either without the time this thread spent collecting
    garbage."""
    _GcTime.install()
    if num_threads == 1:
        return lambda: time.thread_time() - _GcTime.cpu.get(threading.get_ident(), 0.0)
    return lambda: time.perf_counter() - _GcTime.wall.get(threading.get_ident(), 0.0)


class _GcTime:
    """Seconds each thread has spent in the cyclic garbage collector (CPU and wall), from
    ``gc.callbacks``; installed once per process. A collection runs start to stop in the
    thread that triggered it, holding the GIL, so a thread's entries are only written by it."""

    cpu: dict[int, float] = {}
    wall: dict[int, float] = {}
    _started: dict[int, tuple[float, float]] = {}
    _installed = False
    _lock = threading.Lock()

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if not cls._installed:
                gc.callbacks.append(cls._callback)
                cls._installed = True

    @classmethod
    def _callback(cls, phase: str, info: dict) -> None:
        tid = threading.get_ident()
        if phase == "start":
            cls._started[tid] = (time.thread_time(), time.perf_counter())
            return
        started = cls._started.pop(tid, None)
        if started is not None:
            cls.cpu[tid] = cls.cpu.get(tid, 0.0) + time.thread_time() - started[0]
            cls.wall[tid] = cls.wall.get(tid, 0.0) + time.perf_counter() - started[1]


def typical_seconds_per_window(batches: Sequence[tuple[float, int]]) -> float | None:
    """The window-weighted median of (seconds per window, windows) over batches: the seconds
    per window of the window at the middle when all windows are sorted by their batch's."""
    batches = [(spw, n) for spw, n in batches if n > 0]
    if not batches:
        return None
    batches.sort()
    half, seen = sum(n for _, n in batches) / 2, 0
    for spw, n in batches:
        seen += n
        if seen >= half:
            return spw
    return batches[-1][0]


def _batch(seconds: float, n: int) -> tuple[float, int]:
    return (seconds / n if n else 0.0, n)


def _quantiles(x: np.ndarray) -> dict[str, float | None]:
    if len(x) == 0:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(x, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}


class RecentHits:
    """The running model's last n windows as hit / no hit: the health check's yardstick."""

    def __init__(self, n: int) -> None:
        self._hits: deque[bool] = deque(maxlen=n)
        self._batches: deque[tuple[float, int]] = deque(maxlen=n)

    def add(self, hits: Sequence[bool], seconds: float) -> None:
        self._hits.extend(hits)
        if hits:
            self._batches.append(_batch(seconds, len(hits)))

    @property
    def rate(self) -> float | None:
        return sum(self._hits) / len(self._hits) if self._hits else None

    @property
    def seconds_per_window(self) -> float | None:
        """Typical seconds per window over the last batches (at most n of them)."""
        return typical_seconds_per_window(self._batches)


@dataclass
class ShadowGate:
    windows: int
    min_agreement: float
    max_extra_alert_rate: float
    max_latency_ratio: float
    compare_labels: bool  # both packs with the same labels
    active_n: int = 0
    active_hits: int = 0
    active_batches: list[tuple[float, int]] = field(default_factory=list)
    cand_n: int = 0
    cand_hits: int = 0
    cand_batches: list[tuple[float, int]] = field(default_factory=list)
    matched: int = 0
    agreed: int = 0
    nonfinite: int = 0
    active_scores: list[float] = field(default_factory=list)
    cand_scores: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.cand_n >= self.windows or self.nonfinite > 0

    def add_active(self, model: Any, preds: Sequence[Prediction], seconds: float) -> None:
        preds = [p for p in preds if p.label != "learning"]
        self.active_n += len(preds)
        self.active_hits += sum(hit_of(model, p) for p in preds)
        self.active_batches.append(_batch(seconds, len(preds)))
        self.active_scores += [p.anomaly_score for p in preds if math.isfinite(p.anomaly_score)]

    def add_candidate(self, model: Any, preds: Sequence[Prediction], seconds: float,
                      active: Sequence[Prediction | None] = ()) -> None:
        """``active``: the active model's prediction of the same window, when it had one."""
        self.cand_n += len(preds)
        self.cand_batches.append(_batch(seconds, len(preds)))
        for i, p in enumerate(preds):
            if not finite(p):
                self.nonfinite += 1
                continue
            self.cand_hits += hit_of(model, p)
            self.cand_scores.append(p.anomaly_score)
            a = active[i] if i < len(active) else None
            if self.compare_labels and a is not None and a.label != "learning":
                self.matched += 1
                self.agreed += a.label == p.label

    def figures(self) -> dict[str, Any]:
        a_rate = self.active_hits / self.active_n if self.active_n else 0.0
        c_rate = self.cand_hits / self.cand_n if self.cand_n else 0.0
        a_spw = typical_seconds_per_window(self.active_batches)
        c_spw = typical_seconds_per_window(self.cand_batches)
        a_sc, c_sc = np.asarray(self.active_scores), np.asarray(self.cand_scores)
        return {
            "windows": self.cand_n,
            "agreement": round(self.agreed / self.matched, 4) if self.compare_labels and self.matched else None,
            "matched_windows": self.matched,
            "active_alert_rate": round(a_rate, 4),
            "candidate_alert_rate": round(c_rate, 4),
            "latency_ratio": round(c_spw / a_spw, 3) if a_spw and c_spw else None,
            "nonfinite": self.nonfinite,
            "anomaly_score": {"active": _quantiles(a_sc), "candidate": _quantiles(c_sc),
                              "ks": round(ks_statistic(a_sc, c_sc), 4) if len(a_sc) and len(c_sc) else None},
        }

    def verdict(self) -> tuple[bool, str]:
        """(passed, why not): judged once ``done``."""
        f = self.figures()
        if self.nonfinite:
            return False, f"the candidate gave NaN/Inf outputs on {self.nonfinite} windows"
        if f["agreement"] is not None and f["agreement"] < self.min_agreement:
            return False, f"agreement {f['agreement']:.3f} with the active model is below {self.min_agreement:g}"
        extra = f["candidate_alert_rate"] - f["active_alert_rate"]
        if extra > self.max_extra_alert_rate:
            return False, (f"alert-window rate {f['candidate_alert_rate']:.3f} against the active model's "
                           f"{f['active_alert_rate']:.3f}: +{extra:.3f}, more than {self.max_extra_alert_rate:g}")
        if f["latency_ratio"] is not None and f["latency_ratio"] > self.max_latency_ratio:
            return False, f"inference time {f['latency_ratio']:.2f}x the active model's, more than {self.max_latency_ratio:g}x"
        return True, ""


@dataclass
class HealthCheck:
    windows: int
    max_alert_rate: float
    max_latency_ratio: float
    previous_alert_rate: float | None  # the previous model's recent hit rate
    previous_seconds_per_window: float | None
    n: int = 0
    hits: int = 0
    batches: list[tuple[float, int]] = field(default_factory=list)
    nonfinite: int = 0
    errors: int = 0

    def add(self, model: Any, preds: Sequence[Prediction], seconds: float) -> None:
        preds = [p for p in preds if p.label != "learning"]
        self.n += len(preds)
        self.batches.append(_batch(seconds, len(preds)))
        for p in preds:
            if not finite(p):
                self.nonfinite += 1
            elif hit_of(model, p):
                self.hits += 1

    def add_error(self) -> None:
        self.errors += 1

    def figures(self) -> dict[str, Any]:
        spw = typical_seconds_per_window(self.batches)
        prev = self.previous_seconds_per_window
        return {"windows": self.n, "alert_rate": round(self.hits / self.n, 4) if self.n else None,
                "previous_alert_rate": None if self.previous_alert_rate is None else round(self.previous_alert_rate, 4),
                "latency_ratio": round(spw / prev, 3) if spw and prev else None,
                "nonfinite": self.nonfinite, "processing_errors": self.errors}

    def problem(self) -> str | None:
        """The reason to roll back now, else None (checked after every batch)."""
        if self.errors:
            return f"{self.errors} processing error(s) with the new model"
        if self.nonfinite:
            return f"NaN/Inf outputs on {self.nonfinite} windows"
        if self.n < self.windows:
            return None
        f = self.figures()
        if f["latency_ratio"] is not None and f["latency_ratio"] > self.max_latency_ratio:
            return f"inference time {f['latency_ratio']:.2f}x the previous model's, more than {self.max_latency_ratio:g}x"
        prev = self.previous_alert_rate
        if f["alert_rate"] > self.max_alert_rate and (prev is None or prev <= self.max_alert_rate):
            return (f"alert-window rate {f['alert_rate']:.3f} over {self.n} windows, more than {self.max_alert_rate:g} "
                    f"(previous model: {'unknown' if prev is None else f'{prev:.3f}'})")
        return None

    @property
    def passed(self) -> bool:
        return self.n >= self.windows and self.problem() is None
