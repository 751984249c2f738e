"""`edge-agent run --config FILE` as systemd runs it: a real process, a real broker."""
import json
import signal
import subprocess
import time

import pytest

from cli_helpers import edge_agent_cmd, run_cli
from edge_agent.status_file import read_status


def _write_config(tmp_path, broker, extra=""):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[device]
site = "farm-t"
id = "wtg-99"

[broker]
host = "{broker.host}"
port = {broker.port}
reconnect_max_s = 2.0

[[source]]
type = "emulator"
scenario = "healthy"
channels = 1
speedup = 4.0

[publish]
summary_interval_s = 1.0
status_interval_s = 0.5

[storage]
dir = "{tmp_path / 'state'}"
{extra}
"""
    )
    return cfg


@pytest.mark.broker
def test_run_publishes_status_and_sigterm_exits_0(tmp_path, mosquitto, mqtt_subscriber):
    cfg = _write_config(tmp_path, mosquitto, '[logging]\nformat = "json"\n')
    sub = mqtt_subscriber(mosquitto, "pdm/farm-t/wtg-99/#")
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        snap = None
        while time.monotonic() < deadline:
            snap = read_status(tmp_path / "state")
            summaries = [m for m in list(sub.messages) if m[0].endswith("/summary")]
            if snap and snap["counters"]["windows"] > 20 and snap["broker"]["connected"] and summaries:
                break
            time.sleep(0.2)
        assert snap and snap["state"] == "running" and snap["counters"]["windows"] > 20, snap
        # `edge-agent status` reads the same snapshot, without a broker round trip
        r = run_cli("status", "--config", str(cfg))
        assert r.returncode == 0 and "daemon:              running" in r.stdout and "connected" in r.stdout
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        assert time.monotonic() - t < 5.0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    # logging.format = json: every stdout line is one JSON object
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any("starting" in r["message"] for r in records) and all({"time", "level", "logger"} <= r.keys() for r in records)
    msgs = sub.wait_for(3, timeout=5)
    status = [json.loads(pl) for topic, pl, retain in msgs if topic.endswith("/status")]
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    assert any(topic.endswith("/summary") for topic, _, _ in msgs)
    assert read_status(tmp_path / "state")["state"] == "stopped"


def test_run_with_a_bad_config_is_one_line_per_problem_exit_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[broker]\nport = "x"\n[devcie]\nsite = "a"\n')
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "broker.port" in lines[0] and "devcie" in lines[1] and "Traceback" not in r.stderr


def test_run_with_a_serial_port_that_does_not_exist_keeps_retrying_and_sigterm_exits_0(tmp_path):
    port, state = tmp_path / "ttyACM-unplugged", tmp_path / "state"
    cfg = tmp_path / "serial.toml"
    cfg.write_text(
        f'[broker]\nenabled = false\n[[source]]\ntype = "serial"\nport = "{port}"\n'
        f'[publish]\nstatus_interval_s = 0.5\n[storage]\ndir = "{state}"\n'
    )
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        serial0 = {}
        while time.monotonic() < deadline and p.poll() is None:
            snap = read_status(tmp_path / "state")
            serial0 = (snap or {}).get("sources", {}).get("serial0", {})
            if serial0.get("port_open_failures", 0) >= 4:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        assert serial0.get("port_open_failures", 0) >= 4 and serial0["port_opens"] == 0, serial0
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "Traceback" not in out + err
    # said clearly, and once (not once per retry)
    assert out.count(f"cannot open {port}") == 1 and "retrying" in out, out
    assert read_status(tmp_path / "state")["state"] == "stopped"


def test_unwritable_storage_dir_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[broker]\nenabled = false\n[storage]\ndir = "{blocker / "state"}"\n')
    r = run_cli("run", "--config", str(cfg), timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-agent: cannot start: storage.dir") and "Traceback" not in r.stderr


@pytest.mark.broker
def test_sigkill_mid_stream_loses_nothing_committed_and_publishing_resumes(tmp_path, mosquitto, mqtt_subscriber):
    """Issue #7: the daemon is SIGKILLed while the broker is down (its outbox holding summaries
    it could not send), then started again with the broker back: the outbox file passes
    PRAGMA integrity_check, everything committed before the kill arrives, publishing goes on,
    and seq has no gap across the two processes (duplicates only as QoS 1 allows)."""
    import sqlite3

    cfg = _write_config(tmp_path, mosquitto)
    sub = mqtt_subscriber(mosquitto, "pdm/farm-t/wtg-99/summary", clean_session=False, client_id="fleet-kill")
    first = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(sub.messages) < 2:
            time.sleep(0.2)
        assert len(sub.messages) >= 2
        mosquitto.stop()
        time.sleep(4.0)  # summaries keep being committed, not sent
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    db = tmp_path / "state" / "outbox.sqlite3"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    mosquitto.start()
    second = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6.0)
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=10)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    seqs = [json.loads(payload)["seq"] for _, payload, _ in sub.messages]
    unique = sorted(set(seqs))
    assert unique == list(range(unique[0], unique[-1] + 1)), "a gap in seq across the kill"
    assert len(unique) >= 8  # before the outage, during it (held), and after the restart
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"{len(unique)} summaries, seq {unique[0]}..{unique[-1]}, {len(seqs) - len(unique)} duplicates")
