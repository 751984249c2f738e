"""The uplink: one paho-mqtt 2.x client that drains the outbox to the central broker.

It owns the MQTT connection: a retained ``status`` birth message on every connect and a
retained ``offline`` last will; QoS 1 publishes of outbox items in commit order, each acked
in the outbox only on PUBACK (``on_publish``), so nothing is deleted before the broker
has it. Reconnects use paho's exponential backoff between ``reconnect_min_s`` and
``reconnect_max_s``; a message in flight when the link drops is resent by paho on
reconnect (QoS 1: a duplicate is possible, a loss is not). TLS and username/password-file
auth are one config switch each.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from edge_agent.outbox import MemoryOutbox
from edge_agent.topics import Topics

log = logging.getLogger(__name__)
STATUS_SCHEMA = 1
MAX_INFLIGHT = 20


class Publisher:
    def __init__(
        self, broker_cfg: Any, topics: Topics, outbox: MemoryOutbox, birth: Callable[[], dict], qos: int = 1
    ) -> None:
        self.cfg = broker_cfg
        self.qos = qos
        self.topics = topics
        self.outbox = outbox
        self._birth = birth
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.published = 0
        self.last_error = ""
        self._closing = False
        client_id = broker_cfg.client_id or f"edge-agent-{topics.site}-{topics.device}"
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self.client.will_set(self.topics.of("status"), self._status_payload("offline"), qos=1, retain=True)
        self.client.reconnect_delay_set(
            min_delay=max(1, round(broker_cfg.reconnect_min_s)), max_delay=max(1, round(broker_cfg.reconnect_max_s))
        )
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        if broker_cfg.tls:
            self.client.tls_set(
                ca_certs=broker_cfg.ca_file or None,
                certfile=broker_cfg.cert_file or None,
                keyfile=broker_cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(bool(broker_cfg.tls_insecure))
        if broker_cfg.username:
            password = Path(broker_cfg.password_file).read_text().strip() if broker_cfg.password_file else None
            self.client.username_pw_set(broker_cfg.username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    # -- paho callbacks (run on paho's network thread) -------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("MQTT connect to %s:%s refused: %s", self.cfg.host, self.cfg.port, reason_code)
            return
        self.connects += 1
        log.info("MQTT connected to %s:%s", self.cfg.host, self.cfg.port)
        client.publish(self.topics.of("status"), json.dumps(self._birth()), qos=1, retain=True)
        self.connected.set()
        self.outbox.new_item.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._closing:
            self.disconnects += 1
            log.warning("MQTT link to %s:%s lost (%s); reconnecting with backoff", self.cfg.host, self.cfg.port, reason_code)
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            item_id = self._inflight.pop(mid, None)
        if item_id is not None:
            self.outbox.ack(item_id)
            self.published += 1

    # -- the publisher thread ---------------------------------------------------------------
    def _status_payload(self, state: str) -> str:
        return json.dumps({"schema": STATUS_SCHEMA, "state": state, "time": time.time()})

    def run(self, stop: threading.Event) -> None:
        """Connect, then publish outbox items until ``stop`` is set."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        try:
            while not stop.is_set():
                if not self.connected.wait(0.2):
                    continue
                self.outbox.new_item.wait(0.2)
                self.outbox.new_item.clear()
                self._publish_pending()
        finally:
            self._shutdown()

    def _publish_pending(self) -> None:
        with self._lock:
            room = MAX_INFLIGHT - len(self._inflight)
            skip = set(self._inflight.values())
        if room <= 0:
            return
        for item in self.outbox.pending(room, skip):
            with self._lock:
                info = self.client.publish(self.topics.of(item.kind), item.payload, qos=self.qos)
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                    break
                self._inflight[info.mid] = item.id

    def _shutdown(self, drain_s: float = 2.0) -> None:
        """Give in-flight messages a moment, publish ``offline``, disconnect cleanly."""
        deadline = time.monotonic() + drain_s
        if self.connected.is_set():
            self._publish_pending()
            while time.monotonic() < deadline:
                with self._lock:
                    if not self._inflight:
                        break
                time.sleep(0.02)
            info = self.client.publish(self.topics.of("status"), self._status_payload("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
