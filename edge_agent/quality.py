"""Data quality of analysis windows: is this window fit to be scored?

A stuck, saturated or corrupted sensor produces windows that a model scores as wildly
anomalous (or, worse, learns as normal). Every window is checked before scoring, all of a
round's windows at once (one compiled pass per window, ext/quality.pyx; the NumPy version it
must agree with exactly is edge_agent/reference_quality.py); each window gets a set of flags
(``Window.flags``), empty when it is sound:

``nonfinite``
    NaN or Inf among the samples.
``flatline``
    peak-to-peak below ``flatline_ptp_g``, or the same value repeated: the fraction of
    samples equal to their predecessor is at least ``flatline_repeat`` ("most of the
    window"). A live accelerometer always carries some noise.
``clipping``
    at least ``clip_fraction`` of the samples at or beyond 99.9% of the sensor's full
    scale: the frame's (int16/int32 frames, .wav), else ``max_abs_g`` from the config,
    else the window's own peak, counting only flat tops (samples at the peak that repeat
    the previous value: a healthy window reaches its peak in one or two samples, the CWRU
    records and the emulator in at most 2 of 4096, and a sampled sine never repeats).
``out_of_range``
    a sample beyond ``range_g``, or beyond the full scale when it is known: a value no
    sensor of that range can report (decoding or scaling error, electrical fault).
``rate_mismatch``
    the window's rate differs by more than 1% from ``expected_fs`` (when configured).

Stream problems are counted where they are seen: sequence gaps by the windower (no window
spans one), timestamp jumps and rate mismatches of frames by each source's FrameAssembler.

:class:`QualityCounts` counts windows and flags per channel; :class:`PersistentProblems`
turns a run of ``alert_after`` flagged windows of one channel into one ``data_quality``
alert, cleared after ``clear_after`` sound windows in a row. What the agent does with a
flagged window (score it, flagged, or drop it) is ``[quality] action``; see agent.py.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent import native

_native = native.load("quality")

FLAGS = ("nonfinite", "flatline", "clipping", "out_of_range", "rate_mismatch")
CLIP_LEVEL = 0.999  # of full scale: a sample this close to it counts as clipped
RATE_TOLERANCE = 0.01  # relative
ALERT_SCHEMA = 1
# The flag set of each bit pattern (bit j = FLAGS[j]): one shared frozenset per combination.
_FLAG_SETS = tuple(frozenset(f for j, f in enumerate(FLAGS) if code >> j & 1) for code in range(1 << len(FLAGS)))


@dataclass(frozen=True, slots=True)
class QualityLimits:
    """Thresholds of the checks (the ``[quality]`` config section; defaults are safe)."""

    flatline_ptp_g: float = 1e-3
    flatline_repeat: float = 0.5
    clip_fraction: float = 0.005
    max_abs_g: float = 0.0  # sensor range when frames do not say; 0 = unknown
    range_g: float = 500.0
    expected_fs: float = 0.0  # 0 = any rate

    @classmethod
    def from_config(cls, q: Any) -> QualityLimits:
        return cls(q.flatline_ptp_g, q.flatline_repeat, q.clip_fraction, q.max_abs_g, q.range_g, q.expected_fs)


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Per-window measurements (arrays of length n_windows) and the flags they give."""

    nonfinite: np.ndarray  # count of NaN/Inf samples
    ptp: np.ndarray  # peak-to-peak of the finite samples
    repeat: np.ndarray  # fraction of samples equal to the previous one
    clipped: np.ndarray  # fraction of samples at >= CLIP_LEVEL of the clip reference
    clip_ref: np.ndarray  # the clip reference used: full scale, max_abs_g or the window's peak
    peak: np.ndarray  # largest |sample| among the finite ones
    fs: np.ndarray
    flags: list[frozenset[str]]

    def describe(self, i: int) -> str:
        """What is wrong with window ``i``, in numbers, e.g. for an alert's explanation."""
        parts = []
        f = self.flags[i]
        if "nonfinite" in f:
            parts.append(f"{int(self.nonfinite[i])} NaN/Inf samples")
        if "flatline" in f:
            parts.append(f"peak-to-peak {self.ptp[i]:.3g} g, {100 * self.repeat[i]:.0f}% of samples repeated")
        if "clipping" in f:
            parts.append(f"{100 * self.clipped[i]:.1f}% of samples at +-{self.clip_ref[i]:.3g} g")
        if "out_of_range" in f:
            parts.append(f"peak {self.peak[i]:.3g} g out of range")
        if "rate_mismatch" in f:
            parts.append(f"sample rate {self.fs[i]:g} Hz")
        return "; ".join(parts)


