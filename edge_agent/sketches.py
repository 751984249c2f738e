"""Bounded-memory quantile sketches of the feature vectors, per operating regime.

One Apache DataSketches KLL sketch (``kll_floats_sketch``, Karnin, Lang & Liberty, "Optimal
quantile approximation in streams", FOCS 2016) per feature and regime, fed in numpy batches.
Not written here: DataSketches' C++ core is exact about its error bounds (normalised rank
error ~1.65% at k = 200, 99% confidence), and its binary serialisation is the wire format of
the summaries, so the fleet side can merge thousands of gateways' sketches in engines that
read DataSketches natively (Apache Druid, Apache Pinot, Spark with datasketches-java) instead
of a home-made aggregator (docs/FLEET.md).

Memory is bounded: a sketch keeps O(k log(n/k)) items whatever the number of windows, about
2.5 kB serialised at k = 200 for 10^6 values; there are (regimes x features) of them, and the
summary resets them every interval, so an interval's sketch is what the summary sends.

Regimes: shaft-speed bins from ``[drift] speed_bins_rpm`` (``Regimes``), so a change of wind
speed moves windows into another regime's sketch instead of looking like drift.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

SKETCH_KIND = "datasketches-kll-floats"


def _kll():
    from datasketches import kll_floats_sketch

    return kll_floats_sketch


class Regimes:
    """Operating regimes as shaft-speed bins: ``edges`` increasing, in rpm. A window at
    ``rpm`` is in bin i when ``edges[i] <= rpm < edges[i + 1]``; below the first edge is bin 0
    too, at or beyond the last edge the open bin ``len(edges) - 1``."""

    def __init__(self, edges_rpm: Sequence[float]) -> None:
        edges = np.asarray(edges_rpm, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 1 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"speed bin edges must be increasing numbers, got {list(edges_rpm)!r}")
        self.edges = edges
        self.names = [self._name(i) for i in range(len(edges))]

    def _name(self, i: int) -> str:
        lo = self.edges[i]
        if i + 1 < len(self.edges):
            return f"rpm_{lo:g}-{self.edges[i + 1]:g}"
        return f"rpm_{lo:g}+"

    def bounds(self, name: str) -> tuple[float, float | None]:
        i = self.names.index(name)
        return float(self.edges[i]), (float(self.edges[i + 1]) if i + 1 < len(self.edges) else None)

    def index(self, rpm: np.ndarray) -> np.ndarray:
        """The regime index of each speed (NaN speeds go to regime 0)."""
        r = np.nan_to_num(np.asarray(rpm, dtype=np.float64), nan=0.0)
        return np.clip(np.searchsorted(self.edges, r, side="right") - 1, 0, len(self.edges) - 1)


@dataclass
class RegimeSketch:
    """The sketches of one regime over one interval: a KLL sketch per feature, and, for the
    features given fixed bins (the drift reference's PSI bins), exact counts per bin."""

    windows: int = 0
    sketches: dict[str, object] = field(default_factory=dict)  # feature -> kll_floats_sketch
    bin_counts: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> int64 counts
    bin_edges: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> the inner edges counted on


class FeatureSketches:
    """KLL sketches of the named features, per regime, for the current interval."""

    def __init__(self, names: Sequence[str], k: int = 200, regimes: Regimes | None = None,
                 bins: dict[str, Sequence[float]] | None = None,
                 regime_bins: dict[str, dict[str, Sequence[float]]] | None = None) -> None:
        """``bins``: feature -> bin edges (the outer two are ignored: the first and last bins
        are open); those features also get exact counts per bin, so PSI over known bins is
        exact rather than subject to the sketch's rank error (drift.py). ``regime_bins``:
        regime name -> such a mapping, for the regimes whose reference bins differ."""
        self.names = list(names)

        def inner(b):
            return {n: np.asarray(e, dtype=np.float64)[1:-1] for n, e in (b or {}).items() if n in names}

        self.bins = inner(bins)
        self._regime_bins = {name: inner(b) for name, b in (regime_bins or {}).items()}
        self.k = int(k)
        self.regimes = regimes or Regimes((0.0,))
        self._kll = _kll()
        self._current: dict[int, RegimeSketch] = {}
        self.nonfinite = 0  # values left out (NaN/Inf): counted, never fed to a sketch

    def update(self, features: np.ndarray, rpm: np.ndarray) -> None:
        """Add a batch: ``features`` (n, len(names)) in ``names`` order, ``rpm`` (n,)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.names):
            raise ValueError(f"expected (n, {len(self.names)}) features, got shape {x.shape}")
        if len(x) == 0:
            return
        idx = self.regimes.index(rpm)
        all_finite = bool(np.isfinite(x).all())
        for r in sorted(set(idx.tolist())):  # not np.unique: its first call imports numpy.ma (~15 ms)
            rows = x[idx == r] if len(idx) and (idx != r).any() else x
            reg = self._current.get(r)
            if reg is None:
                edges = self._regime_bins.get(self.regimes.names[r], self.bins)
                reg = self._current[r] = RegimeSketch(
                    sketches={n: self._kll(self.k) for n in self.names},
                    bin_counts={n: np.zeros(len(inner) + 1, np.int64) for n, inner in edges.items()},
                    bin_edges=edges)
            reg.windows += len(rows)
            cols = np.ascontiguousarray(rows.T)  # one contiguous row per feature
            for j, name in enumerate(self.names):
                col = cols[j]
                if not all_finite:
                    good = np.isfinite(col)
                    if not good.all():
                        self.nonfinite += int(len(col) - good.sum())
                        col = col[good]
                if len(col):
                    reg.sketches[name].update(col)
                    inner = reg.bin_edges.get(name)
                    if inner is not None:
                        idx_bin = np.searchsorted(inner, col.astype(np.float64), side="right")
                        reg.bin_counts[name] += np.bincount(idx_bin, minlength=len(inner) + 1)

    def take(self) -> dict[str, RegimeSketch]:
        """The interval's sketches by regime name, and start a new interval."""
        out = {self.regimes.names[r]: reg for r, reg in sorted(self._current.items())}
        self._current = {}
        return out

    def peek(self) -> dict[str, RegimeSketch]:
        return {self.regimes.names[r]: reg for r, reg in sorted(self._current.items())}


def encode(taken: dict[str, RegimeSketch], regimes: Regimes, k: int) -> dict:
    """The summary's ``sketches`` object (docs/MQTT.md): DataSketches bytes, base64."""
    out = {"kind": SKETCH_KIND, "k": int(k), "encoding": "base64", "regimes": {}}
    for name, reg in taken.items():
        lo, hi = regimes.bounds(name)
        out["regimes"][name] = {
            "rpm": [lo, hi],
            "windows": reg.windows,
            "features": {f: base64.b64encode(s.serialize()).decode("ascii") for f, s in reg.sketches.items()
                         if not s.is_empty()},
        }
        if reg.bin_counts:  # exact counts in the drift reference's bins (the fleet sums them)
            out["regimes"][name]["bin_counts"] = {f: c.tolist() for f, c in reg.bin_counts.items()}
    return out


class SketchDecodeError(ValueError):
    """A summary's sketch that is not a DataSketches KLL float sketch."""


def decode_sketch(text: str):
    """A ``kll_floats_sketch`` from its base64 text (summaries; the fleet side)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SketchDecodeError(f"not base64: {exc}") from None
    try:
        return _kll().deserialize(raw)
    except Exception as exc:  # noqa: BLE001 - the C++ core raises RuntimeError/ValueError variants
        raise SketchDecodeError(f"not a DataSketches KLL float sketch: {exc}") from None
