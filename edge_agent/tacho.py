"""Shaft speed from a tachometer's pulse train (a once-per-revolution key or an encoder).

A tachometer channel carries pulses, not vibration: ``pulses_per_rev`` rising edges per
shaft revolution. The speed is 60 fs / (pulses_per_rev x mean samples between consecutive
rising edges), edges being crossings of the midpoint of the channel's recent range upwards
(a Schmitt trigger with 10% hysteresis either side, so noise on a flat top makes no edge).
Vectorised per block, with the last edge and trigger state carried across blocks, so a
revolution longer than a block still counts. When no edge has come for ``stale_s`` seconds
the shaft is taken as stopped (speed 0) rather than still turning at its last speed.
"""
from __future__ import annotations

import numpy as np


class TachoSpeed:
    def __init__(self, pulses_per_rev: int = 1, stale_s: float = 2.0) -> None:
        if pulses_per_rev < 1:
            raise ValueError(f"pulses_per_rev must be >= 1, got {pulses_per_rev}")
        self.pulses_per_rev = pulses_per_rev
        self.stale_s = stale_s
        self.rpm: float | None = None
        self._n = 0  # samples seen
        self._last_edge: int | None = None  # sample index of the last rising edge
        self._high = False  # trigger state after the last sample
        self._lo = np.inf
        self._hi = -np.inf

    def feed(self, x: np.ndarray, fs: float) -> float | None:
        """Take the next block of the pulse channel; return the speed (rpm) after it."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0 or not np.all(np.isfinite(x)):
            self._n += len(x)
            return self.rpm
        self._lo = min(self._lo, float(x.min()))
        self._hi = max(self._hi, float(x.max()))
        span = self._hi - self._lo
        if span <= 0:
            self._n += len(x)
            return self._stale_check(fs)
        mid = self._lo + 0.5 * span
        up, down = mid + 0.1 * span, mid - 0.1 * span
        # trigger state per sample: 1 above `up`, 0 below `down`, carried in between
        state = np.where(x >= up, 1.0, np.where(x <= down, 0.0, np.nan))
        if np.isnan(state[0]):
            state[0] = 1.0 if self._high else 0.0
        idx = np.where(~np.isnan(state), np.arange(len(state)), 0)
        np.maximum.accumulate(idx, out=idx)
        state = state[idx]  # forward-fill the hysteresis band
        prev = np.concatenate(([1.0 if self._high else 0.0], state[:-1]))
        edges = np.flatnonzero((state == 1.0) & (prev == 0.0)) + self._n
        self._high = bool(state[-1] == 1.0)
        if len(edges):
            points = edges if self._last_edge is None else np.concatenate(([self._last_edge], edges))
            if len(points) >= 2:
                period = (points[-1] - points[0]) / (len(points) - 1)
                self.rpm = 60.0 * fs / (self.pulses_per_rev * period)
            self._last_edge = int(edges[-1])
        self._n += len(x)
        return self._stale_check(fs)

    def _stale_check(self, fs: float) -> float | None:
        if self._last_edge is not None and (self._n - self._last_edge) / fs > self.stale_s:
            self.rpm = 0.0
        return self.rpm
