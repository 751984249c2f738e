"""``edge-agent demo``: the agent on the built-in emulator, with a local broker, live progress.

A real pipeline, not printed text: the in-process emulator feeds the agent, the agent
publishes to a private mosquitto on a free port (when the binary is installed), and a
subscriber on that broker counts what really arrived. Progress goes to stderr once a
second; Ctrl-C (or ``--seconds``) stops everything cleanly.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("edge_agent.demo")


class _Subscriber:
    """Counts the messages that reached the broker, and prints alerts as they arrive."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.received: dict[str, int] = {}
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="edge-agent-demo-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        self.received[kind] = self.received.get(kind, 0) + 1
        if kind == "alert":
            try:
                a = json.loads(msg.payload)
                print(f"  broker delivered alert seq {a.get('seq')}: {a.get('state')} {a.get('severity')} "
                      f"on {a.get('channel')}: {a.get('explanation')}", file=sys.stderr)
            except ValueError:
                pass

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_demo(seconds: float | None, scenario: str, channels: int, speedup: float, broker: bool) -> int:
    from edge_agent.config import default_config
    from edge_agent.daemon import build_agent_or_report, install_stop_signals
    from edge_agent.local_broker import LocalBroker, find_mosquitto
    from edge_agent.logs import setup_logging

    setup_logging("warning", "plain", stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    cfg = default_config()
    src = replace(cfg.sources[0], scenario=scenario, channels=channels, speedup=speedup)
    local = None
    if broker and find_mosquitto():
        local = LocalBroker(work / "broker")
        local.start()
        broker_cfg = replace(cfg.broker, host=local.host, port=local.port, reconnect_min_s=1.0, reconnect_max_s=2.0)
    else:
        why = "--no-broker" if not broker else "mosquitto is not installed (apt-get install mosquitto)"
        print(f"demo: running without a broker ({why}); messages stay in the outbox", file=sys.stderr)
        broker_cfg = replace(cfg.broker, enabled=False)
    cfg = replace(
        cfg, sources=(src,), broker=broker_cfg,
        storage=replace(cfg.storage, dir=str(work / "state")),
        publish=replace(cfg.publish, summary_interval_s=10.0, status_interval_s=1.0),
    )
    agent = build_agent_or_report(cfg)
    if agent is None:
        if local:
            local.stop()
        return 2
    sub = _Subscriber(local.host, local.port, f"{agent.topics.base}/#") if local else None
    if sub is not None:
        # the subscriber prints each alert as the broker delivers it: no need to log it twice
        logging.getLogger("edge_agent.agent").setLevel(logging.ERROR)
    print(
        f"demo: emulator '{scenario}' ({channels} x {src.fs / 1000:g} kHz, fault onset at 5 s), "
        f"broker {'%s:%d' % (local.host, local.port) if local else 'none'}, state in {work}; Ctrl-C stops",
        file=sys.stderr,
    )
    stop = threading.Event()
    install_stop_signals(stop)
    runner = threading.Thread(target=agent.run, args=(stop,), name="agent")
    runner.start()
    start = time.monotonic()
    try:
        while runner.is_alive():
            elapsed = time.monotonic() - start
            if seconds is not None and elapsed >= seconds:
                stop.set()
            if stop.wait(1.0 if seconds is None else min(1.0, max(0.01, seconds - elapsed))):
                break
            _progress(agent, sub, time.monotonic() - start)
    finally:
        stop.set()
        runner.join(timeout=5.0)
        if sub:
            sub.close()
        if local:
            local.stop()
    _progress(agent, sub, time.monotonic() - start)
    print(f"demo: stopped cleanly after {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0 if not runner.is_alive() else 1


def _progress(agent, sub, elapsed: float) -> None:
    s = agent.snapshot()
    c, q, b = s["counters"], s["queues"], s["broker"]
    labels = ", ".join(f"{k} {v}" for k, v in sorted(c["windows_per_label"].items())) or "-"
    line = (
        f"[{elapsed:6.1f} s] windows {c['windows']} ({labels}) | alerts raised {c['alerts_raised']}, "
        f"open {c['open_alerts']} | outbox {q['outbox']['depth']}, published {b['published']}"
    )
    if sub is not None:
        line += f", at broker {sum(sub.received.values())}"
    print(line, file=sys.stderr, flush=True)
