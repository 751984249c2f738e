"""SIGHUP reload (edge_agent/reload.py): what is live, what needs a restart, a bad file refused.
An Agent built from a real file (not running: the test thread stands in for the processing
thread), and one real `edge-agent run` process reloaded by SIGHUP."""
from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import time

import pytest

from cli_helpers import edge_agent_cmd
from edge_agent.agent import Agent
from edge_agent.alerts import Hysteresis
from edge_agent.config import load_config, parse_config
from edge_agent.reload import changed_keys, is_live, merge, reload_config, retune_hysteresis
from edge_agent.status_file import read_status

BASE = """
[device]
site = "farm-r"
id = "wtg-01"
[broker]
enabled = false
port = 1883
[[source]]
type = "emulator"
channels = 1
speedup = 2.0
[alerts]
raise_after = 3
raise_window = 5
[publish]
summary_interval_s = 60.0
status_interval_s = 0.5
[storage]
dir = "{state}"
"""


def _write(path, text, state):
    path.write_text(text.replace("{state}", str(state)))
    return path


def test_keys_are_diffed_one_by_one_and_classified():
    old = parse_config(BASE.replace("{state}", "/tmp/x"))
    new = parse_config(BASE.replace("{state}", "/tmp/x").replace("raise_after = 3", "raise_after = 2")
                       .replace('id = "wtg-01"', 'id = "wtg-02"').replace("port = 1883", "port = 1884")
                       + '[logging]\nlevel = "debug"\n[[alert_rule]]\ntype = "anomaly"\nseverity = "alarm"\n'
                       '[drift]\npsi_drift = 0.3\n[updates]\nshadow_windows = 50\n')
    keys = changed_keys(old, new)
    assert set(keys) == {"alerts.raise_after", "device.id", "broker.port", "broker.client_id", "logging.level",
                         "alert_rule", "drift.psi_drift", "updates.shadow_windows"}
    assert [k for k in keys if not is_live(k)] == ["device.id", "broker.port", "broker.client_id"]
    for key in ("source", "storage.dir", "model.pack", "window.length", "logging.format", "iso_zone",
                "updates.trusted_keys_dir", "queues.samples", "page.enabled", "some_new_section.key"):
        assert not is_live(key), key
    for key in ("quality.action", "publish.summary_interval_s", "updates.health_windows", "alerts.anomaly_threshold"):
        assert is_live(key), key
    live = [k for k in keys if is_live(k)]
    merged = merge(old, new, live)
    assert merged.alerts.raise_after == 2 and merged.logging.level == "debug" and merged.drift.psi_drift == 0.3
    assert merged.device.id == "wtg-01" and merged.broker.port == 1883  # not live: as they run
    assert changed_keys(merged, new) == ["device.id", "broker.port", "broker.client_id"]


def test_a_shorter_rule_keeps_the_open_alert_and_the_latest_windows():
    h = Hysteresis(3, 5, 4)
    made = []
    for hit in ("anomaly", None, "anomaly", "anomaly"):
        made += h.step("ch0", hit, lambda kind: {"id": "a1", "state": "open", "type": kind})
    assert len(made) == 1 and h.open_alerts()
    retune_hysteresis(h, 2, 3, 2)
    st = h._channels["ch0"]
    assert st.recent.maxlen == 3 and list(st.recent) == [None, "anomaly", "anomaly"]
    assert h.open_alerts() == made  # still open
    out = h.step("ch0", None, lambda kind: {}) + h.step("ch0", None, lambda kind: {})
    assert [m["state"] for m in out] == ["cleared"]  # after the new clear_after (2)


def test_reload_applies_the_live_keys_and_leaves_the_rest_until_a_restart(tmp_path, caplog):
    cfg_file = _write(tmp_path / "a.toml", BASE, tmp_path / "state")
    agent = Agent(load_config(cfg_file))
    before_topics, drift_alerts = agent.topics.base, agent.drift.alerts
    edited = (BASE.replace("raise_after = 3", "raise_after = 2\nanomaly_threshold = 9.0")
              .replace('id = "wtg-01"', 'id = "wtg-09"').replace("summary_interval_s = 60.0", "summary_interval_s = 5.0")
              + '[quality]\naction = "drop"\nalert_after = 4\nrange_g = 50.0\n[drift]\nraise_after = 1\npsi_drift = 0.5\n'
              + '[logging]\nlevel = "warning"\n[[alert_rule]]\ntype = "anomaly"\nseverity = "alarm"\nraise_window = 7\n')
    _write(cfg_file, edited, tmp_path / "state")
    root_level = logging.getLogger().level
    try:
        with caplog.at_level(logging.INFO, logger="edge_agent.reload"):
            result = reload_config(agent, str(cfg_file))
        assert result["result"] == "ok" and result["needs_restart"] == ["device.id", "broker.client_id"]
        assert any("needs a restart: device.id, broker.client_id" in r.getMessage() for r in caplog.records)
        assert logging.getLogger().level == logging.WARNING
    finally:
        logging.getLogger().setLevel(root_level)
    # live: the rules retuned in place, the rest replaced
    assert agent.cfg.alerts.raise_after == 2 and agent.rules.raise_after == 2
    assert agent.rules.threshold == 9.0 and agent.model.threshold == 9.0
    typed = agent.rules._hysteresis
    assert typed.rule("anomaly").raise_window == 7 and typed.rule("anomaly").severity == "alarm"
    assert agent.quality_action == "drop" and agent.quality_limits.range_g == 50.0
    assert agent.quality_problems.alert_after == 4 and agent.quality_problems.action == "drop"
    assert agent.drift.thresholds.psi_drift == 0.5 and agent.drift.alerts is drift_alerts
    assert drift_alerts._h.raise_after == 1
    assert agent.cfg.publish.summary_interval_s == 5.0
    # not live: as it runs
    assert agent.cfg.device.id == "wtg-01" and agent.topics.base == before_topics
    snap = agent.snapshot()["reloads"]
    assert snap["ok"] == 1 and snap["refused"] == 0 and snap["needs_restart"] == ["device.id", "broker.client_id"]
    # the same file again: only what still waits for a restart is said again
    assert reload_config(agent, str(cfg_file))["applied"] == []


