"""`edge-agent run --config FILE` as systemd runs it: a real process, a real broker."""
import json
import os
import signal
import subprocess
import threading
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


@pytest.mark.broker
def test_a_clean_stop_sends_the_interval_so_far_as_a_final_summary(tmp_path, mosquitto, mqtt_subscriber):
    """Summaries every hour, a stop after a few seconds: the windows scored so far still reach
    the fleet, in one summary marked final, ahead of the goodbye."""
    cfg = _write_config(tmp_path, mosquitto, "")
    cfg.write_text(cfg.read_text().replace("summary_interval_s = 1.0", "summary_interval_s = 3600.0"))
    sub = mqtt_subscriber(mosquitto, "pdm/farm-t/wtg-99/#")
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: ((read_status(tmp_path / "state") or {}).get("counters") or {}).get("windows_scored", 0) > 20, 30, p)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    final = read_status(tmp_path / "state")
    deadline = time.monotonic() + 10
    while not any(json.loads(pl).get("state") == "offline" for t, pl, _ in list(sub.messages) if t.endswith("/status")):
        assert time.monotonic() < deadline, list(sub.messages)
        time.sleep(0.1)
    msgs = list(sub.messages)
    summaries = [json.loads(pl) for t, pl, _ in msgs if t.endswith("/summary")]
    assert len(summaries) == 1, summaries
    s = summaries[0]
    assert s["final"] is True and 0 < s["interval_s"] < 3600
    assert sum(s["windows_per_label"].values()) == final["counters"]["windows_scored"] > 20
    order = [t.rsplit("/", 1)[-1] + (":" + json.loads(pl)["state"] if t.endswith("/status") else "") for t, pl, _ in msgs]
    assert order.index("summary") < order.index("status:offline"), order


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


# -- issue #9: SIGTERM under load -------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _load_config(tmp_path, port):
    """4 channels x 25.6 kHz in real time through the default pack: the gateway's full load."""
    cfg = tmp_path / "load.toml"
    cfg.write_text(
        f'[device]\nsite = "farm-t"\nid = "wtg-99"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min_s = 0.5\nreconnect_max_s = 1.0\n'
        '[[source]]\ntype = "emulator"\nscenario = "inner_race"\nchannels = 4\nfs = 25600.0\n'
        f'[model]\npack = "{REPO / "models" / "default.pack"}"\n'
        '[publish]\nsummary_interval_s = 1.0\nstatus_interval_s = 0.5\n'
        f'[storage]\ndir = "{tmp_path / "state"}"\n'
    )
    return cfg


def _outbox(state):
    """(seqs still held in the outbox, the next seq it would assign, evictions)."""
    import sqlite3

    with sqlite3.connect(state / "outbox.sqlite3") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        held = {row[0] for row in con.execute("SELECT id FROM items")}
        next_seq = con.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
    return held, next_seq


def _retained_status(broker, mqtt_subscriber):
    sub = mqtt_subscriber(broker, "pdm/farm-t/wtg-99/status")
    msgs = sub.wait_for(1, timeout=5)
    assert msgs and msgs[-1][2], "no retained status"
    return json.loads(msgs[-1][1])


def _received_seqs(sub, want: set[int], timeout=5.0) -> set[int]:
    """The seqs the subscriber got, waiting (bounded) for those the broker acked to arrive."""
    deadline = time.monotonic() + timeout
    while True:
        got = {json.loads(pl)["seq"] for topic, pl, _ in sub.messages
               if topic.rsplit("/", 1)[-1] in ("alert", "summary", "ack")}
        if want <= got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _stop(p, second_after=None):
    """SIGTERM (and optionally a second one while draining); (seconds to exit, out, err)."""
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    if second_after is not None:
        time.sleep(second_after)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=15)
    return time.monotonic() - t, out, err


