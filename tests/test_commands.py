"""Commands from the fleet (cmd/ack): checked before they act, acknowledgements recorded in
the local alert log and confirmed on the ack topic; refused ones counted, the agent goes on.
The end-to-end test uses a real mosquitto and a real paho client on the fleet side."""
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.alert_log import AlertLog
from edge_agent.commands import MAX_BYTES, CommandError, parse_ack
from tests.test_agent import _config

ID = "0123456789abcdef0123456789abcdef"


def _cmd(**fields):
    return json.dumps({"schema": 1, "alert_id": ID, "by": "Remote Eng", **fields}).encode()


def test_a_good_ack_command():
    cmd = parse_ack(_cmd(verdict="false_alarm", request_id="r-17"))
    assert (cmd.alert_id, cmd.by, cmd.verdict, cmd.request_id) == (ID, "Remote Eng", "false_alarm", "r-17")
    assert parse_ack(_cmd()).verdict is None


@pytest.mark.parametrize("payload, reason, words", [
    (b"x" * (MAX_BYTES + 1), "oversize", "at most"),
    (b"\xff\xfe", "json", "UTF-8"),
    (b"[1, 2]", "json", "object"),
    (b"[" * 4000, "json", "JSON"),  # nested deeper than the parser goes
    (json.dumps({"alert_id": ID, "by": "a"}).encode(), "schema", "schema"),
    (_cmd(alert_id="0123456"), "field", "full id"),  # a prefix: exact ids only from the network
    (_cmd(alert_id="../../etc/passwd" + "0" * 16), "field", "alert_id"),
    (_cmd(alert_id=ID.upper()), "field", "alert_id"),
    (_cmd(by=""), "field", "by"),
    (_cmd(by="a\nb"), "field", "by"),
    (_cmd(by=7), "field", "by"),
    (_cmd(verdict="maybe"), "field", "verdict"),
    (_cmd(request_id="a b"), "field", "request_id"),
])
def test_bad_ack_commands_are_refused_with_a_reason(payload, reason, words):
    with pytest.raises(CommandError) as err:
        parse_ack(payload)
    assert err.value.reason == reason and words in str(err.value)


def _publish(broker, topic, payload):
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-cmd")
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


@pytest.mark.broker
def test_an_ack_from_the_fleet_is_recorded_and_confirmed(tmp_path, mosquitto, mqtt_subscriber):
    cfg = _config(tmp_path, mosquitto)
    base = f"{cfg.broker.topic_prefix}/{cfg.device.site}/{cfg.device.id}"
    sub = mqtt_subscriber(mosquitto, f"{base}/#")
    agent = Agent(cfg)
    stop = threading.Event()
    t = threading.Thread(target=agent.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 20
        alert = None
        while alert is None and time.monotonic() < deadline:
            alerts = [json.loads(p) for topic, p, _ in sub.messages if topic == f"{base}/alert"]
            alert = next((a for a in alerts if a["state"] == "open"), None)
            time.sleep(0.1)
        assert alert is not None, "no alert raised on the inner-race emulator"
        bad = [(f"{base}/cmd/ack", b"{not json"),
               (f"{base}/cmd/ack", _cmd()),  # well formed, but no such alert here
               (f"{base}/cmd/reboot", b"{}"),  # not a command the agent knows
               (f"{base}/cmd/ack", _cmd(alert_id=alert["id"][:8]))]  # a prefix
        for topic, payload in bad:
            _publish(mosquitto, topic, payload)
        _publish(mosquitto, f"{base}/cmd/ack", _cmd(alert_id=alert["id"], by="Remote Eng", verdict="confirmed"))
        ack = None
        deadline = time.monotonic() + 10
        while ack is None and time.monotonic() < deadline:
            ack = next((json.loads(p) for topic, p, _ in sub.messages if topic == f"{base}/ack"), None)
            time.sleep(0.1)
        windows_then = agent.windows_total
        time.sleep(1.0)
        assert agent.windows_total > windows_then  # refused commands did not stop processing
    finally:
        stop.set()
        t.join(timeout=15)
    assert ack is not None, "no confirmation on the ack topic"
    assert (ack["alert_id"], ack["by"], ack["verdict"], ack["origin"]) == (alert["id"], "Remote Eng", "confirmed", "fleet")
    assert isinstance(ack["seq"], int)
    assert agent.commands_refused == {"json": 1, "unknown_alert": 1, "unknown": 1, "field": 1}
    assert agent.commands_accepted == {"ack": 1}
    row = next(r for r in AlertLog(cfg.storage.dir, create=False).list() if r["id"] == alert["id"])
    assert (row["ack_by"], row["verdict"], row["ack_origin"], row["ack_published"]) == ("Remote Eng", "confirmed", "fleet", 1)
