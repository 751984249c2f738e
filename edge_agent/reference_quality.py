"""NumPy reference of the data-quality measurements and flags (edge_agent/quality.py): the yardstick.

What it is for: :func:`edge_agent.quality.check_windows` measures windows in a compiled loop
(ext/quality.pyx); this is the vectorised NumPy implementation it replaced, kept verbatim, and
the two must agree exactly, flags and every figure of the QualityReport, on every input
(tests/test_quality.py: random windows, NaN/Inf, constant and all-zero windows, known full
scales, a configured range). Clear, and a handful of passes over the batch: not fast.

Only tests/ (and benchmarks) import it; the agent never does.
"""
from __future__ import annotations

import numpy as np

from edge_agent.quality import CLIP_LEVEL, FLAGS, RATE_TOLERANCE, QualityLimits, QualityReport


def reference_check_windows(
    samples: np.ndarray, fs: np.ndarray, full_scale: np.ndarray, limits: QualityLimits = QualityLimits()
) -> QualityReport:
    """The NumPy version of :func:`edge_agent.quality.check_windows`, to which that one must
    agree exactly (same flags, same figures) on every input.

    ``samples``: (n_windows, length); ``fs``: (n_windows,) Hz; ``full_scale``:
    (n_windows,) g, NaN where unknown. Vectorised: a handful of numpy passes over the batch.

    >>> x = np.vstack([np.sin(np.arange(1024) / 5.0), np.full(1024, 0.3)])
    >>> reference_check_windows(x, np.array([25600.0, 25600.0]), np.array([np.nan, np.nan])).flags
    [frozenset(), frozenset({'flatline'})]
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"expected (windows, samples) with at least 2 samples a window, got shape {x.shape}")
    n, length = x.shape
    fs = np.asarray(fs, dtype=np.float64).reshape(n)
    full_scale = np.asarray(full_scale, dtype=np.float64).reshape(n)
    finite = np.isfinite(x)
    nonfinite = length - finite.sum(axis=1)
    if nonfinite.any():  # measure the rest on the finite samples only (NaN/Inf read as 0)
        x = np.where(finite, x, np.float32(0))
    hi, lo = x.max(axis=1), x.min(axis=1)
    peak = np.maximum(np.abs(hi), np.abs(lo)).astype(np.float64)
    ptp = (hi.astype(np.float64) - lo)
    same = x[:, 1:] == x[:, :-1]  # sample equal to its predecessor
    repeat = np.count_nonzero(same, axis=1) / (length - 1)
    flatline = (ptp < limits.flatline_ptp_g) | (repeat >= limits.flatline_repeat)

    known = np.isfinite(full_scale) & (full_scale > 0)  # the frames' full scale
    if limits.max_abs_g > 0:
        ref = np.where(known, full_scale, limits.max_abs_g)
        known = np.ones(n, dtype=bool)
    else:
        ref = np.where(known, full_scale, peak)
    near = np.abs(x) >= (CLIP_LEVEL * ref)[:, None].astype(np.float32)
    # Against the window's own peak only flat tops count (at the peak *and* equal to the
    # previous sample): a clipped waveform sits on the rail for runs of samples, while a
    # sampled sine passes within 0.1% of its peak in ~3% of its samples, never repeating.
    at_clip = np.where(known, np.count_nonzero(near, axis=1), np.count_nonzero(near[:, 1:] & same, axis=1))
    clipped = at_clip / length
    # With the window's own peak as reference, a flat window is "all at its peak": that is
    # a flatline, not clipping. Against a known full scale it is both (stuck at the rail).
    clipping = (clipped >= limits.clip_fraction) & (ref > 0) & (known | ~flatline)

    limit = np.where(known, np.minimum(limits.range_g, ref * 1.001), limits.range_g)
    out_of_range = peak > limit
    rate = np.zeros(n, dtype=bool)
    if limits.expected_fs > 0:
        rate = np.abs(fs - limits.expected_fs) > RATE_TOLERANCE * limits.expected_fs

    table = np.stack([nonfinite > 0, flatline, clipping, out_of_range, rate], axis=1)
    flags = [frozenset(FLAGS[j] for j in np.flatnonzero(row)) if row.any() else frozenset() for row in table]
    return QualityReport(nonfinite, ptp, repeat, clipped, ref.astype(np.float64), peak, fs, flags)
