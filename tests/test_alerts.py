import numpy as np

from edge_agent.alerts import AlertRules
from edge_agent.baseline import BaselineModel, Prediction
from edge_agent.features import FeatureExtractor
from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.window import Window


def _window(channel="c0"):
    return Window(channel, np.zeros(256, np.float32), 25600.0, 1500.0, 0, 0, 255)


def _pred(score):
    return Prediction("anomaly" if score >= 6 else "normal", score, {}, (("kurtosis", 9.0, 3.0, score),))


def test_k_of_n_raise_and_m_quiet_clear():
    rules = AlertRules(raise_after=3, raise_window=5, clear_after=4, threshold=6.0, model_version="m1")
    scores = [9, 1, 9, 1, 1, 1, 1]  # only 2 hits in any 5: no alert
    assert all(rules.update(_window(), _pred(s)) == [] for s in scores)
    out = [rules.update(_window(), _pred(s)) for s in [9, 9, 9]]
    assert out[0] == [] and out[1] == [] and len(out[2]) == 1
    alert = out[2][0]
    assert alert["state"] == "open" and alert["type"] == "anomaly" and alert["model_version"] == "m1"
    assert "kurtosis 9 vs healthy 3" in alert["explanation"] and "1500 rpm" in alert["explanation"]
    # still anomalous: no second alert for the same channel and type
    assert rules.update(_window(), _pred(20)) == []
    assert len(rules.open_alerts()) == 1
    quiet = [rules.update(_window(), _pred(1)) for _ in range(4)]
    assert quiet[:3] == [[], [], []] and quiet[3][0]["state"] == "cleared" and quiet[3][0]["id"] == alert["id"]
    assert rules.open_alerts() == []


def test_channels_alert_independently():
    rules = AlertRules(raise_after=1, raise_window=1, clear_after=1, threshold=6.0, model_version="m")
    a = rules.update(_window("a"), _pred(10))
    b = rules.update(_window("b"), _pred(10))
    assert a[0]["channel"] == "a" and b[0]["channel"] == "b" and a[0]["id"] != b[0]["id"]


def _emulated_windows(scenario, n, seed=3):
    gen = SignalGenerator(SignalSpec(fs=25600.0, rpm=1500.0, scenario=scenario, seed=seed, onset_s=0.0, ramp_s=0.01))
    return [Window("c", gen.next_block(4096)[0], 25600.0, 1500.0, 0, 0, 4095) for _ in range(n)]


def test_baseline_model_separates_fault_from_healthy_emulator_signal():
    model = BaselineModel(baseline_windows=20, threshold=6.0)
    fx = FeatureExtractor()
    learn = model.predict(fx.extract(_emulated_windows("healthy", 20)), ["c"] * 20)
    assert [p.label for p in learn] == ["learning"] * 20
    healthy = model.predict(fx.extract(_emulated_windows("healthy", 40, seed=4)), ["c"] * 40)
    fault = model.predict(fx.extract(_emulated_windows("inner_race", 20, seed=5)), ["c"] * 20)
    assert max(p.anomaly_score for p in healthy) < 6.0
    assert min(p.anomaly_score for p in fault) > 6.0
    assert fault[0].top_deviations[0][0] in {"kurtosis", "crest", "impulse", "clearance", "peak", "rms"}


def test_a_rule_for_anomaly_sets_its_own_k_of_n_and_severity():
    from edge_agent.alerts import TypeRule

    rules = AlertRules(raise_after=3, raise_window=5, clear_after=4, threshold=6.0, model_version="m",
                       rules={"anomaly": TypeRule(2, 2, 1, severity="alarm")})
    out = [rules.update(_window(), _pred(s)) for s in (9, 9)]
    assert out[0] == [] and out[1][0]["severity"] == "alarm"  # 2 of 2; a score of 9 alone is a warning
    assert rules.update(_window(), _pred(1))[0]["state"] == "cleared"


def test_a_disabled_type_never_raises():
    from edge_agent.alerts import TypeRule

    rules = AlertRules(raise_after=1, raise_window=1, clear_after=1, threshold=6.0, model_version="m",
                       rules={"anomaly": TypeRule(1, 1, 1, enabled=False)})
    assert [m for _ in range(10) for m in rules.update(_window(), _pred(50))] == []
