"""Alert rules: turn per-window predictions into raised and cleared alerts, with hysteresis.

An alert is raised when at least ``raise_after`` of the last ``raise_window`` windows of a
channel are anomalous (k of n), and cleared after ``clear_after`` consecutive quiet windows,
so one noisy window neither raises nor clears. At most one alert is open per device,
channel and type. Each alert carries an explanation a technician can act on.

This is the pipeline's minimal engine; issue #7 adds per-label rules, ISO 10816 zones and
the technicians' local log on top of the same messages.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from edge_agent.baseline import Prediction
from edge_agent.window import Window

SCHEMA = 1


@dataclass(slots=True)
class _ChannelState:
    recent: deque[bool]
    quiet: int = 0
    open_alert: dict | None = None


@dataclass(slots=True)
class AlertRules:
    raise_after: int
    raise_window: int
    clear_after: int
    threshold: float
    model_version: str
    _channels: dict[str, _ChannelState] = field(default_factory=dict)

    def open_alerts(self) -> list[dict]:
        return [st.open_alert for st in self._channels.values() if st.open_alert is not None]

    def update(self, window: Window, pred: Prediction) -> list[dict]:
        """Feed one window's prediction; return alert messages (raised or cleared) it causes."""
        if pred.label == "learning":
            return []
        st = self._channels.get(window.channel)
        if st is None:
            st = self._channels[window.channel] = _ChannelState(recent=deque(maxlen=self.raise_window))
        hit = pred.anomaly_score >= self.threshold
        st.recent.append(hit)
        st.quiet = 0 if hit else st.quiet + 1
        if st.open_alert is None and sum(st.recent) >= self.raise_after:
            st.open_alert = self._raised(window, pred)
            return [st.open_alert]
        if st.open_alert is not None and st.quiet >= self.clear_after:
            cleared = dict(st.open_alert, state="cleared", cleared_at=time.time())
            st.open_alert = None
            st.recent.clear()
            return [cleared]
        return []

    def _raised(self, window: Window, pred: Prediction) -> dict:
        severity = "alarm" if pred.anomaly_score >= 2 * self.threshold else "warning"
        parts = [
            f"{name} {value:.3g} vs healthy {base:.3g} ({z:.1f} sigma)" for name, value, base, z in pred.top_deviations
        ]
        explanation = (
            f"anomaly score {pred.anomaly_score:.1f} (threshold {self.threshold:g}) on {window.channel} "
            f"at {window.rpm:.0f} rpm"
        )
        if parts:
            explanation += ": " + "; ".join(parts)
        return {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "state": "open",
            "severity": severity,
            "type": "anomaly",
            "label": pred.label,
            "channel": window.channel,
            "anomaly_score": round(pred.anomaly_score, 3),
            "rpm": round(window.rpm, 1),
            "window_t_start_us": window.t_start_us,
            "explanation": explanation,
            "model_version": self.model_version,
        }
