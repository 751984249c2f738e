"""The interim model: distance of a window's features from the channel's healthy baseline.

Why: until model packs land (issue #5) the pipeline still needs a real model stage. This
one learns, per channel, the mean and spread of a few scale-free time-domain features over
the first ``baseline_windows`` windows (assumed healthy: the agent starts on a healthy
machine) and scores each later window by its largest standardised deviation,

    anomaly_score = max_j |f_j - mu_j| / max(sigma_j, rel_floor * |mu_j|, abs_floor),

with log applied to the scale features (rms, peak) so the score measures ratios. The
floors keep a near-constant baseline feature from turning noise into huge scores. The
model packs' anomaly score replaces this, through the same :class:`Prediction`.
"""
from __future__ import annotations

from typing import Any
from dataclasses import dataclass, field

import numpy as np

from edge_agent.features import TIME_FEATURES

# Features used and whether to take the log first (scale features).
_USED = (("rms", True), ("peak", True), ("crest", False), ("kurtosis", False), ("impulse", False), ("clearance", False))
_IDX = np.array([TIME_FEATURES.index(name) for name, _ in _USED])
_LOG = np.array([is_log for _, is_log in _USED])
REL_FLOOR = 0.05
ABS_FLOOR = 0.02

MODEL_VERSION = "baseline-0.1"


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str  # "learning" while the baseline is being learnt, then "normal" or "anomaly"
    anomaly_score: float
    scores: dict[str, float] = field(default_factory=dict)
    # (feature, value, baseline mean) of the features that deviate most, for explanations
    top_deviations: tuple[tuple[str, float, float, float], ...] = ()
    inputs: Any = None  # the model's input row (a pack's features, manifest order), for explanations


@dataclass(slots=True)
class _ChannelBaseline:
    rows: list[np.ndarray] = field(default_factory=list)
    mu: np.ndarray | None = None
    scale: np.ndarray | None = None


class BaselineModel:
    version = MODEL_VERSION
    labels = ("normal", "anomaly")

    def __init__(self, baseline_windows: int, threshold: float) -> None:
        self.baseline_windows = baseline_windows
        self.threshold = threshold
        self._channels: dict[str, _ChannelBaseline] = {}

    @staticmethod
    def _transform(features: np.ndarray) -> np.ndarray:
        f = features[..., _IDX].astype(np.float64, copy=True)
        f[..., _LOG] = np.log(np.maximum(f[..., _LOG], 1e-9))
        return f

    def is_learning(self, channel: str) -> bool:
        ch = self._channels.get(channel)
        return ch is None or ch.mu is None

    def predict(self, features: np.ndarray, channels: list[str]) -> list[Prediction]:
        """One prediction per row of ``features`` (rows as from FeatureExtractor)."""
        f = self._transform(features)
        out: list[Prediction] = []
        for row, raw, channel in zip(f, features, channels):
            ch = self._channels.setdefault(channel, _ChannelBaseline())
            if ch.mu is None:
                ch.rows.append(row)
                if len(ch.rows) >= self.baseline_windows:
                    stack = np.vstack(ch.rows)
                    ch.mu = stack.mean(axis=0)
                    ch.scale = np.maximum(np.maximum(stack.std(axis=0), REL_FLOOR * np.abs(ch.mu)), ABS_FLOOR)
                    ch.rows.clear()
                out.append(Prediction(label="learning", anomaly_score=0.0))
                continue
            z = np.abs(row - ch.mu) / ch.scale
            if not np.all(np.isfinite(z)):
                z = np.where(np.isfinite(z), z, np.inf)
            score = float(z.max())
            order = np.argsort(z)[::-1][:3]
            top = tuple(
                (_USED[j][0], float(raw[_IDX[j]]), float(np.exp(ch.mu[j]) if _LOG[j] else ch.mu[j]), float(z[j]))
                for j in order
            )
            label = "anomaly" if score >= self.threshold else "normal"
            out.append(Prediction(label=label, anomaly_score=score, scores={}, top_deviations=top))
        return out
