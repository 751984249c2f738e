"""Feature extraction stage: one feature vector per window, computed by the compiled ext/.

This module is the typed Python face of the Cython hot loop; importing it without a built
extension raises :class:`edge_agent.native.NativeExtensionMissing` (never a slow fallback).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent import native
from edge_agent.window import Window

_time_domain = native.load("time_domain")

TIME_FEATURES: tuple[str, ...] = tuple(_time_domain.FEATURE_NAMES)


def time_features(samples: np.ndarray) -> np.ndarray:
    """Time-domain features of one window (float64, ordered as :data:`TIME_FEATURES`)."""
    x = np.ascontiguousarray(samples)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    out = np.empty(len(TIME_FEATURES), dtype=np.float64)
    _time_domain.time_features(x, out)
    return out


class FeatureExtractor:
    """Feature vectors for a batch of windows, as one (n_windows, n_features) array."""

    names: tuple[str, ...] = TIME_FEATURES

    def extract(self, windows: Sequence[Window]) -> np.ndarray:
        out = np.empty((len(windows), len(self.names)), dtype=np.float64)
        for i, w in enumerate(windows):
            _time_domain.time_features(w.samples, out[i])
        return out
