"""Feature drift against the model pack's reference profile: PSI and KS from quantile sketches.

The pack carries ``drift_profile`` (built by models/build.py with :func:`make_profile` from
its *healthy* training windows: a machine in good health is what a fault or a changed machine
drifts away from). Per feature:

* ``edges``: the reference's deciles (11 numbers; duplicates removed), the PSI bins;
* ``histogram``: the reference's share of windows in each bin;
* ``cdf``: the reference's quantiles at ranks 0, 1/(m-1), ..., 1 (m = 201), for KS.

``monitored`` names the features whose drift is judged (the build leaves out those whose
healthy distribution differs from machine to machine by design; models/REPORT.md).

**PSI** (population stability index; Siddiqi, "Credit Risk Scorecards", Wiley 2006, ch. 8;
Yurdakul, "Statistical properties of the population stability index", 2018) over the
reference's bins, the first and last bins open-ended:

    PSI = sum_i (p_i - q_i) ln(p_i / q_i)

q_i the reference's share, p_i the live share. The bins are known in advance (the pack's), so
the agent counts each monitored feature's values per bin exactly (sketches.FeatureSketches
``bins``): PSI is exact. From a KLL sketch alone (``psi_sketch``: p_i = F(e_i) - F(e_{i-1}),
F(x) = share of values < x) it carries the sketch's rank error, which the log ratio amplifies
in sparse bins (measured at k = 200: 0.013 off at PSI 0.22, 0.07 off at PSI 3); that path is for
sketches without counts. Shares are floored at 1e-4 so an empty bin gives a large but finite PSI.

**KS** distance, sup_x |F_live(x) - F_ref(x)|, evaluated at the reference's quantiles and at the
live sketch's quantiles (m each): F_live from the sketch (its rank error, ~1.65% at k = 200 in
the worst case, ~0.7% typically), F_ref by linear interpolation of the reference quantile
function (its grid adds at most 1/(m-1)).

Both are checked against the exact values from raw data in tests/test_drift.py.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from edge_agent.alerts import SCHEMA as ALERT_SCHEMA, Hysteresis
from edge_agent.sketches import RegimeSketch

EPS = 1e-4  # floor of a bin's share in PSI
CDF_POINTS = 201
PSI_BINS = 10


def make_profile(values: np.ndarray, names: Sequence[str], monitored: Sequence[str] | None = None,
                 population: str = "", rpm: np.ndarray | None = None,
                 regimes: dict[str, tuple[float, float | None]] | None = None, min_windows: int = 100,
                 regime_monitored: dict[str, Sequence[str]] | None = None) -> dict:
    """The manifest's ``drift_profile`` from reference feature rows (n, len(names)); with
    ``rpm`` (n,) and ``regimes`` (name -> [lo, hi) rpm, hi None = open), one reference per
    regime too (a regime with fewer than ``min_windows`` rows gets none: the whole
    reference stands in)."""
    x = np.asarray(values, dtype=np.float64)
    watched = list(monitored if monitored is not None else names)
    out = {"kind": "quantile-histogram", "population": population, "windows": int(len(x)),
           "quantiles": [i / PSI_BINS for i in range(PSI_BINS + 1)],
           "monitored": watched, "features": _profile_features(x, names, watched)}
    if rpm is not None and regimes:
        out["regimes"] = {}
        r = np.asarray(rpm, dtype=np.float64)
        for name, (lo, hi) in regimes.items():
            sel = (r >= lo) & (r < (np.inf if hi is None else hi))
            if sel.sum() >= min_windows:
                here = list((regime_monitored or {}).get(name, watched))
                cols = [j for j, n in enumerate(names) if n in here]  # per regime: its monitored only
                out["regimes"][name] = {"rpm": [lo, hi], "windows": int(sel.sum()), "monitored": here,
                                        "features": _profile_features(x[sel][:, cols], [names[j] for j in cols], here)}
    return out


def _profile_features(x: np.ndarray, names: Sequence[str], with_cdf: Sequence[str]) -> dict:
    """Edges and histogram of every feature; the KS quantiles (7 significant digits) only of
    those in ``with_cdf`` (the monitored ones: the others are for the fleet's eyes)."""
    feats = {}
    for j, name in enumerate(names):
        col = x[:, j][np.isfinite(x[:, j])]
        edges = np.unique(np.quantile(col, np.linspace(0, 1, PSI_BINS + 1)))
        counts = _bin_counts_exact(col, edges)
        feats[name] = {"edges": [float(v) for v in edges],
                       "histogram": [float(v) for v in counts / counts.sum()]}
        if name in with_cdf:
            feats[name]["cdf"] = [float(f"{v:.7g}") for v in np.quantile(col, np.linspace(0, 1, CDF_POINTS))]
    return feats


def _bin_counts_exact(col: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the bins (-inf, e1), [e1, e2), ..., [e_last-1, +inf): the inner edges only."""
    inner = edges[1:-1]
    idx = np.searchsorted(inner, col, side="right")
    return np.bincount(idx, minlength=len(inner) + 1).astype(np.float64)


def psi_from_shares(p: np.ndarray, q: np.ndarray) -> float:
    p = np.maximum(np.asarray(p, dtype=np.float64), EPS)
    q = np.maximum(np.asarray(q, dtype=np.float64), EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def psi_exact(live: np.ndarray, ref_feature: dict) -> float:
    """PSI of raw live values against a profile feature (the reference for tests)."""
    edges = np.asarray(ref_feature["edges"])
    live = np.asarray(live, dtype=np.float64)
    counts = _bin_counts_exact(live[np.isfinite(live)], edges)
    return psi_from_shares(counts / counts.sum(), ref_feature["histogram"])


def psi_counts(counts: np.ndarray, ref_feature: dict) -> float:
    """PSI of live counts in the reference's bins (exact: FeatureSketches keeps them)."""
    c = np.asarray(counts, dtype=np.float64)
    if len(c) != len(ref_feature["histogram"]) or c.sum() <= 0:
        raise ValueError(f"{len(c)} bin counts for {len(ref_feature['histogram'])} reference bins")
    return psi_from_shares(c / c.sum(), ref_feature["histogram"])


def psi_sketch(sketch: Any, ref_feature: dict) -> float:
    """PSI of a live KLL sketch against a profile feature."""
    edges = np.asarray(ref_feature["edges"], dtype=np.float64)
    inner = edges[1:-1]
    if len(inner):
        below = np.asarray(sketch.get_cdf(inner.astype(np.float32).tolist(), inclusive=False))[:-1]
    else:
        below = np.empty(0)
    cum = np.concatenate([[0.0], below, [1.0]])
    return psi_from_shares(np.diff(cum), ref_feature["histogram"])


def ks_sketch(sketch: Any, ref_feature: dict) -> float:
    """KS distance between a live KLL sketch and a profile feature's reference CDF."""
    uq, ur = ref_table(ref_feature)
    live_q = np.asarray(sketch.get_quantiles(np.linspace(0.0, 1.0, CDF_POINTS).tolist()), dtype=np.float64)
    pts = np.unique(np.concatenate([uq, live_q]).astype(np.float32)).astype(np.float64)
    f_live_le = np.asarray(sketch.get_cdf(pts.astype(np.float32).tolist(), inclusive=True))[:-1]
    f_live_lt = np.asarray(sketch.get_cdf(pts.astype(np.float32).tolist(), inclusive=False))[:-1]
    f_ref = np.interp(pts, uq, ur, left=0.0, right=1.0)
    return float(max(np.max(np.abs(f_live_le - f_ref)), np.max(np.abs(f_live_lt - f_ref))))


def ks_exact(live: np.ndarray, ref: np.ndarray) -> float:
    """Two-sample KS distance of raw values (tests; the same as scipy.stats.ks_2samp's statistic)."""
    a, b = np.sort(np.asarray(live, dtype=np.float64)), np.sort(np.asarray(ref, dtype=np.float64))
    pts = np.concatenate([a, b])
    fa = np.searchsorted(a, pts, side="right") / len(a)
    fb = np.searchsorted(b, pts, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


class ProfileError(ValueError):
    """A pack's drift_profile that cannot be used."""


@dataclass
class Profile:
    features: dict[str, dict]  # the whole reference (every regime together)
    monitored: list[str]
    population: str
    regimes: dict[str, tuple[float, float | None, dict[str, dict], list[str]]] = None  # name -> (lo, hi, features, monitored)

    def reference_at(self, rpm: float) -> dict[str, dict]:
        """The healthy reference at a shaft speed: the pack regime holding it (its monitored
        features, with quantiles) over the whole reference (every feature, deciles)."""
        for rlo, rhi, feats, _ in (self.regimes or {}).values():
            if rlo <= rpm and (rhi is None or rpm < rhi):
                return {**self.features, **feats}
        return self.features

    def reference_for(self, lo: float, hi: float | None) -> tuple[str, dict[str, dict], list[str]]:
        """The reference for the agent's regime [lo, hi) rpm: the pack's regime that holds
        its middle speed, else the whole reference. Returns (which, features, monitored)."""
        mid = lo * 1.05 + 1.0 if hi is None else 0.5 * (lo + hi)
        for name, (rlo, rhi, feats, mon) in (self.regimes or {}).items():
            if rlo <= mid and (rhi is None or mid < rhi):
                return name, feats, mon
        return "all", self.features, self.monitored

    @classmethod
    def from_manifest(cls, profile: Any, feature_names: Sequence[str]) -> "Profile | None":
        """The profile of a pack's manifest, or None when it has none. Features not in the
        pack's inputs, or malformed, are refused with the reason."""
        if not profile:
            return None
        if not isinstance(profile, dict) or not isinstance(profile.get("features"), dict):
            raise ProfileError("drift_profile must be an object with a 'features' object")
        feats = _features(profile["features"], feature_names, "drift_profile.features")
        monitored = profile.get("monitored", list(feats))
        if not isinstance(monitored, list) or not all(isinstance(m, str) for m in monitored):
            raise ProfileError("drift_profile.monitored must be a list of feature names")
        regimes = {}
        raw = profile.get("regimes", {})
        if not isinstance(raw, dict):
            raise ProfileError("drift_profile.regimes must be an object")
        for name, r in raw.items():
            try:
                lo, hi = r["rpm"]
                lo, hi = float(lo), (None if hi is None else float(hi))
            except (KeyError, TypeError, ValueError):
                raise ProfileError(f"drift_profile.regimes.{name}: needs 'rpm': [lo, hi or null]") from None
            if not isinstance(r.get("features"), dict):
                raise ProfileError(f"drift_profile.regimes.{name}: needs a 'features' object")
            feats_r = _features(r["features"], feature_names, f"drift_profile.regimes.{name}.features")
            mon = r.get("monitored", [m for m in monitored if m in feats_r])
            if not isinstance(mon, list) or not all(isinstance(m, str) for m in mon):
                raise ProfileError(f"drift_profile.regimes.{name}.monitored must be a list of feature names")
            regimes[name] = (lo, hi, feats_r, [m for m in mon if m in feats_r])
        return cls(feats, [m for m in monitored if m in feats], str(profile.get("population", "")), regimes)


def _features(raw: dict, feature_names: Sequence[str], where: str) -> dict[str, dict]:
    feats = {}
    for name, f in raw.items():
        if name not in feature_names:
            continue  # a profile may describe more than the model reads
        try:
            edges = [float(v) for v in f["edges"]]
            hist = [float(v) for v in f["histogram"]]
            cdf = [float(v) for v in f.get("cdf", [])]
        except (KeyError, TypeError, ValueError):
            raise ProfileError(f"{where}.{name}: needs numeric 'edges' and 'histogram'") from None
        if len(edges) < 2 or len(hist) != len(edges) - 1 or not all(np.isfinite(edges + hist + cdf)) \
                or np.any(np.diff(edges) <= 0) or abs(sum(hist) - 1.0) > 1e-3 or min(hist) < 0 \
                or (cdf and np.any(np.diff(cdf) < 0)):
            raise ProfileError(f"{where}.{name}: edges must increase, the histogram have "
                               f"one share per bin summing to 1, the cdf be non-decreasing")
        feats[name] = {"edges": edges, "histogram": hist, "cdf": cdf}
    return feats


@dataclass
class DriftThresholds:
    psi_warn: float = 0.1
    psi_drift: float = 0.25
    min_windows: int = 200


def evaluate(taken: dict[str, RegimeSketch], profile: Profile | None, th: DriftThresholds,
             bounds: dict[str, tuple[float, float | None]] | None = None) -> dict:
    """Drift statistics of one interval's sketches, per regime (the summary's ``drift``).
    ``bounds``: the regimes' rpm ranges, to pick the pack's per-regime reference."""
    out: dict[str, Any] = {"reference": profile.population if profile else None,
                           "thresholds": {"psi_warn": th.psi_warn, "psi_drift": th.psi_drift,
                                          "min_windows": th.min_windows},
                           "regimes": {}}
    if profile is None:
        out["status"] = "no_reference"  # the model has no drift profile: sketches only
        return out
    for name, reg in taken.items():
        entry: dict[str, Any] = {"windows": reg.windows}
        if reg.windows < th.min_windows:
            entry["status"] = "insufficient"
            out["regimes"][name] = entry
            continue
        stats, status = {}, "ok"
        which, ref_feats, watched = (profile.reference_for(*bounds[name]) if bounds and name in bounds
                                     else ("all", profile.features, profile.monitored))
        entry["reference"] = which
        for f in watched:
            sk = reg.sketches.get(f)
            if sk is None or sk.is_empty() or f not in ref_feats:
                continue
            ref = ref_feats[f]
            counts = reg.bin_counts.get(f)
            exact = counts is not None and len(counts) == len(ref["histogram"])
            p = psi_counts(counts, ref) if exact else psi_sketch(sk, ref)
            k = ks_sketch(sk, ref)
            level = "drift" if p >= th.psi_drift else "warn" if p >= th.psi_warn else "ok"
            stats[f] = {"psi": round(p, 4), "ks": round(k, 4), "status": level}
            if level == "drift" or (level == "warn" and status == "ok"):
                status = level
        entry["status"] = status
        entry["features"] = stats
        out["regimes"][name] = entry
    return out


def ks_values(live: np.ndarray, ref_feature: dict, table: tuple[np.ndarray, np.ndarray] | None = None,
              presorted: bool = False) -> float:
    """KS distance of raw live values against a profile feature's reference CDF: the sup is
    taken at the live values (both one-sided limits) and at the reference's quantiles.
    ``table``: the reference CDF table from :func:`ref_table`, when judged repeatedly;
    ``presorted``: ``live`` is sorted already."""
    a = np.asarray(live, dtype=np.float64) if presorted else np.sort(np.asarray(live, dtype=np.float64))
    n = len(a)
    uq, ur = table if table is not None else ref_table(ref_feature)
    fr = np.interp(a, uq, ur, left=0.0, right=1.0)
    i = np.arange(n)
    d_live = max(float(np.max(np.abs((i + 1) / n - fr))), float(np.max(np.abs(i / n - fr))))
    le = np.searchsorted(a, uq, side="right") / n
    lt = np.searchsorted(a, uq, side="left") / n
    d_ref = max(float(np.max(np.abs(le - ur))), float(np.max(np.abs(lt - ur))))
    return max(d_live, d_ref)


def ref_table(ref_feature: dict) -> tuple[np.ndarray, np.ndarray]:
    """The reference CDF as (increasing values, ranks) for np.interp: its quantile function
    inverted, linear between quantiles; equal quantiles collapse to the highest rank they
    reach (np.interp needs increasing xp)."""
    q = np.asarray(ref_feature.get("cdf") or ref_feature["edges"], dtype=np.float64)
    r = np.linspace(0.0, 1.0, len(q))
    uq, last = np.unique(q[::-1], return_index=True)
    return uq, r[::-1][last]


class RecentWindows:
    """The monitored features of the last ``size`` windows of one regime (a ring: bounded),
    judged every ``every`` new windows: PSI (exact, from the values) and KS against the
    regime's reference. This is what raises drift alerts, as soon as a regime's recent
    windows have drifted, rather than at the end of a summary interval."""

    def __init__(self, names: Sequence[str], ref_feats: dict[str, dict], size: int, every: int) -> None:
        self.names = [n for n in names if n in ref_feats]
        self.ref = ref_feats
        self.size, self.every = int(size), int(every)
        # the reference's arrays, ready for the judgements (every `every` windows)
        self._inner = [np.asarray(ref_feats[f]["edges"], dtype=np.float64)[1:-1] for f in self.names]
        self._q = [np.maximum(np.asarray(ref_feats[f]["histogram"], dtype=np.float64), EPS) for f in self.names]
        self._cdf = [ref_table(ref_feats[f]) for f in self.names]
        self.values = np.full((self.size, len(self.names)), np.nan)
        self.count = 0  # windows ever added
        self._since = 0

    def add(self, rows: np.ndarray) -> bool:
        """Add feature rows (n, len(names)); True when a judgement is due."""
        rows = np.asarray(rows, dtype=np.float64)[-self.size:]
        pos = (self.count + np.arange(len(rows))) % self.size
        self.values[pos] = rows
        self.count += len(rows)
        self._since += len(rows)
        if self.count >= self.size and self._since >= self.every:
            self._since = 0
            return True
        return False

    def judge(self, th: "DriftThresholds", ks_always: bool = False) -> dict:
        """PSI of every feature; KS (for the explanation) of those at warn or drift, or of
        all with ``ks_always`` (the summary's report): it is the costlier of the two."""
        stats, status = {}, "ok"
        finite = np.isfinite(self.values)
        all_finite = bool(finite.all())
        # all finite (the rule): every column sorted in one call; a bin's count is then the
        # difference of two ranks (x in [e_b-1, e_b) <=> #{x < e_b-1} <= rank < #{x < e_b}),
        # and KS needs the sorted values anyway
        ranked = np.sort(self.values, axis=0) if all_finite else None
        for j, f in enumerate(self.names):
            if ranked is not None:
                col = ranked[:, j]
                below = np.searchsorted(col, self._inner[j], side="left")
                counts = np.diff(below, prepend=0, append=len(col))
            else:
                col = self.values[finite[:, j], j]
                if len(col) == 0:
                    continue
                counts = np.bincount(np.searchsorted(self._inner[j], col, side="right"), minlength=len(self._q[j]))
            share = np.maximum(counts / len(col), EPS)
            q = self._q[j]
            p = float(np.sum((share - q) * np.log(share / q)))  # = psi_exact(col, ref)
            level = "drift" if p >= th.psi_drift else "warn" if p >= th.psi_warn else "ok"
            k = ks_values(col, self.ref[f], self._cdf[j], ranked is not None) if ks_always or level != "ok" else None
            stats[f] = {"psi": round(p, 4), "ks": None if k is None else round(k, 4), "status": level}
            if level == "drift" or (level == "warn" and status == "ok"):
                status = level
        return {"status": status, "windows": self.size, "features": stats}


class DriftAlerts:
    """Drift alerts through the alert engine's hysteresis: one open ``drift`` alert per
    regime (the key), raised after ``raise_after`` of the last ``raise_window`` judged
    intervals had drift, cleared after ``clear_after`` judged intervals without."""

    def __init__(self, raise_after: int, raise_window: int, clear_after: int, model_version: str) -> None:
        self._h = Hysteresis(raise_after, raise_window, clear_after)
        self.model_version = model_version
        self._score_open: dict[str, dict] = {}
        self._score_hit: set[str] = set()

    def open_alerts(self) -> list[dict]:
        return self._h.open_alerts() + list(self._score_open.values())

    def update(self, result: dict, regimes_rpm: dict[str, tuple[float, float | None]]) -> list[dict]:
        msgs: list[dict] = []
        for name, entry in result.get("regimes", {}).items():
            msgs += self.judged(name, entry, regimes_rpm.get(name))
        return msgs

    def judged(self, regime: str, entry: dict, rpm: tuple[float, float | None] | None) -> list[dict]:
        """One judgement of a regime (``status`` drift / warn / ok; insufficient is skipped)."""
        if entry.get("status") in (None, "insufficient"):
            return []
        hit = "drift" if entry["status"] == "drift" else None
        return self._h.step(f"regime:{regime}", hit, lambda _t: self._raised(regime, entry, rpm))

    def score_alarm(self, event: dict) -> dict | None:
        """A drift alert for a score-drift detector's alarm (Page-Hinkley, ADWIN), or None
        while one is open for that channel, regime and stream (the repeat is counted in it).
        ``clear_quiet_scores`` clears the ones that had no alarm in an interval."""
        key = f"{event['channel']}/{event['stream']}"
        open_ = self._score_open.get(key)
        self._score_hit.add(key)
        if open_ is not None:
            open_["alarms"] = open_.get("alarms", 1) + 1
            return None
        msg = self._score_message(event)
        self._score_open[key] = msg
        return msg

    def clear_quiet_scores(self) -> list[dict]:
        out = []
        for key in [k for k in self._score_open if k not in self._score_hit]:
            out.append(dict(self._score_open.pop(key), state="cleared", cleared_at=time.time()))
        self._score_hit = set()
        return out

    def _score_message(self, event: dict) -> dict:
        channel, _, regime = event["channel"].partition("@")
        where = f"{channel} in regime {regime}" if regime else channel
        expl = (f"{event['detector']} detected a change in the model's {event['stream']} on {where}: "
                f"mean {event.get('before', float('nan')):.3g} before, {event.get('after', float('nan')):.3g} after "
                f"(model {self.model_version})")
        return {"schema": ALERT_SCHEMA, "id": uuid.uuid4().hex, "time": time.time(), "state": "open",
                "severity": "warning", "type": "drift", "label": "drift", "channel": channel,
                **({"regime": regime} if regime else {}),
                "detector": event["detector"], "stream": event["stream"], "explanation": expl,
                "model_version": self.model_version}

    def _raised(self, regime: str, entry: dict, rpm: tuple[float, float | None] | None) -> dict:
        drifted = sorted(((f, s) for f, s in entry.get("features", {}).items() if s["status"] == "drift"),
                         key=lambda fs: -fs[1]["psi"])
        parts = [f"{f} PSI {s['psi']:.2f}, KS {s['ks']:.2f}" for f, s in drifted]
        span = "" if rpm is None else (f" ({rpm[0]:g}-{rpm[1]:g} rpm)" if rpm[1] is not None else f" (>= {rpm[0]:g} rpm)")
        expl = (f"feature drift from the model's reference in regime {regime}{span} over the last {entry['windows']} windows: "
                + "; ".join(parts) + f" (model {self.model_version})")
        return {"schema": ALERT_SCHEMA, "id": uuid.uuid4().hex, "time": time.time(), "state": "open",
                "severity": "warning", "type": "drift", "label": "drift", "channel": "*", "regime": regime,
                "features": {f: s for f, s in drifted}, "windows": entry["windows"], "explanation": expl,
                "model_version": self.model_version}
