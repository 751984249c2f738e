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
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.baseline import Prediction
from edge_agent.window import Window

SCHEMA = 1


@dataclass(slots=True)
class _ChannelState:
    recent: deque  # alert type of each recent window, None when it was no hit
    quiet: int = 0
    open_alert: dict | None = None


@dataclass(slots=True)
class Hysteresis:
    """k of n to raise, m quiet in a row to clear, at most one open alert per channel.

    ``step`` takes each window's hit (an alert type, or None for a quiet window); when
    ``raise_after`` of the last ``raise_window`` windows are hits it calls ``make_alert``
    with the most frequent hit type among them and opens that alert; after ``clear_after``
    quiet windows in a row it clears it. Shared by every rule set, so the behaviour is one."""

    raise_after: int
    raise_window: int
    clear_after: int
    _channels: dict[str, _ChannelState] = field(default_factory=dict)

    def open_alerts(self) -> list[dict]:
        return [st.open_alert for st in self._channels.values() if st.open_alert is not None]

    def step(self, channel: str, hit: str | None, make_alert: Callable[[str], dict]) -> list[dict]:
        st = self._channels.get(channel)
        if st is None:
            st = self._channels[channel] = _ChannelState(recent=deque(maxlen=self.raise_window))
        st.recent.append(hit)
        st.quiet = 0 if hit else st.quiet + 1
        hits = [k for k in st.recent if k]
        if st.open_alert is None and len(hits) >= self.raise_after:
            st.open_alert = make_alert(Counter(hits).most_common(1)[0][0])
            return [st.open_alert]
        if st.open_alert is not None and st.quiet >= self.clear_after:
            cleared = dict(st.open_alert, state="cleared", cleared_at=time.time())
            st.open_alert = None
            st.recent.clear()
            return [cleared]
        return []


@dataclass(slots=True)
class AlertRules:
    """The baseline scorer's rules: a hit is an anomaly score at or above ``threshold``."""

    raise_after: int
    raise_window: int
    clear_after: int
    threshold: float
    model_version: str
    _hysteresis: Hysteresis | None = None

    def __post_init__(self) -> None:
        self._hysteresis = Hysteresis(self.raise_after, self.raise_window, self.clear_after)

    def open_alerts(self) -> list[dict]:
        return self._hysteresis.open_alerts()

    def update(self, window: Window, pred: Prediction) -> list[dict]:
        """Feed one window's prediction; return alert messages (raised or cleared) it causes."""
        if pred.label == "learning":
            return []
        hit = "anomaly" if pred.anomaly_score >= self.threshold else None
        return self._hysteresis.step(window.channel, hit, lambda _type: self._raised(window, pred))

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
