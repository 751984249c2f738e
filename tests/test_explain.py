"""Alert explanations against the healthy reference (edge_agent/explain.py) and one open alert
per channel and type (pack_scorer.PackAlertRules), with the shipped default pack."""
from pathlib import Path

import numpy as np

from edge_agent.baseline import Prediction
from edge_agent.config import default_config
from edge_agent.explain import beyond_baseline, order_of
from edge_agent.features import FeatureSpec
from edge_agent.pack_scorer import PackScorer
from edge_agent.window import Window

PACK = str(Path(__file__).resolve().parent.parent / "models" / "default.pack")


def test_envelope_features_are_named_by_order():
    spec = FeatureSpec.default()
    what, order = order_of("env_bpfi_1", spec)
    assert what == "BPFI" and order == spec.orders.bpfi
    assert order_of("env_bpfo_3", spec) == ("3x BPFO", 3 * spec.orders.bpfo)
    assert order_of("env_bpfi_sb_lo", spec)[1] == spec.orders.bpfi - 1
    assert order_of("kurtosis", spec) is None


def _window(rpm=1500.0, channel="ch"):
    return Window(channel, np.zeros(4096, np.float32), 12000.0, rpm, 0, 0, 4095)


def test_an_inner_race_explanation_names_the_bpfi_line_in_hz_against_healthy_machines():
    scorer = PackScorer(PACK, default_config())
    names = list(scorer.model.feature_names)
    ref = scorer.profile.reference_at(1500.0)
    x = np.array([float(np.interp(0.5, np.linspace(0, 1, len(ref[n].get("cdf") or ref[n]["edges"])),
                                  ref[n].get("cdf") or ref[n]["edges"])) for n in names])  # healthy medians
    x[names.index("env_bpfi_1")] = 25.0
    rows = beyond_baseline(names, x, 1500.0, scorer.spec, ref)
    assert [r["feature"] for r in rows] == ["env_bpfi_1"] and rows[0]["crossed"]
    assert rows[0]["order"]["hz"] == round(scorer.spec.orders.bpfi * 25.0, 1)
    pred = Prediction("inner_race", 3.0, {"normal": 0.02, "inner_race": 0.95, "outer_race": 0.02, "ball": 0.01},
                      (), inputs=x)
    rules = scorer.rules(default_config())
    msgs = [m for _ in range(5) for m in rules.update(_window(), pred)]
    assert len(msgs) == 1 and msgs[0]["type"] == "inner_race"
    text = msgs[0]["explanation"]
    assert "env_bpfi_1 (BPFI 5.42x = 135 Hz at 1500 rpm) 25, above the healthy limit" in text, text
    assert msgs[0]["evidence_features"][0]["feature"] == "env_bpfi_1"


def test_one_open_alert_per_channel_and_type():
    scorer = PackScorer(PACK, default_config())
    rules = scorer.rules(default_config())
    fault = Prediction("inner_race", 0.5, {"normal": 0.02, "inner_race": 0.95, "outer_race": 0.02, "ball": 0.01})
    odd = Prediction("normal", 5.0, {"normal": 0.9, "inner_race": 0.05, "outer_race": 0.03, "ball": 0.02})
    msgs = []
    for _ in range(5):
        msgs += rules.update(_window(), fault)
    for _ in range(5):
        msgs += rules.update(_window(), odd)
    for _ in range(5):
        msgs += rules.update(_window(channel="other"), fault)
    opened = [(m["channel"], m["type"]) for m in msgs if m["state"] == "open"]
    assert opened == [("ch", "inner_race"), ("ch", "anomaly"), ("other", "inner_race")]
    assert len(rules.open_alerts()) == 3
