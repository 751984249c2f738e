"""The processing stage's drift monitor: what the agent feeds per batch, and what it gets back
at summary time (issue #6).

Per batch of scored, unflagged windows: their model inputs go into the interval's KLL sketches
per regime (sketches.py), with exact counts in the pack's PSI bins; the model's anomaly score
and confidence go to the score-drift detectors (change_detect.py: Page-Hinkley and ADWIN, per
channel), whose alarms come back as ``drift`` alert messages at once. At each summary: the
interval's sketches (DataSketches bytes, base64) and drift statistics (PSI and KS against the
pack's reference, per regime; drift.py) for the summary, and ``drift`` alerts raised or cleared
by the regimes' hysteresis. A window's inference latency (the features and model time of the
batch it was scored in) goes into a KLL sketch too: p50/p99 per interval.

Flagged windows (data quality) are left out: a stuck or clipping sensor is a data-quality
alert, not drift. Channels are pooled in the sketches (the pack's model is the same on every
channel, and per-channel sketches would multiply the summary's size); the score detectors are
per channel.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from edge_agent.drift import DriftAlerts, DriftThresholds, Profile, RecentWindows, evaluate
from edge_agent.sketches import FeatureSketches, Regimes, encode

log = logging.getLogger(__name__)
SCORE_STREAMS = ("anomaly_score", "confidence")


class DriftMonitor:
    def __init__(self, cfg: Any, names: Sequence[str], profile: Profile | None, model_version: str) -> None:
        d = cfg.drift
        self.enabled = bool(d.enabled)
        self.names = list(names)
        self.profile = profile
        self.k = int(d.k)
        self.regimes = Regimes(d.speed_bins_rpm)
        self.bounds = {n: self.regimes.bounds(n) for n in self.regimes.names}
        bins, regime_bins = None, None
        if profile:
            bins = {f: profile.features[f]["edges"] for f in profile.monitored}
            regime_bins = {}
            for n, (lo, hi) in self.bounds.items():
                _, feats, watched = profile.reference_for(lo, hi)
                regime_bins[n] = {f: feats[f]["edges"] for f in watched if f in feats}
        self.sketches = FeatureSketches(self.names, self.k, self.regimes, bins, regime_bins)
        self.judge_every = int(d.judge_every)
        self._recent: dict[int, RecentWindows] = {}  # regime index -> its last windows (monitored features)
        self._monitored_cols = bool(profile)
        self.judgements = 0
        self.thresholds = DriftThresholds(d.psi_warn, d.psi_drift, d.min_windows)
        self.alerts = DriftAlerts(d.raise_after, d.raise_window, d.clear_after, model_version)
        self.model_version = model_version
        self._latency = _kll(self.k)
        self.detectors = None
        if self.enabled and d.score_detectors:
            from edge_agent.change_detect import ScoreDriftDetectors

            self.detectors = ScoreDriftDetectors(streams=SCORE_STREAMS)
        self.score_alarms = 0
        self.alarm_counts: dict[str, int] = {}  # "stream/detector" -> alarms since start
        self.last: dict | None = None  # the last summary's drift block (status)

    @classmethod
    def for_model(cls, cfg: Any, model: Any, extractor: Any) -> "DriftMonitor":
        """The monitor for a model: a pack's inputs and drift profile, or the baseline
        scorer's whole feature vector and no reference (sketches only)."""
        if getattr(model, "pack", None) is not None:  # a PackScorer: it parsed the profile at load
            names, profile = list(model.model.feature_names), model.profile
            if profile is None:
                log.info("model %s has no usable drift profile: sketches only, no drift statistics", model.version)
        else:
            names, profile = list(extractor.names), None
        return cls(cfg, names, profile, model.version)

    def open_alerts(self) -> list[dict]:
        return self.alerts.open_alerts()

    def observe(self, channels: Sequence[str], rpm: np.ndarray, features: np.ndarray,
                anomaly: np.ndarray, confidence: np.ndarray, latency_s: float) -> list[dict]:
        """One batch of scored, unflagged windows (rows in the same order): sketch the
        features, run the score detectors; return the detectors' drift alert messages."""
        if not self.enabled or len(features) == 0:
            return []
        self.sketches.update(features, rpm)
        self._latency.update(np.full(len(features), latency_s * 1000.0, dtype=np.float32))
        msgs = self._judge_recent(features, rpm)
        if self.detectors is None:
            return msgs
        # one detector pair per channel *and regime*: a change of speed moves the scores to
        # another regime's detectors instead of looking like a change point
        regime = self.regimes.index(rpm)
        keys = [f"{ch}@{self.regimes.names[r]}" for ch, r in zip(channels, regime.tolist())]
        keyarr = np.asarray(keys)
        for key in dict.fromkeys(keys):  # each (channel, regime)'s rows, in order
            rows = keyarr == key
            for alarm in self.detectors.update_streams(key, {"anomaly_score": anomaly[rows],
                                                             "confidence": confidence[rows]}):
                self.score_alarms += 1
                key = f"{alarm.stream}/{alarm.detector}"
                self.alarm_counts[key] = self.alarm_counts.get(key, 0) + 1
                msg = self.alerts.score_alarm({
                    "channel": alarm.channel, "stream": alarm.stream, "detector": alarm.detector,
                    "before": alarm.estimation_before if alarm.estimation_before is not None else float("nan"),
                    "after": alarm.estimation_after if alarm.estimation_after is not None else float("nan")})
                if msg is not None:
                    msgs.append(msg)
        return msgs

    def _judge_recent(self, features: np.ndarray, rpm: np.ndarray) -> list[dict]:
        """Add the rows to their regime's recent windows; judge the regimes that are due."""
        if self.profile is None or not self._monitored_cols:
            return []
        msgs = []
        idx = self.regimes.index(rpm)
        for r in sorted(set(idx.tolist())):  # not np.unique: its first call imports numpy.ma (~15 ms)
            recent = self._recent.get(r)
            name = self.regimes.names[r]
            if recent is None:
                _, feats, watched = self.profile.reference_for(*self.bounds[name])
                recent = self._recent[r] = RecentWindows(watched, feats, self.thresholds.min_windows, self.judge_every)
            if not recent.names:
                continue
            cols = [self.names.index(f) for f in recent.names]
            if recent.add(features[idx == r][:, cols]):
                self.judgements += 1
                msgs += self.alerts.judged(name, recent.judge(self.thresholds), self.bounds[name])
        return msgs

    def summarize(self) -> tuple[dict, list[dict]]:
        """The summary's ``sketches``, ``drift`` and ``inference`` parts for the interval that
        ends now, and the drift alert messages (raised or cleared) of its judgement."""
        if not self.enabled:
            return {"drift": {"status": "disabled"}}, []
        taken = self.sketches.take()
        result = evaluate(taken, self.profile, self.thresholds, self.bounds)
        result["score_detectors"] = ({"alarms": dict(self.alarm_counts), "streams": list(SCORE_STREAMS),
                                      "detectors": ["page_hinkley", "adwin"]} if self.detectors else None)
        msgs = self.alerts.clear_quiet_scores()  # feature drift alerts come from the recent windows' judgements
        result["recent"] = {self.regimes.names[r]: rw.judge(self.thresholds, ks_always=True) for r, rw in sorted(self._recent.items())
                            if rw.count >= rw.size}
        self.last = result
        lat = self._latency
        inference = {"windows": int(lat.n)}
        if not lat.is_empty():
            p50, p99 = lat.get_quantiles([0.5, 0.99])
            inference["latency_ms"] = {"p50": round(float(p50), 3), "p99": round(float(p99), 3),
                                       "what": "features + model time of the batch each window was scored in"}
        self._latency = _kll(self.k)
        part = {"sketches": encode(taken, self.regimes, self.k), "drift": result, "inference": inference}
        if self.sketches.nonfinite:
            part["sketches"]["nonfinite_values"] = self.sketches.nonfinite
        return part, msgs


def _kll(k: int):
    from datasketches import kll_floats_sketch

    return kll_floats_sketch(k)
