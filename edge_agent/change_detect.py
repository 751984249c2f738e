"""Score drift: Page-Hinkley and ADWIN change detectors on the model's per-window score streams.

The feature-drift check (drift.py) compares distributions against the pack's reference; this
module watches the *outputs* (an anomaly score, a confidence, one value per window and
channel) for a change of level, window by window, with two classical sequential tests. The
detectors are compiled (ext/change.pyx) and follow River's ``drift.PageHinkley`` and
``drift.ADWIN`` to the rounding: same parameters and defaults, same detections (held to River
by tests/test_change_detect.py; River itself is a test-only dependency: importing it costs
~110 MB of RSS and ~1 s, too much for the daemon).

**Page-Hinkley** (Page, "Continuous inspection schemes", Biometrika 41, 1954; Hinkley,
"Inference about the change-point from cumulative sum tests", Biometrika 58, 1971), with
m_t the mean of the values since the last reset, x_t included:

    U_t = alpha U_{t-1} + (x_t - m_t) - delta      "up"   when U_t - min_{s<=t} U_s > threshold
    L_t = alpha L_{t-1} + (x_t - m_t) + delta      "down" when max_{s<=t} L_s - L_t > threshold

tested once ``min_instances`` values have been seen. delta is the size of a change that is
tolerated; threshold (lambda) trades delay against false alarms, and is in the units of the
stream: the defaults (delta 0.005, threshold 50, alpha 1 - 1e-4, min_instances 30) are River's
and suit streams of order 1 to 10; a score in [0, 1] wants a smaller threshold.

**ADWIN** (Bifet & Gavalda, "Learning from time-changing data with adaptive windowing", SIAM
SDM 2007; ADWIN2's exponential histogram): a window W of recent values, kept as buckets of
2^i values (at most ``max_buckets`` per size), so memory and time are O(log |W|). Every
``clock`` values (once |W| > ``grace_period``), every split of W at a bucket boundary into
older W0 (n0 values) and newer W1 (n1), both at least ``min_window_length``, is tested:

    |mean(W0) - mean(W1)| > sqrt(2 m var(W) d') + (2/3) d' m,
    m = 1/(n0 - min_window_length + 1) + 1/(n1 - min_window_length + 1),  d' = ln(2 ln|W| / delta)

and while one passes, the oldest bucket is dropped. A detection says the mean has changed with
confidence about 1 - delta; W1, what is left, is the new level (``estimation_after``). The
defaults (delta 0.002, clock 32, max_buckets 5, min_window_length 5, grace_period 10) are
River's; clock 32 means a detection can only fall on every 32nd value.

Both detectors, as River's, start afresh with the value after a detection. Not River's: NaN
and +-Inf are skipped (no state change, counted in ``n_nonfinite``; River's sums would turn NaN
and never detect again), and a detection tells where the change was and the level on either
side (``last_alarm``, or ``update_many(values, details=True)`` for a batch): the split that
maximises |mean_after - mean_before| sqrt(a b / (a + b)) (a, b: values after and before it),
the maximum-likelihood change point of one mean shift (Hinkley, "Inference about the
change-point in a sequence of random variables", Biometrika 57, 1970). ADWIN searches its
window's bucket boundaries, at the detection and before it drops anything (the window it keeps
is not the new level: it stops dropping as soon as no split passes, which right after a change
leaves mostly old values); Page-Hinkley searches the last 1024 values, in the direction that
fired (the argmin of U, the textbook estimate, wanders with the running mean before a change).

:class:`ScoreDriftDetectors` runs one of each on named streams per channel and returns the
detections as :class:`DriftAlarm` events; turning them into alerts is the agent's job.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edge_agent import native


def _load_change() -> ModuleType:
    """``edge_agent._native.change`` through native.load (NativeExtensionMissing when not built)."""
    return native.load("change")


_change = _load_change()
PageHinkley = _change.PageHinkley
ADWIN = _change.ADWIN

DETECTORS = ("page_hinkley", "adwin")
DEFAULT_STREAMS = ("anomaly_score",)
_CLASSES = {"page_hinkley": PageHinkley, "adwin": ADWIN}


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """One detection on one channel's stream.

    ``index``: position of the value in this channel's stream, counting every value offered
    since the helper started (NaN/Inf included), 0-based. ``estimation_before`` /
    ``estimation_after``: the mean level either side of the most likely change point (ADWIN:
    among its window's bucket boundaries; Page-Hinkley: among the last 1024 values); None when
    undefined.
    ``run_length``: how many (finite) values the detector puts after the change, this one
    included. ``direction``: +1 the level went up, -1 down."""

    channel: str
    stream: str
    detector: str
    index: int
    value: float
    estimation_before: float | None
    estimation_after: float | None
    run_length: int
    direction: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


class _Stream:
    """One channel's stream: one detector of each kind and the count of values offered."""

    __slots__ = ("offered", "detectors")

    def __init__(self, params: Mapping[str, Mapping[str, Any]]):
        self.offered = 0
        self.detectors = {name: _CLASSES[name](**params.get(name, {})) for name in DETECTORS}


class ScoreDriftDetectors:
    """A Page-Hinkley and an ADWIN detector per (channel, stream), created on first use.

    ``streams``: the stream names (e.g. "anomaly_score", "confidence"), or a mapping from name
    to per-detector parameters, e.g. ``{"anomaly_score": {"page_hinkley": {"threshold": 5.0}}}``;
    ``page_hinkley`` / ``adwin``: parameters for every stream (a stream's own ones win).
    Unknown parameters or streams are errors at once, not on the first value."""

    def __init__(self, streams: Sequence[str] | Mapping[str, Mapping[str, Mapping[str, Any]]] = DEFAULT_STREAMS,
                 page_hinkley: Mapping[str, Any] | None = None, adwin: Mapping[str, Any] | None = None):
        common = {"page_hinkley": dict(page_hinkley or {}), "adwin": dict(adwin or {})}
        per_stream = dict(streams) if isinstance(streams, Mapping) else {name: {} for name in streams}
        if not per_stream:
            raise ValueError("ScoreDriftDetectors: no streams")
        self._params: dict[str, dict[str, dict[str, Any]]] = {}
        for name, own in per_stream.items():
            unknown = set(own) - set(DETECTORS)
            if unknown:
                raise ValueError(f"stream {name!r}: unknown detectors {sorted(unknown)}; known: {DETECTORS}")
            params = {det: {**common[det], **dict(own.get(det, {}))} for det in DETECTORS}
            for det, kwargs in params.items():
                _CLASSES[det](**kwargs)  # raises TypeError/ValueError on a bad parameter now
            self._params[name] = params
        self._channels: dict[str, dict[str, _Stream]] = {}

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._params)

    def _stream(self, channel: str, stream: str) -> _Stream:
        if stream not in self._params:
            raise ValueError(f"unknown stream {stream!r}; known: {', '.join(self._params)}")
        per_channel = self._channels.setdefault(channel, {})
        s = per_channel.get(stream)
        if s is None:
            s = per_channel[stream] = _Stream(self._params[stream])
        return s

    def update(self, channel: str, stream: str, values: Iterable[float] | np.ndarray | float) -> list[DriftAlarm]:
        """Feed one channel's next values of one stream (a batch, in order; or one value).
        Returns the detections, in stream order (Page-Hinkley first at the same index)."""
        x = np.ascontiguousarray(np.atleast_1d(np.asarray(values, dtype=np.float64)))
        if x.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {x.shape}")
        s = self._stream(channel, stream)
        base = s.offered
        alarms: list[DriftAlarm] = []
        for name, det in s.detectors.items():
            found = det.update_many(x, details=True)
            for i, before, after, run, direction in zip(
                    found["index"].tolist(), found["estimation_before"].tolist(),
                    found["estimation_after"].tolist(), found["run_length"].tolist(),
                    found["direction"].tolist()):
                alarms.append(DriftAlarm(channel, stream, name, base + i, float(x[i]),
                                         _finite_or_none(before), _finite_or_none(after), run, direction))
        s.offered += len(x)
        alarms.sort(key=lambda a: (a.index, DETECTORS.index(a.detector)))
        return alarms

    def update_streams(self, channel: str, values: Mapping[str, Iterable[float] | np.ndarray]) -> list[DriftAlarm]:
        """``update`` for several streams of one channel at once (e.g. one processing round)."""
        alarms: list[DriftAlarm] = []
        for stream, v in values.items():
            alarms.extend(self.update(channel, stream, v))
        return alarms

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per channel and stream: values offered, NaN/Inf skipped, detections per detector."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for channel, streams in self._channels.items():
            for stream, s in streams.items():
                entry = {"values": s.offered, "nonfinite": s.detectors["adwin"].n_nonfinite}
                for name, det in s.detectors.items():
                    entry[f"{name}_detections"] = det.n_detections
                out.setdefault(channel, {})[stream] = entry
        return out

    def reset(self, channel: str | None = None) -> None:
        """Forget one channel's detectors (e.g. after a model change), or every channel's."""
        if channel is None:
            self._channels.clear()
        else:
            self._channels.pop(channel, None)

    def state(self) -> dict[str, Any]:
        """Everything, as plain data (JSON-able with NaN/Inf allowed), for ``from_state``."""
        return {
            "version": 1,
            "streams": self._params,
            "channels": {ch: {name: {"offered": s.offered,
                                     **{det: d.state() for det, d in s.detectors.items()}}
                              for name, s in streams.items()}
                         for ch, streams in self._channels.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ScoreDriftDetectors:
        if state.get("version") != 1:
            raise ValueError("not a version-1 ScoreDriftDetectors state")
        self = cls(state["streams"])
        for ch, streams in state["channels"].items():
            for name, entry in streams.items():
                s = self._stream(ch, name)
                s.offered = int(entry["offered"])
                s.detectors = {det: _CLASSES[det].from_state(entry[det]) for det in DETECTORS}
        return self
