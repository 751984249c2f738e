"""The model stage for a pack (edge_agent/pack_scorer.py) on the real int8 test pack."""
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.baseline import Prediction
from edge_agent.config import default_config
from edge_agent.pack import PackError, read_pack, write_pack
from edge_agent.pack_scorer import PackScorer
from edge_agent.window import Window

TINY = str(Path(__file__).parent / "data" / "tiny.pack")


@pytest.fixture(scope="module")
def scorer():
    return PackScorer(TINY, default_config())


def _reference(scorer):
    ref = np.load(io.BytesIO(scorer.pack.members["reference.npz"]))
    return ref["features"].astype(np.float64), ref["out_probabilities"], ref["out_anomaly"]


def _rows(scorer, pack_features):
    """Extractor-shaped rows holding the pack's features in their columns."""
    rows = np.full((len(pack_features), len(scorer.extractor.names)), np.nan)
    rows[:, scorer.feature_index] = pack_features
    return rows


def test_loads_with_manifest_window_thresholds_and_version(scorer):
    assert scorer.version == "tiny-test 0.1.0"
    assert scorer.labels == ("normal", "inner_race", "outer_race", "ball")
    assert (scorer.window_length, scorer.hop) == (4096, 2048)
    assert (scorer.anomaly_threshold, scorer.label_confidence) == (3.0, 0.6)
    assert [scorer.extractor.names[i] for i in scorer.feature_index] == list(scorer.model.feature_names)


def test_predict_on_reference_features_gives_reference_top_labels(scorer):
    feats, want_p, want_a = _reference(scorer)
    preds = scorer.predict(_rows(scorer, feats), ["ch"] * len(feats))
    assert len(preds) == len(feats)
    for pred, wp, wa in zip(preds, want_p, np.ravel(want_a)):
        assert pred.label in scorer.labels
        # the top label is the reference's (or ties with it within one output step)
        assert pred.scores[pred.label] == pytest.approx(float(np.max(wp)), abs=0.0079)
        assert float(wp[scorer.labels.index(pred.label)]) == pytest.approx(float(np.max(wp)), abs=0.0079)
        assert set(pred.scores) == set(scorer.labels)
        assert sum(pred.scores.values()) == pytest.approx(1.0, abs=0.05)
        assert pred.anomaly_score == pytest.approx(float(wa), abs=0.03)
        assert len(pred.top_deviations) == 3
        name, value, mean, z = pred.top_deviations[0]
        assert name in scorer.model.feature_names and np.isfinite(z)
    assert scorer.predict(_rows(scorer, feats[:0]), []) == []


def _repack(tmp_path, **changes):
    pack = read_pack(TINY)
    manifest = json.loads(pack.manifest_bytes)
    for key, value in changes.items():
        manifest[key] = value
    out = tmp_path / "changed.pack"
    write_pack(out, manifest, dict(pack.members))
    return str(out)


def test_unknown_feature_name_is_refused_naming_it(tmp_path):
    feats = dict(read_pack(TINY).manifest["features"])
    feats["names"] = ["bogus_feature"] + feats["names"][1:]
    with pytest.raises(PackError) as exc:
        PackScorer(_repack(tmp_path, features=feats), default_config())
    msg = str(exc.value)
    assert "bogus_feature" in msg and "\n" not in msg


def test_manifest_feature_spec_builds_the_extractor(tmp_path):
    feats = dict(read_pack(TINY).manifest["features"])
    feats["spec"] = {"band_edges_hz": [10, 1000, 4000], "envelope_band_hz": [2000, 5000], "order_tolerance": 0.03,
                     "noise_floor_bins": 10}
    s = PackScorer(_repack(tmp_path, features=feats), default_config())
    assert s.spec.band_edges_hz == (10.0, 1000.0, 4000.0) and s.spec.envelope_band_hz == (2000.0, 5000.0)
    assert s.spec.order_tolerance == 0.03 and s.spec.noise_floor_bins == 10
    assert "band_rms_10_1000" in s.extractor.names


@pytest.mark.parametrize("value", [0, -12000.0, "12k", True, None])
def test_window_reference_rate(tmp_path, value):
    feats = dict(read_pack(TINY).manifest["features"])
    feats["window_reference_fs_hz"] = value
    path = _repack(tmp_path, features=feats)
    if value is None:  # JSON null: the window is window_length samples at every rate
        assert PackScorer(path, default_config()).window_reference_fs is None
        return
    with pytest.raises(PackError, match="window_reference_fs_hz must be a positive number"):
        PackScorer(path, default_config())