def check_windows(
    samples: np.ndarray | Sequence[np.ndarray], fs: np.ndarray, full_scale: np.ndarray,
    limits: QualityLimits = QualityLimits(),
) -> QualityReport:
    """Check a batch of equal-length windows.

    ``samples``: (n_windows, length), as a 2-D array or as a list (or tuple) of the windows'
    1-D sample arrays, read in place when C-contiguous float32 (no stacking copy); ``fs``:
    (n_windows,) Hz; ``full_scale``: (n_windows,) g, NaN where unknown. The samples are
    measured by a compiled loop (ext/quality.pyx, about one pass per window, GIL released);
    the flags follow from those measures below. It must agree exactly, flags and figures,
    with the NumPy implementation in edge_agent/reference_quality.py.

    >>> x = np.vstack([np.sin(np.arange(1024) / 5.0), np.full(1024, 0.3)])
    >>> check_windows(x, np.array([25600.0, 25600.0]), np.array([np.nan, np.nan])).flags
    [frozenset(), frozenset({'flatline'})]
    """
    if isinstance(samples, (list, tuple)):
        x: Any = samples  # the kernel checks the rows (1-D, equal lengths, >= 2 samples)
    else:
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"expected (windows, samples) with at least 2 samples a window, got shape {x.shape}")
    n = len(x)
    fs = np.asarray(fs, dtype=np.float64).reshape(n)
    full_scale = np.asarray(full_scale, dtype=np.float64).reshape(n)

    known = np.isfinite(full_scale) & (full_scale > 0)  # the frames' full scale
    if limits.max_abs_g > 0:
        given = np.where(known, full_scale, limits.max_abs_g)
        known = np.ones(n, dtype=bool)
    else:
        given = np.where(known, full_scale, np.nan)  # NaN: the window's own peak (the kernel's)
    # A sample is near the clip reference when |x| >= CLIP_LEVEL * reference (rounded to
    # float32). Against the window's own peak only flat tops count (at the peak *and* equal
    # to the previous sample): a clipped waveform sits on the rail for runs of samples, while
    # a sampled sine passes within 0.1% of its peak in ~3% of its samples, never repeating.
    level = (CLIP_LEVEL * given).astype(np.float32)
    nonfinite = np.empty(n, dtype=np.intp)  # NaN/Inf samples; the rest measured with them read as 0
    hi = np.empty(n, dtype=np.float32)
    lo = np.empty(n, dtype=np.float32)
    repeats = np.empty(n, dtype=np.intp)  # samples equal to their predecessor
    at_clip = np.empty(n, dtype=np.intp)
    length = _native.measure(x, level, CLIP_LEVEL, nonfinite, hi, lo, repeats, at_clip)

    peak = np.maximum(np.abs(hi), np.abs(lo)).astype(np.float64)
    ptp = (hi.astype(np.float64) - lo)
    repeat = repeats / (length - 1)
    flatline = (ptp < limits.flatline_ptp_g) | (repeat >= limits.flatline_repeat)
    ref = np.where(known, given, peak)
    clipped = at_clip / length
    # With the window's own peak as reference, a flat window is "all at its peak": that is
    # a flatline, not clipping. Against a known full scale it is both (stuck at the rail).
    clipping = (clipped >= limits.clip_fraction) & (ref > 0) & (known | ~flatline)

    limit = np.where(known, np.minimum(limits.range_g, ref * 1.001), limits.range_g)
    out_of_range = peak > limit
    code = (nonfinite > 0) | (flatline << 1) | (clipping << 2) | (out_of_range << 3)
    if limits.expected_fs > 0:
        code |= (np.abs(fs - limits.expected_fs) > RATE_TOLERANCE * limits.expected_fs) << 4
    flags = [_FLAG_SETS[c] for c in code.tolist()]
    return QualityReport(nonfinite, ptp, repeat, clipped, ref, peak, fs, flags)


