"""Fixtures shared by the whole suite: a real mosquitto broker, real MQTT subscribers, a
real pty, and the shared recordings.

Rule of the project: a test that claims delivery goes through a real broker, and a serial
test through a real pty that pyserial opens by path. Nothing here is a mock.

* ``mosquitto``: a :class:`LocalBroker` started in tmp_path on a free loopback port.
  ``mosquitto_binary``: the binary's path, for tests that build their own LocalBroker.
  Missing binary: skipped on a developer machine, a failure under CI (CI=true), since
  ``make test`` installs it (scripts/ensure-system.sh mosquitto).
* ``mqtt_subscriber``: factory ``mqtt_subscriber(broker, topic, qos=1)`` returning a
  connected, subscribed :class:`Subscriber` (SUBACK received before it returns).
* ``pty_pair``: a :class:`PtyPair`, closed at teardown.
* ``shared_dir`` / ``cwru_dir``: ../shared and ../shared/data/cwru beside the repo, or a
  skip that says they are absent.
"""
from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.local_broker import LocalBroker, find_mosquitto
from edge_agent.ptypair import PtyPair

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"

Message = tuple[str, bytes, bool]


def running_under_ci() -> bool:
    """CI sets CI=true; an empty value or 0/false/no counts as not CI."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------ broker
@pytest.fixture
def mosquitto_binary() -> str:
    """Path of the mosquitto binary, for tests that build their own LocalBroker.

    Missing: a skip on a developer machine, a failure under CI (``make test`` installs it).
    """
    binary = find_mosquitto()
    if binary is None:
        reason = (
            "mosquitto is not installed (not on PATH nor /usr/sbin/mosquitto); "
            "install it with `scripts/ensure-system.sh mosquitto` (`make test` does)"
        )
        if running_under_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture
def mosquitto(mosquitto_binary: str, tmp_path: Path) -> Iterator[LocalBroker]:
    """A started private mosquitto (persistence on, log in tmp_path/mosquitto/), stopped
    at teardown. ``restart()``, ``stop()``/``start()`` and ``kill()`` make outages."""
    broker = LocalBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------------ subscriber
class Subscriber:
    """A real paho 2.x client (callback API VERSION2) subscribed to one topic filter.

    Messages arrive on paho's network thread and are kept as ``(topic, payload, retain)``
    in arrival order. The client reconnects on its own (0.1 s to 1 s back-off) and
    subscribes again after every connect, so it survives broker restarts; with
    ``clean_session=False`` the broker also queues QoS>0 messages for it while it is away.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        qos: int = 1,
        *,
        clean_session: bool = True,
        client_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.topic = topic
        self.qos = qos
        self.client_id = client_id or f"test-sub-{uuid.uuid4().hex[:12]}"
        self._messages: list[Message] = []
        self._cond = threading.Condition()
        self._subacks = 0
        self._failure: str | None = None

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self.client = client

        client.connect(host, port, keepalive=30)
        client.loop_start()
        if not self.wait_subscribed(1, timeout):
            self.close()
            if self._failure:
                raise RuntimeError(self._failure)
            raise TimeoutError(
                f"subscriber {self.client_id}: no CONNACK+SUBACK for {topic!r} from {host}:{port} "
                f"within {timeout} s"
            )

    # paho callbacks (VERSION2 signatures), run on paho's network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._fail(f"subscriber {self.client_id}: connection refused: {reason_code}")
            return
        client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:  # type: ignore[no-untyped-def]
        failed = [rc for rc in reason_code_list if rc.is_failure]
        if failed:
            self._fail(f"subscriber {self.client_id}: subscription to {self.topic!r} refused: {failed}")
            return
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def _fail(self, why: str) -> None:
        with self._cond:
            self._failure = why
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self._messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    # test-facing API
    @property
    def messages(self) -> list[Message]:
        """A copy of what has arrived so far."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Message]:
        """Wait until at least ``count`` messages have arrived or ``timeout`` has passed;
        return a copy of all messages so far (shorter than ``count`` on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._messages) >= count, timeout=timeout)
            return list(self._messages)

    @property
    def subacks(self) -> int:
        """How many times the subscription was granted (1 + one per reconnect)."""
        with self._cond:
            return self._subacks

    def wait_subscribed(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until the subscription has been granted ``count`` times in all: after a
        broker outage, ``wait_subscribed(sub.subacks + 1)`` waits for the resubscribe.
        Returns False on timeout or if the broker refused."""
        with self._cond:
            self._cond.wait_for(lambda: self._subacks >= count or self._failure is not None, timeout=timeout)
            return self._subacks >= count and self._failure is None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory: ``mqtt_subscriber(broker, topic, qos=1, *, clean_session=True,
    client_id=None, timeout=5.0) -> Subscriber``, connected and subscribed when it
    returns. ``broker`` is anything with ``host`` and ``port`` (e.g. the ``mosquitto``
    fixture). Every subscriber made is disconnected at teardown."""
    made: list[Subscriber] = []

    def make(broker: LocalBroker, topic: str, qos: int = 1, **kwargs: object) -> Subscriber:
        subscriber = Subscriber(broker.host, broker.port, topic, qos, **kwargs)  # type: ignore[arg-type]
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.close()


# ------------------------------------------------------------------------ serial
@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    """A raw pty pair: write/read the master, open ``slave_path`` with pyserial."""
    pair = PtyPair()
    try:
        yield pair
    finally:
        pair.close()


# ------------------------------------------------------------------------ shared data
@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the repository (the team's shared data and contract)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent: ../shared is not beside the repository on this machine")
    return SHARED_DIR


@pytest.fixture
def cwru_dir(shared_dir: Path) -> Path:
    """../shared/data/cwru: the real CWRU bearing recordings (.npz) and their index.csv."""
    path = shared_dir / "data" / "cwru"
    if not path.is_dir():
        pytest.skip("../shared/data/cwru is absent: the real CWRU recordings are not on this machine")
    return path

