"""The model stage for a model pack: features in, one Prediction per window out, and the
alert rules that go with a pack.

:class:`PackScorer` wraps :class:`edge_agent.model_runtime.PackModel` (which checks the
pack's tensors and runs its self-test at load) and adds what the pipeline needs:

* the feature extractor the pack was built for: from the manifest's ``features.spec``
  (``band_edges_hz``, ``envelope_band_hz``, ``order_tolerance``, ``noise_floor_bins``) with
  the config's ``[bearing]`` geometry when the manifest has one, else from the config's
  ``[features]`` and ``[bearing]``;
* the mapping of the extractor's vector to the pack's ``features.names`` (a name the
  extractor does not compute refuses the pack at load, naming it);
* the window length and hop: the manifest's ``features.window_length`` / ``hop`` when
  given, else the config's ``[window]``; with ``features.window_reference_fs_hz`` they are the
  figures at that rate and scale with each channel's rate (same duration at every rate,
  edge_agent/windower.py);
* the thresholds: ``thresholds.anomaly`` (default: ``[alerts] anomaly_threshold``) and
  ``thresholds.label_confidence`` (default 0.6).

Labels (decision): a prediction's ``label`` is always the classifier's top class, one of
the pack's labels (the replay contract says so), never a made-up "anomaly" label. Whether a
window counts for an alert is :meth:`PackScorer.hit`: a fault label (any label but
``normal``) with probability >= ``label_confidence`` gives an alert of that label's type
(``inner_race``, ...); otherwise an anomaly score >= the anomaly threshold gives an alert of
type ``anomaly`` (a fault the classifier never saw, or one it is unsure of). The same rule
drives the daemon's :class:`PackAlertRules` and ``edge-agent replay``'s ``alert`` field.

Every load problem (unreadable or altered pack, failed self-test, no interpreter, unknown
feature name, bad spec) is a :class:`edge_agent.pack.PackError` with one line.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.alerts import TypedHysteresis, TypeRule, type_rules
from edge_agent.baseline import Prediction
from edge_agent.bearing import BearingGeometry
from edge_agent.drift import Profile, ProfileError
from edge_agent.explain import beyond_baseline, describe
from edge_agent.features import FeatureExtractor, FeatureSpec
from edge_agent.interpreter import NoInterpreterBackend
from edge_agent.pack import PackError, read_pack
from edge_agent.window import Window

log = logging.getLogger(__name__)

NORMAL = "normal"
DEFAULT_LABEL_CONFIDENCE = 0.6
TOP_DEVIATIONS = 3
SCHEMA = 1


def _spec_from_manifest(spec: dict[str, Any], cfg: Any, path: str) -> FeatureSpec:
    b = cfg.bearing
    geometry = BearingGeometry(b.n_balls, b.ball_diameter, b.pitch_diameter, b.contact_angle_deg)
    f = cfg.features
    try:
        edges = tuple(float(x) for x in spec.get("band_edges_hz", f.band_edges_hz))
        band = spec.get("envelope_band_hz", f.envelope_band_hz)
        band = tuple(float(x) for x in band) if band else None
        tol = float(spec.get("order_tolerance", f.order_tolerance))
        floor = int(spec.get("noise_floor_bins", f.noise_floor_bins))
    except (TypeError, ValueError) as exc:
        raise PackError(f"{path}: features.spec is malformed: {exc}") from None
    if len(edges) < 2 or any(not 0 <= a < b_ <= 100000 for a, b_ in zip(edges, edges[1:])):
        raise PackError(f"{path}: features.spec.band_edges_hz must be at least 2 increasing numbers")
    if band is not None and not (len(band) == 2 and 0 < band[0] < band[1]):
        raise PackError(f"{path}: features.spec.envelope_band_hz must be [] or [lo, hi] with 0 < lo < hi")
    if not (0 < tol < 1) or floor < 1:
        raise PackError(f"{path}: features.spec: order_tolerance must be in (0, 1) and noise_floor_bins >= 1")
    return FeatureSpec(geometry.orders(), edges, band, tol, floor)


@dataclass(frozen=True, slots=True)
class PackWindowing:
    """What a pack asks of the pipeline ahead of its model: the feature spec and the windows."""

    spec: FeatureSpec
    window_length: int
    hop: int
    # None: the window is window_length samples at every rate; else window_length / hop are
    # the figures at this rate and scale with the rate in powers of two (edge_agent/windower.py)
    window_reference_fs: float | None


def pack_windowing(pack: Any, cfg: Any, path: str) -> PackWindowing:
    """The pack's feature spec and windowing (manifest ``features``, the config filling in
    what it leaves out), checked; PackError when malformed. Needs no interpreter: replay's
    feature worker starts from it before the model is loaded (replay_cmd.py)."""
    feats = pack.manifest["features"]
    spec = feats.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise PackError(f"{path}: features.spec must be an object")
    spec = _spec_from_manifest(spec, cfg, path) if spec else FeatureSpec.from_config(cfg)
    length = _int_or(feats.get("window_length"), cfg.window.length, path, "features.window_length")
    hop = _int_or(feats.get("hop"), cfg.window.hop or length // 2, path, "features.hop")
    if length < 256 or length & (length - 1):
        raise PackError(f"{path}: features.window_length {length} is not a power of two >= 256")
    if not 1 <= hop <= length:
        raise PackError(f"{path}: features.hop {hop} must be from 1 to the window length")
    ref_fs = feats.get("window_reference_fs_hz")
    if ref_fs is not None and (isinstance(ref_fs, bool) or not isinstance(ref_fs, (int, float))
                               or not np.isfinite(ref_fs) or ref_fs <= 0):
        raise PackError(f"{path}: features.window_reference_fs_hz must be a positive number of Hz, got {ref_fs!r}")
    return PackWindowing(spec, length, hop, float(ref_fs) if ref_fs is not None else None)


class PackScorer:
    """A model pack as the pipeline's model stage (see the module docstring)."""

    def __init__(self, pack_path: str, cfg: Any) -> None:
        from edge_agent.model_runtime import PackModel  # imports the interpreter seam

        path = str(pack_path)
        pack = read_pack(path)
        m = pack.manifest
        try:
            self.model = PackModel(pack, backend=cfg.model.backend, num_threads=cfg.model.num_threads)
        except NoInterpreterBackend as exc:
            raise PackError(f"{path}: no TFLite interpreter to run it: {exc}", reason="not_tflite") from None
        except PackError:
            raise
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise PackError(f"{path}: cannot be loaded: {exc}") from None
        self.path = path
        self.pack = pack
        self.version = pack.describe()
        self.labels: tuple[str, ...] = self.model.labels
        feats = m["features"]
        windowing = pack_windowing(pack, cfg, path)
        self.spec = windowing.spec
        self.extractor = FeatureExtractor(self.spec)
        known = {name: i for i, name in enumerate(self.extractor.names)}
        unknown = [n for n in self.model.feature_names if n not in known]
        if unknown:
            raise PackError(
                f"{path}: features.names has {', '.join(map(repr, unknown))}, which this agent does not compute "
                f"(with this feature spec it computes {len(known)} features, e.g. {', '.join(list(known)[:6])}, ...)"
            )
        self.feature_index = np.array([known[n] for n in self.model.feature_names], dtype=np.intp)
        self.window_length, self.hop = windowing.window_length, windowing.hop
        self.window_reference_fs = windowing.window_reference_fs
        fs_range = feats.get("fs_range")
        self.fs_range = tuple(float(x) for x in fs_range) if isinstance(fs_range, list) and len(fs_range) == 2 else None
        th = m["thresholds"]
        try:
            self.anomaly_threshold = float(th.get("anomaly", cfg.alerts.anomaly_threshold))
            self.label_confidence = float(th.get("label_confidence", DEFAULT_LABEL_CONFIDENCE))
        except (TypeError, ValueError):
            raise PackError(f"{path}: thresholds.anomaly and thresholds.label_confidence must be numbers") from None
        if not (self.anomaly_threshold > 0 and 0 < self.label_confidence <= 1):
            raise PackError(f"{path}: thresholds: anomaly must be > 0 and label_confidence in (0, 1]")
        norm = feats.get("normalisation", {})
        n = len(self.model.feature_names)
        self._log = np.asarray(norm.get("log", [False] * n), dtype=bool)
        self._mean = np.asarray(norm.get("mean", [0.0] * n), dtype=np.float64)
        self._std = np.asarray(norm.get("std", [1.0] * n), dtype=np.float64)
        self.backend = self.model.backend.describe()
        try:  # the healthy reference of the explanations (and of drift.py)
            self.profile = Profile.from_manifest(m.get("drift_profile"), list(self.model.feature_names))
        except ProfileError as exc:
            log.warning("%s: drift profile not usable (%s): explanations against the training mean", path, exc)
            self.profile = None

    # -- the model stage ------------------------------------------------------------------------
    def select(self, features: np.ndarray) -> np.ndarray:
        """The pack's input columns (manifest order) of the extractor's feature rows."""
        return np.atleast_2d(features)[:, self.feature_index]

    def predict(self, features: np.ndarray, channels: list[str]) -> list[Prediction]:
        """One Prediction per row of ``features`` (rows as from ``self.extractor``)."""
        x = self.select(features)
        if len(x) == 0:
            return []
        out = self.model.run(x)
        z = self.model.normalise(x)  # standardised deviation from the training mean
        training_mean = np.where(self._log, np.exp(self._mean), self._mean)
        names = self.model.feature_names
        labels = self.labels
        # vectorised over the batch; the per-row loop only builds the Python objects
        z = np.where(np.isfinite(z), z, np.inf)
        order = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :TOP_DEVIATIONS]
        rows = np.arange(len(x))[:, None]
        dev_x, dev_z = x[rows, order].tolist(), z[rows, order].tolist()
        dev_mean = training_mean[order].tolist()
        top = np.argmax(out.probabilities, axis=1).tolist()
        probs = out.probabilities.tolist()
        anomaly = out.anomaly.tolist()
        order = order.tolist()
        preds = []
        for row in range(len(x)):
            preds.append(Prediction(
                label=labels[top[row]],
                anomaly_score=anomaly[row],
                scores=dict(zip(labels, probs[row])),
                top_deviations=tuple(zip([names[j] for j in order[row]], dev_x[row], dev_mean[row], dev_z[row])),
                inputs=x[row],
            ))
        return preds

    def hit(self, pred: Prediction) -> str | None:
        """The alert type this window counts toward, or None (see the module docstring)."""
        if pred.label != NORMAL and pred.scores.get(pred.label, 0.0) >= self.label_confidence:
            return pred.label
        if pred.anomaly_score >= self.anomaly_threshold:
            return "anomaly"
        return None

    def rules(self, cfg: Any) -> PackAlertRules:
        default, by_type = type_rules(cfg)
        return PackAlertRules(self, default.raise_after, default.raise_window, default.clear_after, by_type)


