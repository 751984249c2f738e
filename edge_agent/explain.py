"""What a technician reads in an alert: which features crossed which limits, at what shaft
speed, against the healthy baseline.

A feature's *limit* is the healthy reference's 99th percentile (the pack's drift profile:
healthy machines, per speed regime; drift.py), its *baseline* the reference's median. An
envelope feature is named with its defect order and the frequency that is at the window's
speed, e.g. ``env_bpfi_1 (BPFI 5.42x = 135 Hz at 1500 rpm)``: the line a technician looks for
in the envelope spectrum. Features are listed by how far beyond their limit they are
(value / limit), only those that crossed it; with none crossed, the largest ratios.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edge_agent.features import FeatureSpec

_FAMILY = {"bpfo": "BPFO", "bpfi": "BPFI", "bsf": "BSF", "ftf": "FTF"}


def order_of(name: str, spec: FeatureSpec) -> tuple[str, float] | None:
    """(what, order in shaft revolutions) of an envelope feature, or None."""
    o = spec.orders
    if not name.startswith("env_"):
        return None
    parts = name[4:].split("_")
    if parts[0] in _FAMILY and len(parts) == 2 and parts[1].isdigit():
        k = int(parts[1])
        return (f"{k}x {_FAMILY[parts[0]]}" if k > 1 else _FAMILY[parts[0]]), k * getattr(o, parts[0])
    extra = {"bpfi_sb_lo": ("BPFI - 1x", o.bpfi - 1), "bpfi_sb_hi": ("BPFI + 1x", o.bpfi + 1),
             "bsf2_sb_lo": ("2 BSF - FTF", 2 * o.bsf - o.ftf), "bsf2_sb_hi": ("2 BSF + FTF", 2 * o.bsf + o.ftf),
             "shaft_1": ("1x", 1.0), "shaft_2": ("2x", 2.0)}
    return extra.get(name[4:])


_LIMITS: dict[int, tuple[dict, float | None, float | None]] = {}  # id(feature) -> (feature, median, p99)


def _limits(feature: dict) -> tuple[float | None, float | None]:
    """(median, 99th percentile) of a reference feature. Kept per feature dict (the pack's
    profile holds them for the pack's life; the dict is kept too, so its id is not reused):
    every alert's explanation asks them of the same few dicts, at ~9 us a quantile."""
    hit = _LIMITS.get(id(feature))
    if hit is None or hit[0] is not feature:
        if len(_LIMITS) > 4096:  # packs come and go: keep it small
            _LIMITS.clear()
        hit = _LIMITS[id(feature)] = (feature, _quantile(feature, 0.5), _quantile(feature, 0.99))
    return hit[1], hit[2]


def _quantile(feature: dict, q: float) -> float | None:
    cdf = feature.get("cdf")
    if cdf:
        return float(np.interp(q, np.linspace(0, 1, len(cdf)), cdf))
    edges = feature.get("edges")
    if edges:
        return float(np.interp(q, np.linspace(0, 1, len(edges)), edges))
    return None


def beyond_baseline(names: Sequence[str], values: Sequence[float], rpm: float, spec: FeatureSpec,
                    reference: dict[str, dict] | None, top: int = 3) -> list[dict[str, Any]]:
    """The features most beyond their healthy limit (value, baseline median, limit p99, order, Hz)."""
    if not reference:
        return []
    rows = []
    for name, value in zip(names, values):
        ref = reference.get(name)
        if ref is None or not np.isfinite(value):
            continue
        median, limit = _limits(ref)
        if median is None or limit is None or limit <= 0:
            continue
        row = {"feature": name, "value": float(value), "healthy_median": median, "limit": limit,
               "ratio": float(value) / limit, "crossed": bool(value > limit)}
        order = order_of(name, spec)
        if order is not None:
            row["order"] = {"what": order[0], "order": round(order[1], 4), "hz": round(order[1] * rpm / 60.0, 1)}
        rows.append(row)
    rows.sort(key=lambda r: -r["ratio"])
    crossed = [r for r in rows if r["crossed"]]
    return (crossed or rows)[:top]


def describe(rows: list[dict[str, Any]], rpm: float) -> str:
    parts = []
    for r in rows:
        what = r["feature"]
        if "order" in r:
            what += f" ({r['order']['what']} {r['order']['order']:.2f}x = {r['order']['hz']:.0f} Hz at {rpm:.0f} rpm)"
        verb = "above" if r["crossed"] else "within"
        parts.append(f"{what} {r['value']:.3g}, {verb} the healthy limit {r['limit']:.3g} (healthy median {r['healthy_median']:.3g})")
    return "; ".join(parts)
