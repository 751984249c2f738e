"""The technicians' local alert log (edge_agent/alert_log.py, issue #7 part 5): alerts and
their evidence kept on the gateway, read and acknowledged with ``edge-agent alerts`` (a real
subprocess, no broker, no daemon), acknowledgements published to the fleet through the outbox
when the link is up (a real mosquitto), evidence exported as labelled data."""
import csv
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.alert_log import EVIDENCE_WINDOWS, AlertLog, AlertLogError, Evidence
from tests.cli_helpers import run_cli
from tests.test_agent import _config, emulator_blocks, feed


def _agent_with_an_alert(tmp_path, broker=None):
    agent = Agent(_config(tmp_path, broker))
    feed(agent, emulator_blocks("inner_race", 25.0, channels=1))
    assert agent.alerts_raised >= 1
    return agent


def _toml(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n[broker]\nenabled = false\n')
    return str(path)


def test_alerts_are_kept_with_evidence_and_listed_without_a_daemon(tmp_path):
    agent = _agent_with_an_alert(tmp_path)
    cfg = _toml(tmp_path)
    r = run_cli("alerts", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    opened = [row for row in rows if row["state"] == "open"]
    assert opened and all(row["explanation"] and row["model_version"] for row in rows)
    assert opened[0]["evidence_windows"] == EVIDENCE_WINDOWS
    ev = agent.alert_log.evidence(opened[0]["id"])
    assert len(ev) == EVIDENCE_WINDOWS and all(len(e.samples) == 4096 and e.fs == 25600.0 for e in ev)
    table = run_cli("alerts", "--config", cfg)
    assert table.returncode == 0 and opened[0]["id"][:12] in table.stdout and opened[0]["explanation"] in table.stdout
    only_open = json.loads(run_cli("alerts", "--config", cfg, "--open", "--json").stdout)
    assert {row["state"] for row in only_open} == {"open"}


def test_ack_from_the_command_line_reaches_the_outbox_once(tmp_path):
    agent = _agent_with_an_alert(tmp_path)
    cfg = _toml(tmp_path)
    alert_id = agent.alert_log.list()[0]["id"]
    r = run_cli("alerts", "ack", alert_id[:8], "--by", "Ana Souza", "--verdict", "confirmed", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert alert_id in r.stdout and "Ana Souza" in r.stdout
    row = next(x for x in agent.alert_log.list() if x["id"] == alert_id)
    assert (row["ack_by"], row["verdict"], row["ack_published"]) == ("Ana Souza", "confirmed", 0)
    again = run_cli("alerts", "--config", cfg, "ack", alert_id, "--by", "Ana Souza", "--verdict", "confirmed")
    assert again.returncode == 0, again.stderr  # --config before the subcommand works too
    assert agent.pump_acks() == 1 and agent.pump_acks() == 0
    assert agent.outbox.committed["ack"] == 1
    item = next(i for i in agent.outbox.pending(1000) if i.kind == "ack")
    msg = json.loads(item.payload)
    assert msg["alert_id"] == alert_id and msg["verdict"] == "confirmed" and msg["by"] == "Ana Souza" and "seq" in msg


@pytest.mark.parametrize("args,reason", [
    (["ack", "zzzzzzzz", "--by", "Ana"], "no alert with id"),
    (["ack", "abc", "--by", "Ana"], "too short"),
    (["ack", "ID", "--by", "Ana", "--verdict", "maybe"], "invalid choice"),
    (["ack", "ID"], "--by"),
])
def test_bad_acks_are_one_line_exit_2(tmp_path, args, reason):
    agent = _agent_with_an_alert(tmp_path)
    alert_id = agent.alert_log.list()[0]["id"]
    args = [alert_id[:10] if a == "ID" else a for a in args]
    r = run_cli("alerts", *args, "--config", _toml(tmp_path))
    assert r.returncode == 2 and reason in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert "Traceback" not in r.stderr


def test_no_log_yet_is_not_an_error(tmp_path):
    r = run_cli("alerts", "--config", _toml(tmp_path))
    assert r.returncode == 0 and "no alerts" in r.stdout


def test_export_writes_labelled_evidence_the_build_can_read(tmp_path):
    agent = _agent_with_an_alert(tmp_path)
    log = agent.alert_log
    first = log.list()[0]["id"]
    log.ack(first, "Ana", "false_alarm")
    r = run_cli("alerts", "export", "--out", str(tmp_path / "ev"), "--config", _toml(tmp_path))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "ev" / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["label"] == "normal" and rows[0]["verdict"] == "false_alarm"
    z = np.load(tmp_path / "ev" / rows[0]["file"])
    assert z["DE"].shape == (EVIDENCE_WINDOWS, 4096) and float(z["fs"]) == 25600.0
    np.testing.assert_array_equal(z["DE"][-1], log.evidence(first)[-1].samples)


def test_evidence_is_bounded_oldest_cleared_first(tmp_path):
    log = AlertLog(tmp_path, evidence_max_mb=4 * 4096 * 4 / 1024 / 1024)  # room for 4 windows
    win = [Evidence(np.full(4096, i, np.float32), 12000.0, 1500.0, i) for i in range(3)]
    for k in range(3):
        log.record({"id": f"alert{k:08d}", "time": k, "state": "open", "type": "anomaly"}, win)
    log.record({"id": "alert00000000", "state": "cleared", "cleared_at": 9.0})
    counts = {r["id"]: r["evidence_windows"] for r in log.list()}
    assert sum(counts.values()) == 4 and counts["alert00000000"] == 0  # the cleared one went first
    assert counts["alert00000002"] == 3 and log.counters()["evidence_evicted"] == 5
    with pytest.raises(AlertLogError, match="ambiguous"):
        log.resolve("alert0000")


@pytest.mark.broker
def test_an_ack_is_published_to_the_fleet_when_the_link_is_up(tmp_path, mosquitto, mqtt_subscriber):
    sub = mqtt_subscriber(mosquitto, "pdm/+/+/ack")
    agent = Agent(_config(tmp_path, mosquitto))
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not agent.alert_log.list():
            time.sleep(0.2)
        alert_id = agent.alert_log.list()[0]["id"]
        tech = AlertLog(tmp_path / "state", create=False)  # another connection, as the CLI's
        tech.ack(alert_id, "Ana", "confirmed")
        msgs = sub.wait_for(1, timeout=10)
    finally:
        stop.set()
        t.join(timeout=10)
    payload = json.loads(msgs[0][1])
    assert msgs[0][0].endswith("/ack") and payload["alert_id"] == alert_id and payload["verdict"] == "confirmed"
    assert not AlertLog(tmp_path / "state").unpublished_acks()


def test_the_build_pipeline_reads_the_export(tmp_path):
    """models/build.py --evidence DIR: the exported windows with their verdict's label."""
    import importlib.util
    from pathlib import Path

    agent = _agent_with_an_alert(tmp_path)
    ids = [r["id"] for r in agent.alert_log.list()]
    agent.alert_log.ack(ids[0], "Ana", "false_alarm")
    agent.alert_log.export(tmp_path / "ev")
    spec = importlib.util.spec_from_file_location("build", Path(__file__).resolve().parent.parent / "models" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # TensorFlow is imported only by main()
    windows, labels, skipped = build.evidence_windows([tmp_path / "ev"])
    assert len(windows) == EVIDENCE_WINDOWS and set(labels) == {build.LABELS.index("normal")} and not skipped
    assert windows[0].fs == 25600.0 and windows[0].rpm > 0 and len(windows[0].samples) == 4096


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root: sudo edge-agent alerts ack")
def test_root_acking_a_log_the_daemon_user_owns_leaves_it_writable_by_that_user(tmp_path):
    """`sudo edge-agent alerts ack` on /var/lib/edge-agent: the -wal and -shm files that root's
    connection creates belong to the log's owner (SQLite's unix VFS does that when running as
    root), so the daemon (its own user) can still open and write its log while, and after,
    the technician's command runs."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="edge-agent-owner-"))  # not under tmp_path: pytest's 0700 dirs
    try:
        base.chmod(0o755)
        agent = Agent(_config(base))
        feed(agent, emulator_blocks("inner_race", 25.0, channels=1))
        alert_id = agent.alert_log.list()[0]["id"]
        agent.alert_log.close()
        state = base / "state"
        for path in [state, *state.iterdir()]:
            os.chown(path, nobody, nobody)
        assert not (state / "alerts.sqlite3-shm").exists()  # the daemon is stopped: no side files

        log_ = AlertLog(state, create=False)  # root, as `sudo edge-agent alerts ack`
        try:
            log_.ack(alert_id, "Ana Souza", "confirmed")
            sides = [state / f"alerts.sqlite3{s}" for s in ("-wal", "-shm")]
            assert any(p.exists() for p in sides)
            assert all(p.stat().st_uid == nobody for p in sides if p.exists())
            # the daemon's user opens and writes its log while root's connection is open (a
            # forked child that becomes that user: the interpreter under /root is not theirs to run)
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                code = 1
                try:
                    os.setgroups([])
                    os.setgid(nobody)
                    os.setuid(nobody)
                    daemon_log = AlertLog(state, create=False)
                    rows = daemon_log.list()
                    daemon_log.ack(alert_id, "daemon user", None)
                    daemon_log.close()
                    code = 0 if rows else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the log's owner could not open or write it"
        finally:
            log_.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