def _int_or(value: Any, default: int, path: str, key: str) -> int:
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PackError(f"{path}: {key} must be an integer, got {value!r}")
    return value


@dataclass(slots=True)
class PackAlertRules:
    """The alert rules with a pack: the same k-of-n hysteresis as :class:`AlertRules`
    (``raise_after`` hits of the last ``raise_window`` windows raise, ``clear_after`` quiet
    windows in a row clear), with :meth:`PackScorer.hit` deciding what a hit is: a fault
    label, or ``anomaly``. At most one alert is open per channel and type; each type runs its
    own k of n, with its own rule when the config has one (``[[alert_rule]]``)."""

    scorer: PackScorer
    raise_after: int
    raise_window: int
    clear_after: int
    rules: dict[str, TypeRule] = field(default_factory=dict)  # [[alert_rule]] by type
    _hysteresis: TypedHysteresis | None = None
    _types: set | None = None

    def __post_init__(self) -> None:
        self._hysteresis = TypedHysteresis(TypeRule(self.raise_after, self.raise_window, self.clear_after),
                                           self.rules)
        self._types: set[str] = set()  # alert types seen: each keeps its own history per channel

    @property
    def model_version(self) -> str:
        return self.scorer.version

    @property
    def threshold(self) -> float:
        return self.scorer.anomaly_threshold

    def open_alerts(self) -> list[dict]:
        return self._hysteresis.open_alerts()

    def adopt(self, alert: dict) -> bool:
        """An open alert of a previous run or model continues here (True) when this pack
        raises its type (a fault label of this pack, or ``anomaly``)."""
        kind = alert.get("type")
        if kind != "anomaly" and (kind not in self.scorer.labels or kind == "normal"):
            return False
        if not self._hysteresis.adopt(alert):
            return False
        self._types.add(kind)  # stepped from now on, so it clears after clear_after quiet windows
        return True

    def update(self, window: Window, pred: Prediction) -> list[dict]:
        """One open alert per channel (the component) and type: each type's k-of-n runs on
        its own (a window that hits ``inner_race`` is quiet for ``anomaly``)."""
        hit = self.scorer.hit(pred)
        if hit is not None:
            self._types.add(hit)
        msgs: list[dict] = []
        for kind in sorted(self._types):
            msgs += self._hysteresis.step(window.channel, kind, hit == kind,
                                          lambda k: self._raised(window, pred, k))
        return msgs

    def _raised(self, window: Window, pred: Prediction, alert_type: str) -> dict:
        s = self.scorer
        p = pred.scores.get(pred.label, 0.0)
        severity = "alarm" if (pred.anomaly_score >= 2 * s.anomaly_threshold or (alert_type != "anomaly" and p >= 0.9)) else "warning"
        devs = "; ".join(f"{name} {value:.3g} vs training mean {mean:.3g} ({z:+.1f} sigma)"
                         for name, value, mean, z in pred.top_deviations)
        what = (f"{alert_type} fault, probability {p:.2f} (confidence threshold {s.label_confidence:g})"
                if alert_type != "anomaly" else
                f"anomaly: anomaly score {pred.anomaly_score:.2f} (threshold {s.anomaly_threshold:g}), "
                f"top class {pred.label} with probability {p:.2f}")
        explanation = (f"{what} on {window.channel} at {window.rpm:.0f} rpm, model {s.version}; "
                       f"anomaly score {pred.anomaly_score:.2f}")
        beyond = []
        if s.profile is not None and pred.inputs is not None:
            beyond = beyond_baseline(s.model.feature_names, pred.inputs, window.rpm, s.spec,
                                     s.profile.reference_at(window.rpm))
        if beyond:
            explanation += f"; against healthy machines: {describe(beyond, window.rpm)}"
        elif devs:
            explanation += f"; most deviating features: {devs}"
        return {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "time": time.time(),
            "state": "open",
            "severity": severity,
            "type": alert_type,
            "label": pred.label,
            "probability": round(p, 4),
            "scores": {k: round(v, 4) for k, v in pred.scores.items()},
            "channel": window.channel,
            "anomaly_score": round(pred.anomaly_score, 3),
            "rpm": round(window.rpm, 1),
            "window_t_start_us": window.t_start_us,
            "explanation": explanation,
            "evidence_features": beyond,
            "model_version": s.version,
        }