def test_a_bad_file_is_refused_one_line_per_problem_and_the_running_config_stays(tmp_path, caplog):
    cfg_file = _write(tmp_path / "a.toml", BASE, tmp_path / "state")
    agent = Agent(load_config(cfg_file))
    running = agent.cfg
    bad = BASE.replace("raise_after = 3", "raise_after = 0").replace("channels = 1", "channels = 1\nbogus = 2")
    _write(cfg_file, bad + '[logging]\nlevel = "loud"\n', tmp_path / "state")
    with caplog.at_level(logging.INFO, logger="edge_agent.reload"):
        result = reload_config(agent, str(cfg_file))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert result["result"] == "refused" and len(lines) == 3, lines
    assert all(line.startswith("config reload refused, the running config stays: ") for line in lines)
    assert any("alerts.raise_after" in x for x in lines) and any("bogus" in x for x in lines)
    assert any("logging.level" in x for x in lines)
    assert agent.cfg is running
    (tmp_path / "a.toml").unlink()
    assert reload_config(agent, str(cfg_file))["result"] == "refused"  # gone: refused too
    assert agent.snapshot()["reloads"]["refused"] == 2 and agent.cfg is running


def test_sighup_reloads_a_running_daemon(tmp_path):
    state = tmp_path / "state"
    cfg_file = _write(tmp_path / "a.toml", BASE, state)
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg_file)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)

    def reloads(want_ok, want_refused):
        deadline = time.monotonic() + 15
        snap = None
        while time.monotonic() < deadline and p.poll() is None:
            snap = read_status(state)
            r = (snap or {}).get("reloads") or {}
            if r.get("ok") == want_ok and r.get("refused") == want_refused:
                return snap
            time.sleep(0.1)
        pytest.fail(f"reloads not ({want_ok}, {want_refused}): {snap and snap.get('reloads')}, exit {p.poll()}")

    try:
        reloads(0, 0)
        _write(cfg_file, BASE.replace("raise_after = 3", "raise_after = 2").replace('id = "wtg-01"', 'id = "x"'), state)
        p.send_signal(signal.SIGHUP)
        snap = reloads(1, 0)
        assert snap["reloads"]["needs_restart"] == ["device.id", "broker.client_id"]
        assert snap["reloads"]["last"]["applied"] == ["alerts.raise_after"]
        _write(cfg_file, BASE.replace("channels = 1", "channels = 99"), state)
        p.send_signal(signal.SIGHUP)
        reloads(1, 1)
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in out + err, err
    assert "config reload: needs a restart: device.id, broker.client_id (ignored until then)" in out
    assert "config reload: applied alerts.raise_after" in out
    refused = [line for line in out.splitlines() if "config reload refused" in line]
    assert len(refused) == 1 and "source[0].channels" in refused[0], out
    assert read_status(state)["reloads"]["ok"] == 1


def test_unknown_sections_are_restart_only():
    """A key reload.py does not know (e.g. a section added later) is never applied live."""
    cfg = parse_config(BASE.replace("{state}", "/tmp/x"))
    assert all(not is_live(f"{f.name}.anything") for f in dataclasses.fields(cfg)
               if f.name not in ("alerts", "publish", "quality", "drift", "updates"))


def test_alert_rules_of_a_pack_are_retuned_and_its_own_threshold_wins(tmp_path):
    from pathlib import Path

    pack = Path(__file__).resolve().parent.parent / "models" / "default.pack"
    text = BASE + f'[model]\npack = "{pack}"\n'
    cfg_file = _write(tmp_path / "a.toml", text, tmp_path / "state")
    agent = Agent(load_config(cfg_file))
    threshold = agent.model.anomaly_threshold
    _write(cfg_file, text.replace("raise_after = 3", "raise_after = 1\nanomaly_threshold = 99.0")
           + '[[alert_rule]]\ntype = "inner_race"\nenabled = false\n', tmp_path / "state")
    assert reload_config(agent, str(cfg_file))["applied"] == ["alerts.anomaly_threshold", "alerts.raise_after", "alert_rule"]
    assert agent.rules.raise_after == 1 and not agent.rules._hysteresis.rule("inner_race").enabled
    has_own = "anomaly" in agent.model.pack.manifest["thresholds"]
    assert agent.model.anomaly_threshold == (threshold if has_own else 99.0)
