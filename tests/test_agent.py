"""The pipeline skeleton end to end, with real parts: emulator source -> windower ->
compiled features -> baseline model -> alert rules -> outbox -> paho -> real mosquitto ->
a subscriber."""
import json
import threading
import time
from dataclasses import replace

import pytest

from edge_agent.agent import Agent
from edge_agent.config import default_config
from edge_agent.status_file import read_status


def _config(tmp_path, broker=None, scenario="inner_race", speedup=8.0):
    cfg = default_config()
    src = replace(cfg.sources[0], scenario=scenario, channels=2, speedup=speedup)
    b = replace(cfg.broker, host=broker.host, port=broker.port) if broker else replace(cfg.broker, enabled=False)
    return replace(
        cfg, sources=(src,), broker=b,
        storage=replace(cfg.storage, dir=str(tmp_path / "state")),
        publish=replace(cfg.publish, summary_interval_s=1.0, status_interval_s=0.5),
    )


def _run_for(agent, seconds):
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    time.sleep(seconds)
    t0 = time.monotonic()
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive()
    return time.monotonic() - t0


@pytest.mark.broker
def test_fault_alert_and_summaries_reach_a_subscriber(tmp_path, mosquitto, mqtt_subscriber):
    cfg = _config(tmp_path, mosquitto)
    sub = mqtt_subscriber(mosquitto, "pdm/#")
    agent = Agent(cfg)
    # at 8x real time, 4 s covers ~32 s of machine time: healthy baseline, onset at 5 s, ramp
    stop_time = _run_for(agent, 4.0)
    assert stop_time < 5.0
    msgs = sub.wait_for(1, timeout=5)
    by_topic = {}
    for topic, payload, retain in msgs:
        by_topic.setdefault(topic.rsplit("/", 1)[-1], []).append((json.loads(payload), retain))
    alerts = [m for m, _ in by_topic.get("alert", [])]
    assert any(a["state"] == "open" for a in alerts), by_topic.keys()
    assert all(a["schema"] == 1 and a["explanation"] and a["model_version"] for a in alerts)
    assert len(by_topic.get("summary", [])) >= 2
    status = by_topic["status"]
    assert status[0][0]["state"] == "online" and status[0][0]["backend"].startswith("ai_edge_litert")
    assert status[-1][0]["state"] == "offline"  # published on clean shutdown
    # seq: monotonic across alerts and summaries, no gaps, nothing left in the outbox
    seqs = sorted(m["seq"] for kind in ("alert", "summary") for m, _ in by_topic.get(kind, []))
    assert seqs == list(range(1, len(seqs) + 1))
    assert agent.outbox.depth() == 0
    snap = read_status(tmp_path / "state")
    assert snap["state"] == "stopped" and snap["counters"]["windows"] > 100
    assert snap["counters"]["processing_errors"] == 0 and snap["queues"]["samples"]["dropped"] == 0


def test_healthy_machine_raises_no_alert(tmp_path):
    agent = Agent(_config(tmp_path, scenario="healthy", speedup=10.0))
    _run_for(agent, 3.0)
    assert agent.windows_total > 100
    assert agent.alerts_raised == 0
    assert agent.labels["anomaly"] <= 0.02 * agent.windows_total


def test_bad_block_is_counted_and_processing_goes_on(tmp_path):
    import numpy as np

    from edge_agent.window import SampleBlock

    agent = Agent(_config(tmp_path, scenario="healthy"))
    stop = threading.Event()
    t = threading.Thread(target=agent._process, args=(stop,))
    t.start()
    agent.samples.offer(SampleBlock("x", np.zeros(8192, np.float32), 0.0, 0, 0))  # fs 0: unusable
    good = np.random.default_rng(0).normal(size=8192).astype(np.float32)
    agent.samples.offer(SampleBlock("y", good, 25600.0, 0, 0))
    deadline = time.monotonic() + 5
    while agent.windows_total == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(5)
    assert agent.bad_blocks == {"x": 1}
    assert agent.windows_total == agent.windower.windows["y"] > 0  # the good block, whole
