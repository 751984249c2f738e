"""Store-and-forward end to end (issue #7, acceptance): the agent runs on its emulator source
with a real mosquitto; the broker is stopped for 30 s mid-stream and started again; every
alert and summary produced meanwhile reaches a subscriber afterwards, in order per topic,
with no gap in ``seq``; duplicates only as QoS 1 allows (counted)."""
import json
import threading
import time
from dataclasses import replace

import pytest

from edge_agent.agent import Agent
from tests.test_agent import _config

OUTAGE_S = 30.0


@pytest.mark.broker
def test_a_30_s_broker_outage_loses_nothing(tmp_path, mosquitto, mqtt_subscriber):
    sub = mqtt_subscriber(mosquitto, "pdm/+/+/+", clean_session=False, client_id="fleet-side")
    cfg = _config(tmp_path, mosquitto, scenario="inner_race", speedup=4.0)
    # reconnect waits are jittered up to reconnect_max_s (default 60 s): keep the test's wait bounded
    agent = Agent(replace(cfg, broker=replace(cfg.broker, reconnect_max_s=5.0)))
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    try:
        time.sleep(3.0)
        before = agent.outbox.committed["summary"]
        mosquitto.stop()
        time.sleep(OUTAGE_S)
        during = agent.outbox.committed["summary"] - before
        mosquitto.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and agent.outbox.pending(1):
            time.sleep(0.2)
        assert not agent.outbox.pending(1), "the outbox did not drain after the broker came back"
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(timeout=15)
    assert during >= 20  # summaries every second kept being committed while the broker was down
    per_topic: dict[str, list[int]] = {}
    for topic, payload, _ in sub.messages:
        kind = topic.rsplit("/", 1)[-1]
        if kind in ("alert", "summary"):
            per_topic.setdefault(kind, []).append(json.loads(payload)["seq"])
    received = per_topic.get("summary", []) + per_topic.get("alert", [])
    unique = sorted(set(received))
    duplicates = len(received) - len(unique)
    committed = agent.outbox.committed["summary"] + agent.outbox.committed["alert"]
    assert unique == list(range(unique[0], unique[0] + len(unique))), "a gap in seq"
    assert len(unique) == committed, (len(unique), committed)
    for kind, seqs in per_topic.items():  # in order per topic, a QoS 1 resend aside
        first_seen = list(dict.fromkeys(seqs))
        assert first_seen == sorted(first_seen), kind
    print(f"{committed} alerts+summaries, {during} summaries during the {OUTAGE_S:.0f} s outage, "
          f"{duplicates} duplicates")