def _wait(pred, timeout, p):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.broker
def test_sigterm_under_full_load_with_the_broker_up(tmp_path, mosquitto, mqtt_subscriber):
    """Exit 0 within 5 s; the retained status is the goodbye (reason shutdown, not the will);
    every seq ever committed is either at the subscriber or still in the outbox."""
    state = tmp_path / "state"
    sub = mqtt_subscriber(mosquitto, "pdm/farm-t/wtg-99/#")
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(_load_config(tmp_path, mosquitto.port))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: sum(t.endswith("/summary") for t, _, _ in sub.messages) >= 3, 30, p), p.poll()
        snap = read_status(state)
        took, out, err = _stop(p)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in out + err, err
    assert took < 5.0, took
    assert snap["counters"]["windows"] > 50 and snap["counters"]["processing_errors"] == 0
    status = _retained_status(mosquitto, mqtt_subscriber)
    assert status["state"] == "offline" and status["reason"] == "shutdown", status
    held, next_seq = _outbox(state)
    everything = set(range(1, next_seq))
    got = _received_seqs(sub, everything - held)
    assert (got | held) == everything and not (got - everything), (sorted(everything - got - held), next_seq)
    assert read_status(state)["state"] == "stopped"
    print(f"broker up: exit in {took:.2f} s, {next_seq - 1} committed, {len(held)} left in the outbox")


def test_sigterm_under_full_load_with_the_broker_down(tmp_path):
    from edge_agent.local_broker import free_port

    state = tmp_path / "state"
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(_load_config(tmp_path, free_port()))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: ((read_status(state) or {}).get("queues", {}).get("outbox", {}).get("depth", 0) >= 3), 30, p)
        took, out, err = _stop(p)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in out + err, err
    assert took < 5.0, took
    held, next_seq = _outbox(state)
    assert held == set(range(1, next_seq)) and len(held) >= 3  # all of it, nothing sent, nothing lost
    assert "refused" in out
    print(f"broker down: exit in {took:.2f} s, {len(held)} held")


@pytest.mark.broker
@pytest.mark.parametrize("broker_state", ["responsive", "stalled", "frozen"])
def test_sigterm_twice_while_draining_a_backlog(tmp_path, mosquitto, mqtt_subscriber, broker_state):
    """A broker that is up while the outbox holds a backlog (3000 messages from an outage): the
    stop does not wait for the backlog, a second SIGTERM while draining changes nothing, and
    nothing is lost. ``stalled``: the broker is SIGSTOPped at the SIGTERM and resumed 1 s later
    (a slow broker: the drain waits for its PUBACKs, then the goodbye). ``frozen``: resumed only
    after the agent has exited: the stop still ends in time, and the retained status still says
    offline (the goodbye, or the will when the broker reads our DISCONNECT too late: it cannot
    know the goodbye came first), never a stale online."""
    from edge_agent.outbox import Outbox

    state = tmp_path / "state"
    with Outbox(state, 64 * 1024 * 1024) as box:
        for i in range(3000):
            box.commit("summary", {"schema": 1, "backlog": i, "pad": "x" * 1500})
    sub = mqtt_subscriber(mosquitto, "pdm/farm-t/wtg-99/#")
    p = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(_load_config(tmp_path, mosquitto.port))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paused = broker_state != "responsive"
    resume = None
    try:
        assert _wait(lambda: len(sub.messages) >= 300, 30, p), p.poll()
        if paused:
            os.kill(mosquitto.pid, signal.SIGSTOP)
            if broker_state == "stalled":
                resume = threading.Timer(1.0, os.kill, (mosquitto.pid, signal.SIGCONT))
                resume.start()
        try:
            took, out, err = _stop(p, second_after=0.3 if paused else 0.05)
        finally:
            if resume is not None:
                resume.join()
            if paused:
                os.kill(mosquitto.pid, signal.SIGCONT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in out + err, err
    assert took < 5.0, took
    if paused:  # (responsive: the drain may be over before the second signal)
        assert "SIGTERM received again while stopping" in out
    status = _retained_status(mosquitto, mqtt_subscriber)
    assert status["state"] == "offline", status
    if broker_state != "frozen":
        assert status["reason"] == "shutdown", status  # the goodbye, not the will
    held, next_seq = _outbox(state)
    everything = set(range(1, next_seq))
    got = _received_seqs(sub, everything - held)
    assert held, "the backlog was gone before the stop: nothing tested"
    assert (got | held) == everything, sorted(everything - got - held)[:20]
    print(f"backlog, broker {broker_state}: exit in {took:.2f} s, {len(got)} received, {len(held)} left "
          f"in the outbox of {next_seq - 1}; retained: {status.get('reason', 'the will')}")
