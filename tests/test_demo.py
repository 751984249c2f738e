"""`edge-agent demo`, as a user runs it: a real process, a real broker, live progress."""
import os
import re
import signal
import subprocess
import time

import pytest

from cli_helpers import edge_agent_cmd, run_cli


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_for_its_seconds_and_exits_0(mosquitto_binary):
    t0 = time.monotonic()
    r = run_cli("demo", "--seconds", "15", timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 15 <= time.monotonic() - t0 < 40
    progress = [line for line in r.stderr.splitlines() if line.startswith("[")]
    assert len(progress) >= 10  # about one line a second
    last = progress[-1]
    windows = int(re.search(r"windows (\d+)", last).group(1))
    at_broker = int(re.search(r"at broker (\d+)", last).group(1))
    assert windows > 200  # 2 channels x 25.6 kHz, hop 2048: ~25 windows a second
    assert at_broker >= 2  # the birth status and at least one summary really went through mosquitto
    assert "stopped cleanly" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.broker
def test_ctrl_c_stops_the_demo_cleanly_within_2_s(mosquitto_binary):
    p = subprocess.Popen([*edge_agent_cmd(), "demo"], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in p.stderr:
            if line.startswith("[") and "windows" in line:
                break
        t = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        rest = p.stderr.read()
        rc = p.wait(timeout=10)
        elapsed = time.monotonic() - t
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert rc == 0
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert "stopped cleanly" in rest and "Traceback" not in rest
    broker_pids = subprocess.run(["pgrep", "-f", "edge-agent-demo-.*mosquitto.conf"], capture_output=True, text=True).stdout
    assert broker_pids.strip() == ""  # the demo's private broker is gone too
