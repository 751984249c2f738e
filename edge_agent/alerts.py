"""Alert rules: turn per-window predictions into raised and cleared alerts, with hysteresis.

An alert is raised when at least ``raise_after`` of the last ``raise_window`` windows of a
channel are anomalous (k of n), and cleared after ``clear_after`` consecutive quiet windows,
so one noisy window neither raises nor clears. At most one alert is open per device,
channel and type. Each alert carries an explanation a technician can act on.

Rules per alert type (``[[alert_rule]]`` in the config): each type, a label of the model
pack or ``anomaly``, can have its own k of n, clear count and fixed severity, or be
switched off; a type without a rule uses ``[alerts]``. ISO 10816-21 zone rules
(iso_zones.py) and the technicians' local log (alert_log.py) use the same messages.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

    def adopt(self, channel: str, alert: dict) -> bool:
        """Take over an alert raised before (a restart, a model switch) as this channel's
        open alert: it stays open under its id and clears after ``clear_after`` quiet
        windows; no second alert is raised meanwhile. False when one is open already."""
        st = self._channels.get(channel)
        if st is None:
            st = self._channels[channel] = _ChannelState(recent=deque(maxlen=self.raise_window))
        if st.open_alert is not None:
            return False
        st.open_alert = alert
        return True

    def step(self, channel: str, hit: str | None, make_alert: Callable[[str], dict]) -> list[dict]:
        st = self._channels.get(channel)
        if st is None:
            st = self._channels[channel] = _ChannelState(recent=deque(maxlen=self.raise_window))
        st.recent.append(hit)
        st.quiet = 0 if hit else st.quiet + 1
        # a quiet window is None, a hit its type: count in C, list the hits only to raise
        if st.open_alert is None and len(st.recent) - st.recent.count(None) >= self.raise_after:
            st.open_alert = make_alert(Counter(k for k in st.recent if k).most_common(1)[0][0])
            return [st.open_alert]
        if st.open_alert is not None and st.quiet >= self.clear_after:
            cleared = dict(st.open_alert, state="cleared", cleared_at=time.time())
            st.open_alert = None
            st.recent.clear()
            return [cleared]
        return []


SEVERITIES = ("info", "warning", "alarm")


@dataclass(frozen=True, slots=True)
class TypeRule:
    """How one alert type is raised and cleared. ``severity`` "auto" keeps what the rule set
    judged (warning, or alarm for a strong hit); another value replaces it."""

    raise_after: int
    raise_window: int
    clear_after: int
    severity: str = "auto"
    enabled: bool = True


def type_rules(cfg: Any) -> tuple[TypeRule, dict[str, TypeRule]]:
    """The default rule (``[alerts]``) and each ``[[alert_rule]]`` by type; a rule's 0
    means "as in [alerts]"."""
    a = cfg.alerts
    default = TypeRule(a.raise_after, a.raise_window, a.clear_after)
    rules = {r.type: TypeRule(r.raise_after or a.raise_after, r.raise_window or a.raise_window,
                              r.clear_after or a.clear_after, r.severity, r.enabled)
             for r in getattr(cfg, "alert_rules", ())}
    return default, rules


@dataclass(slots=True)
class TypedHysteresis:
    """One :class:`Hysteresis` per alert type, each with its type's rule: at most one open
    alert per channel and type, and each type keeps its own k-of-n history."""

    default: TypeRule
    rules: dict[str, TypeRule] = field(default_factory=dict)
    _by_type: dict[str, Hysteresis] = field(default_factory=dict)

    def rule(self, kind: str) -> TypeRule:
        return self.rules.get(kind, self.default)

    def open_alerts(self) -> list[dict]:
        return [a for h in self._by_type.values() for a in h.open_alerts()]

    def _for(self, kind: str) -> Hysteresis:
        h = self._by_type.get(kind)
        if h is None:
            rule = self.rule(kind)
            h = self._by_type[kind] = Hysteresis(rule.raise_after, rule.raise_window, rule.clear_after)
        return h

    def adopt(self, alert: dict) -> bool:
        """:meth:`Hysteresis.adopt` for the alert's type and channel."""
        kind, channel = alert.get("type"), alert.get("channel")
        if not isinstance(kind, str) or not isinstance(channel, str) or not isinstance(alert.get("id"), str):
            return False
        return self._for(kind).adopt(channel, alert)

    def step(self, channel: str, kind: str, hit: bool, make_alert: Callable[[str], dict]) -> list[dict]:
        rule = self.rule(kind)
        h = self._for(kind)
        msgs = h.step(channel, kind if hit and rule.enabled else None, make_alert)
        if rule.severity != "auto":
            for m in msgs:
                if m["state"] == "open":
                    m["severity"] = rule.severity
        return msgs


@dataclass(slots=True)
class AlertRules:
    """The baseline scorer's rules: a hit is an anomaly score at or above ``threshold``."""

    raise_after: int
    raise_window: int
    clear_after: int
    threshold: float
    model_version: str
    rules: dict[str, TypeRule] = field(default_factory=dict)  # by type ("anomaly" here)
    _hysteresis: TypedHysteresis | None = None

    def __post_init__(self) -> None:
        self._hysteresis = TypedHysteresis(TypeRule(self.raise_after, self.raise_window, self.clear_after),
                                           self.rules)

    def open_alerts(self) -> list[dict]:
        return self._hysteresis.open_alerts()

    def adopt(self, alert: dict) -> bool:
        """An open ``anomaly`` alert of a previous run or model continues here (True)."""
        return alert.get("type") == "anomaly" and self._hysteresis.adopt(alert)

    def update(self, window: Window, pred: Prediction) -> list[dict]:
        """Feed one window's prediction; return alert messages (raised or cleared) it causes."""
        if pred.label == "learning":
            return []
        hit = pred.anomaly_score >= self.threshold
        return self._hysteresis.step(window.channel, "anomaly", hit, lambda _type: self._raised(window, pred))

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
