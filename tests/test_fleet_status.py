"""``edge-agent fleet status`` (edge_agent/fleet_status.py): one row per device from the
retained status, progress and offer messages on a real mosquitto, after a real push to
scripted device peers (tests/test_fleet_push.py); malformed messages skipped and counted."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli_helpers import edge_agent_cmd, run_cli
from edge_agent.fleet_status import FleetView, format_table
from test_fleet_push import peers, run_push, signed_pack  # noqa: F401  (fixtures)


def _publish(broker, messages: list[tuple[str, bytes | str, bool]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-test-publisher")
    c.connect(broker.host, broker.port)
    c.loop_start()
    for info in [c.publish(t, p, qos=1, retain=r) for t, p, r in messages]:
        info.wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def _status_cmd(broker, *extra: str) -> list[str]:
    return [*edge_agent_cmd(), "fleet", "status", "--broker", f"{broker.host}:{broker.port}", "--seconds", "0.7", *extra]


@pytest.mark.broker
def test_status_lists_every_peer_with_versions_update_and_health(mosquitto, peers, signed_pack):  # noqa: F811
    peers(mosquitto, "farm-b", "wtg-02", group="north", agent_version="0.2.0", model="default 2026.11.22-2")
    peers(mosquitto, "farm-b", "wtg-01", group="north", agent_version="0.1.0", model="default 2026.11.22-2",
          behaviour="rollback")
    peers(mosquitto, "farm-a", "wtg-09", group="south", agent_version="0.2.0", model="custom 2026.12.01-1")
    r, result = run_push(mosquitto, signed_pack, "north", "--mode", "activate")
    assert r.returncode == 2 and {d["state"] for d in result["devices"]} == {"healthy", "rolled_back"}
    version = result["pack"]["version"]
    t = time.time()
    _publish(mosquitto, [
        ("pdm/farm-c/wtg-05/status", json.dumps({"schema": 1, "state": "offline", "time": t}), True),  # a last will
        ("pdm/farm-c/wtg-06/status", json.dumps({"schema": 1, "state": "online", "time": t, "agent_version": "0.3.0",
                                                 "model": "default 1", "group": "west", "open_alerts": 2}), True),
        ("pdm/farm-c/wtg-06/model/offer", json.dumps({"schema": 1, "update_id": "ab" * 8, "chunks": 9,
                                                      "pack": {"version": "v9"}}), True),
        ("pdm/farm-c/wtg-07/status", b"\x00not json", True),  # skipped, counted
        ("pdm/farm-c/wtg-07/model/progress", json.dumps({"schema": 2, "state": "healthy"}), True),  # skipped
    ])
    r = subprocess.run(_status_cmd(mosquitto, "--json"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    by = {f"{x['site']}/{x['device']}": x for x in rows}
    assert list(by) == ["farm-a/wtg-09", "farm-b/wtg-01", "farm-b/wtg-02", "farm-c/wtg-05", "farm-c/wtg-06"]
    assert by["farm-a/wtg-09"]["model"] == "custom 2026.12.01-1"
    assert by["farm-a/wtg-09"]["update_state"] is None and by["farm-a/wtg-09"]["group"] == "south"
    assert by["farm-b/wtg-02"]["agent_version"] == "0.2.0" and by["farm-b/wtg-01"]["agent_version"] == "0.1.0"
    assert by["farm-b/wtg-02"]["online"] is True and by["farm-b/wtg-02"]["update_state"] == "healthy"
    assert by["farm-b/wtg-02"]["pack_version"] == version and by["farm-b/wtg-02"]["health"] == "healthy"
    assert by["farm-b/wtg-02"]["update_id"] == result["update_id"]
    assert by["farm-b/wtg-01"]["health"] == "rolled_back" and by["farm-b/wtg-01"]["reason"] == "alert_rate"
    assert by["farm-c/wtg-05"]["online"] is False and by["farm-c/wtg-05"]["agent_version"] is None
    assert by["farm-c/wtg-06"]["open_alerts"] == 2 and by["farm-c/wtg-06"]["update_state"] == "offered"
    assert by["farm-c/wtg-06"]["pack_version"] == "v9" and by["farm-c/wtg-06"]["chunks"] == 9
    assert "skipped malformed messages: model/progress: schema 1, status: json 1" in r.stderr

    r = subprocess.run(_status_cmd(mosquitto), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "ONLINE", "AGENT", "MODEL", "GROUP", "UPDATE", "HEALTH", "ALERTS"]
    assert lines[2].split() == ["farm-b/wtg-01", "yes", "0.1.0", "default", "2026.11.22-2", "north", "rolled_back",
                                version, "rolled_back", "(alert_rate)", "-"]
    assert lines[4].split() == ["farm-c/wtg-05", "no", "-", "-", "-", "-", "-", "-"]
    assert lines[5].split() == ["farm-c/wtg-06", "yes", "0.3.0", "default", "1", "west", "offered", "0/9", "v9", "-", "2"]
    assert lines[-1] == "5 device(s), 4 online"


@pytest.mark.broker
def test_watch_redraws_until_ctrl_c(mosquitto, peers):  # noqa: F811
    peers(mosquitto, "farm-a", "wtg-01", group="g")
    proc = subprocess.Popen(_status_cmd(mosquitto, "--watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    peers(mosquitto, "farm-a", "wtg-02", group="g")  # appears in a later drawing
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    drawings = out.split("fleet status ")[1:]
    assert len(drawings) >= 3
    assert "farm-a/wtg-01" in drawings[0] and "farm-a/wtg-02" not in drawings[0]
    assert "farm-a/wtg-02" in drawings[-1] and "2 device(s), 2 online" in drawings[-1]


def test_view_rules_without_a_broker():
    v = FleetView("pdm")
    v.add("pdm/s/d/status", json.dumps({"schema": 1, "state": "online", "time": 100.0, "model": "m 1"}).encode())
    v.add("pdm/s/d/model/progress", json.dumps({"schema": 1, "update_id": "a" * 16, "state": "downloading", "time": 200.0,
                                                "pack_version": "2", "active_version": "m 1b", "received": 3,
                                                "chunks": 7}).encode())
    v.add("pdm/s/d/model/offer", json.dumps({"schema": 1, "update_id": "a" * 16, "chunks": 7}).encode())
    v.add("pdm/s/d/summary", json.dumps({"schema": 1, "alerts": {"raised": 3, "cleared": 2, "open": 1}}).encode())
    v.add("pdm/s/d/model/chunk/x/1", b"raw bytes")  # not a kind it reads
    v.add("other/s/d/status", b"{}")
    (row,) = v.rows()
    assert row["model"] == "m 1b"  # the progress is newer than the status
    assert row["update_state"] == "downloading" and row["received"] == 3 and row["open_alerts"] == 1
    assert "downloading 3/7 2" in format_table(v.rows())
    v.add("pdm/s/d/model/progress", b"")  # cleared retained messages
    v.add("pdm/s/d/model/offer", b"")
    assert v.rows()[0]["update_state"] is None and v.rows()[0]["model"] == "m 1"
    v.add("pdm/s/\x1b[2Jx/status", json.dumps({"schema": 1, "state": "\x07online", "group": ["x"]}).encode())
    evil = next(r for r in v.rows() if r["device"] != "d")
    assert "\x1b" not in evil["device"] and evil["group"] is None and evil["online"] is None
    assert format_table([]).startswith("(no devices")


def test_status_usage_and_broker_errors_are_one_line():
    from edge_agent.local_broker import free_port

    r = run_cli("fleet", "status", "--broker", f"127.0.0.1:{free_port()}", "--seconds", "0.2")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("edge-agent fleet status: cannot connect to 127.0.0.1:")
    r = run_cli("fleet", "status", "--broker", "h", "--watch", "--json")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr.strip()
    r = run_cli("fleet", "status")
    assert r.returncode == 2 and "--broker" in r.stderr