def test_a_window_reference_rate_is_used(tmp_path):
    feats = dict(read_pack(TINY).manifest["features"])
    feats["window_reference_fs_hz"] = 12000
    assert PackScorer(_repack(tmp_path, features=feats), default_config()).window_reference_fs == 12000.0


def test_a_broken_pack_is_one_line(tmp_path):
    bad = tmp_path / "bad.pack"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PackError) as exc:
        PackScorer(str(bad), default_config())
    assert "\n" not in str(exc.value)


def _pred(label, p, anomaly, labels=("normal", "inner_race", "outer_race", "ball")):
    rest = (1 - p) / (len(labels) - 1)
    return Prediction(label, anomaly, {lab: (p if lab == label else rest) for lab in labels},
                      (("env_bpfi_1", 9.0, 1.2, 5.5),))


def _window(i, channel="ch"):
    return Window(channel, np.zeros(4096, np.float32), 12000.0, 1797.0, i * 170_667, i * 2048, i * 2048 + 4095)


def test_hit_rule(scorer):
    assert scorer.hit(_pred("inner_race", 0.9, 0.5)) == "inner_race"
    assert scorer.hit(_pred("inner_race", 0.5, 0.5)) is None  # unsure fault, low anomaly
    assert scorer.hit(_pred("inner_race", 0.5, 3.5)) == "anomaly"
    assert scorer.hit(_pred("normal", 0.9, 3.0)) == "anomaly"
    assert scorer.hit(_pred("normal", 0.9, 2.9)) is None


def test_alert_rules_fire_on_a_fault_run_and_not_on_a_normal_one(scorer):
    rules = scorer.rules(default_config())
    normal = [m for i in range(30) for m in rules.update(_window(i, "a"), _pred("normal", 0.95, 1.0))]
    assert normal == []
    fault = [m for i in range(10) for m in rules.update(_window(i, "b"), _pred("outer_race", 0.93, 4.0))]
    assert len(fault) == 1
    alert = fault[0]
    assert alert["state"] == "open" and alert["type"] == "outer_race" and alert["label"] == "outer_race"
    assert alert["model_version"] == "tiny-test 0.1.0" and alert["schema"] == 1
    for part in ("outer_race", "0.93", "1797 rpm", "tiny-test 0.1.0", "env_bpfi_1"):
        assert part in alert["explanation"]
    cleared = [m for i in range(10, 30) for m in rules.update(_window(i, "b"), _pred("normal", 0.95, 1.0))]
    assert [m["state"] for m in cleared] == ["cleared"]
    json.dumps(alert)  # publishable


def test_anomaly_alert_when_the_classifier_says_normal(scorer):
    rules = scorer.rules(replace(default_config()))
    msgs = [m for i in range(5) for m in rules.update(_window(i), _pred("normal", 0.7, 8.0))]
    assert len(msgs) == 1 and msgs[0]["type"] == "anomaly" and msgs[0]["severity"] == "alarm"
    assert "anomaly score 8.00" in msgs[0]["explanation"]


def test_per_type_rules_from_the_config(scorer):
    """[[alert_rule]]: inner_race raises on its first window with a fixed severity, outer_race
    is switched off, anomaly keeps [alerts] (3 of 5)."""
    cfg = default_config(alert_rule=[
        {"type": "inner_race", "raise_after": 1, "raise_window": 1, "clear_after": 2, "severity": "info"},
        {"type": "outer_race", "enabled": False}])
    rules = scorer.rules(cfg)
    first = rules.update(_window(0, "ir"), _pred("inner_race", 0.95, 1.0))
    assert [(m["type"], m["state"], m["severity"]) for m in first] == [("inner_race", "open", "info")]
    quiet = [m for i in range(1, 3) for m in rules.update(_window(i, "ir"), _pred("normal", 0.95, 1.0))]
    assert [m["state"] for m in quiet] == ["cleared"]  # after its own 2, not [alerts]' 10
    assert [m for i in range(20) for m in rules.update(_window(i, "or"), _pred("outer_race", 0.99, 2.0))] == []
    anomaly = [[m["type"] for m in rules.update(_window(i, "an"), _pred("normal", 0.9, 5.0))] for i in range(3)]
    assert anomaly == [[], [], ["anomaly"]]
