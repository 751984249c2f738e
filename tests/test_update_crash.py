"""SIGKILL at every step of staging and activation (issue #8): a real `edge-agent run`
process is killed at each step (the EDGE_AGENT_TEST_KILL_AT hooks of updater.py and
model_store.py) while it takes an update; restarted, it runs the old pack or the new one,
whole, never a mix and never none, and the update then completes."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pytest

from cli_helpers import edge_agent_cmd
from edge_agent.model_store import CRASH_POINTS as STORE_POINTS
from edge_agent.pack import read_pack
from edge_agent.status_file import STATUS_NAME, read_status
from edge_agent.updater import CRASH_POINTS as UPDATE_POINTS
from tests.test_updates import DEFAULT_PACK, FleetPeer, _offer, _release, _wait, keys  # noqa: F401 (fixture)

# Every step an activation over a pack from the config goes through (rollback steps are
# tested on the store itself: tests/test_model_store.py). The first update installs the new
# pack, then the config's pack, and activates the config's pack (so it is kept as
# "previous"; with no current pack before it, there is no previous to set), then the new
# one: "#2" is the second time at that step.
POINTS = [*UPDATE_POINTS, *(p for p in STORE_POINTS if p.startswith(("install:", "activate:previous"))),
          *(f"{p}#{n}" for n in (1, 2) for p in STORE_POINTS if p.startswith("activate:current"))]
pytestmark = pytest.mark.broker


def _config(path, broker, keys, state):
    path.write_text(f"""
[device]
site = "farm-k"
id = "wtg-09"
[broker]
host = "{broker.host}"
port = {broker.port}
reconnect_max_s = 1.0
[[source]]
type = "emulator"
scenario = "healthy"
channels = 1
speedup = 4.0
[model]
pack = "{DEFAULT_PACK}"
[updates]
trusted_keys_dir = "{keys['dir']}"
health_windows = 10
request_every_s = 0.3
[publish]
summary_interval_s = 30.0
status_interval_s = 0.5
[storage]
dir = "{state}"
""")
    return path


def _start(cfg, kill_at=None, log=None):
    env = dict(os.environ)
    env.pop("EDGE_AGENT_TEST_KILL_AT", None)
    if kill_at:
        env["EDGE_AGENT_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], env=env,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _started_with(log_path) -> str | None:
    """The model the agent started with, from its "starting" log line."""
    m = re.search(r"edge-agent \S+ starting: .*?, model (.+?), interpreter backend", log_path.read_text())
    return m[1] if m else None


def test_sigkill_at_every_step_leaves_the_old_or_the_new_pack_whole(tmp_path, mosquitto, keys):
    new = _release(tmp_path, keys["ops"], "2026.12.03-1")
    old_version, new_version = f"default {read_pack(DEFAULT_PACK).version}", "default 2026.12.03-1"
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (DEFAULT_PACK, new)}
    outcomes = {}
    for point in POINTS:
        slug = point.replace(":", "_").replace("#", "_")
        state = tmp_path / slug
        cfg = _config(tmp_path / f"{slug}.toml", mosquitto, keys, state)
        offer_json, chunks = _offer(new, mode="activate", chunk_size=16384)
        peer = FleetPeer(mosquitto, "pdm/farm-k/wtg-09", offer_json, chunks)
        p = _start(cfg, kill_at=point)
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"{point}: the agent was never at that step")
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr.read()[-2000:])
        cur = state / "models" / "current"
        at_kill = ("none" if not cur.exists() else
                   "new" if hashlib.sha256(cur.read_bytes()).hexdigest() == hashlib.sha256(new.read_bytes()).hexdigest()
                   else "old")
        (state / STATUS_NAME).unlink(missing_ok=True)  # the killed process's last status
        log_path = tmp_path / f"{slug}.log"
        with open(log_path, "w") as log:
            p = _start(cfg, log=log)
        try:
            assert _wait(lambda: (read_status(state) or {}).get("state") == "running", 20), point
            first = _started_with(log_path)
            assert first in (old_version, new_version), (point, first)
            current = state / "models" / "current"
            if current.exists():  # what the store points at is a whole pack, the old or the new one
                assert hashlib.sha256(current.read_bytes()).hexdigest() in hashes, point
                read_pack(current)
            end = peer.wait_end(40)
            assert end["state"] == "healthy", (point, end)
            assert _wait(lambda: read_status(state)["model"] == new_version, 10), point
            outcomes[point] = (at_kill, "new" if first == new_version else "old")
        finally:
            peer.close()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        assert p.returncode == 0, (point, p.stderr.read()[-2000:])
    print(outcomes)  # (what models/current named when killed, the model the restarted agent ran first)
    assert len(outcomes) == len(POINTS)


def test_a_restart_during_the_health_check_does_not_skip_it(tmp_path, mosquitto, keys):
    """Killed once the new pack is active and its health check has begun: restarted, the
    agent runs the new pack and checks it again from the start, so a pack that calls every
    window a fault is still rolled back (not declared healthy, nor left unchecked)."""
    loud = _release(tmp_path, keys["ops"], "2026.12.03-4", lambda m: m["thresholds"].__setitem__("anomaly", 1e-6))
    old_version = f"default {read_pack(DEFAULT_PACK).version}"
    state = tmp_path / "state"
    cfg = _config(tmp_path / "agent.toml", mosquitto, keys, state)
    offer_json, chunks = _offer(loud, mode="activate", chunk_size=16384)
    peer = FleetPeer(mosquitto, "pdm/farm-k/wtg-09", offer_json, chunks)
    p = _start(cfg, kill_at="update:health_running")
    try:
        p.wait(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL, p.stderr.read()[-2000:]
    assert (state / "updates" / "health.json").exists()
    (state / STATUS_NAME).unlink(missing_ok=True)
    log_path = tmp_path / "restart.log"
    with open(log_path, "w") as log:
        p = _start(cfg, log=log)
    try:
        assert _wait(lambda: (read_status(state) or {}).get("state") == "running", 20)
        assert _started_with(log_path) == "default 2026.12.03-4"  # it restarted on the new pack...
        end = peer.wait_end(40)
        assert (end["state"], end["reason"]) == ("rolled_back", "health_check"), end  # ...and still judged it
        assert "alert-window rate 1.000" in end["detail"]
        assert _wait(lambda: read_status(state)["model"] == old_version, 10)
        assert not (state / "updates" / "health.json").exists()
        # restarted again with the offer still retained: the ended update is not taken again
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        assert peer.update_id in json.loads((state / "updates" / "finished.json").read_text())
        told = len(peer.progress)
        (state / STATUS_NAME).unlink(missing_ok=True)
        with open(log_path, "a") as log:
            p = _start(cfg, log=log)
        assert _wait(lambda: (read_status(state) or {}).get("state") == "running", 20)
        time.sleep(2.0)
        assert read_status(state)["model"] == old_version
        assert [x["state"] for x in peer.progress[told:]] in ([], ["rolled_back"]), peer.progress[told:]  # a resend only
    finally:
        peer.close()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    err = p.stderr.read()
    assert p.returncode == 0, err[-2000:]
    assert "health check of default 2026.12.03-4 starts again after a restart" in log_path.read_text() + err