def check_window(
    samples: np.ndarray, fs: float, full_scale: float | None = None, limits: QualityLimits = QualityLimits()
) -> frozenset[str]:
    """The flags of one window (see :func:`check_windows`)."""
    report = check_windows(np.asarray(samples)[None, :], np.array([fs]),
                           np.array([np.nan if full_scale is None else full_scale]), limits)
    return report.flags[0]


@dataclass(slots=True)
class QualityCounts:
    """Windows checked, flagged and left unscored, and flags, per channel (cumulative)."""

    checked: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    unscored: Counter[str] = field(default_factory=Counter)  # flagged and kept from the model
    flags: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, channel: str, flags: frozenset[str], scored: bool) -> None:
        self.checked[channel] += 1
        if flags:
            self.flagged[channel] += 1
            per = self.flags.setdefault(channel, Counter())
            for f in flags:
                per[f] += 1
        if not scored:
            self.unscored[channel] += 1

    def as_dict(self) -> dict[str, dict]:
        return {
            "windows_checked": dict(self.checked),
            "windows_flagged": dict(self.flagged),
            "windows_unscored": dict(self.unscored),
            "flags": {ch: dict(c) for ch, c in list(self.flags.items())},  # list(): atomic copy
        }


@dataclass(slots=True)
class _Run:
    flagged: int = 0  # flagged windows in a row
    clean: int = 0  # sound windows in a row
    flags: Counter[str] = field(default_factory=Counter)  # flags seen in the current run
    open_alert: dict | None = None


class PersistentProblems:
    """One ``data_quality`` alert per channel after ``alert_after`` flagged windows in a
    row; cleared after ``clear_after`` sound windows in a row. A lone bad window raises
    nothing (it is counted); a sensor that stays stuck or saturated does."""

    def __init__(self, alert_after: int, clear_after: int, model_version: str, action: str = "flag") -> None:
        self.alert_after = alert_after
        self.clear_after = clear_after
        self.model_version = model_version
        self.action = action
        self._runs: dict[str, _Run] = {}

    def open_alerts(self) -> list[dict]:
        return [r.open_alert for r in self._runs.values() if r.open_alert is not None]

    def update(self, channel: str, flags: frozenset[str], t_start_us: int, rpm: float, detail: str = "") -> list[dict]:
        """Feed one window's flags; return the alert messages (raised or cleared) it causes."""
        run = self._runs.get(channel)
        if run is None:
            run = self._runs[channel] = _Run()
        if flags:
            run.flagged += 1
            run.clean = 0
            run.flags.update(flags)
            if run.open_alert is None and run.flagged >= self.alert_after:
                run.open_alert = self._raised(channel, run, t_start_us, rpm, detail)
                return [run.open_alert]
            return []
        run.clean += 1
        run.flagged = 0
        if run.open_alert is not None and run.clean >= self.clear_after:
            cleared = dict(run.open_alert, state="cleared", cleared_at=time.time())
            run.open_alert = None
            run.flags.clear()
            return [cleared]
        if run.open_alert is None:
            run.flags.clear()
        return []

    def _raised(self, channel: str, run: _Run, t_start_us: int, rpm: float, detail: str) -> dict:
        label = run.flags.most_common(1)[0][0]
        what = "; ".join(f"{f} in {n}" for f, n in run.flags.most_common())
        handling = ("they are scored but raise no anomaly alert" if self.action == "flag"
                    else "they are not scored")
        explanation = (f"data quality problem on {channel}: {run.flagged} windows in a row flagged ({what}); "
                       f"last window: {detail or label}; {handling}. Check the sensor, its cable and its mounting.")
        return {
            "schema": ALERT_SCHEMA,
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "state": "open",
            "severity": "warning",
            "type": "data_quality",
            "label": label,
            "flags": sorted(run.flags),
            "channel": channel,
            "rpm": round(rpm, 1),
            "window_t_start_us": t_start_us,
            "explanation": explanation,
            "model_version": self.model_version,
        }
