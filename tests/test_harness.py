"""The test harness itself works: a real mosquitto (delivery, persistence across restart,
outage and crash), a real raw pty that pyserial opens by path, and the shared recordings.

Later tests rely on these shapes; when one of these fails, fix the harness first.
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import serial
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.local_broker import LocalBroker, find_mosquitto, free_port
from edge_agent.ptypair import PtyPair

pytestmark = pytest.mark.timeout(30)

ALL_BYTES = bytes(range(256))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(0.02)
    return True


class Publisher:
    """A real paho 2.x publishing client on its own network thread, recording PUBACKs."""

    def __init__(self, broker: LocalBroker, client_id: str) -> None:
        self.acked: set[int] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert wait_until(self.client.is_connected), "publisher got no CONNACK"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.acked.add(mid)

    def is_acked(self, mid: int) -> bool:
        with self._lock:
            return mid in self.acked

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher() -> Iterator[Callable[[LocalBroker, str], Publisher]]:
    made: list[Publisher] = []

    def make(broker: LocalBroker, client_id: str = "test-pub") -> Publisher:
        pub = Publisher(broker, f"{client_id}-{os.getpid()}-{len(made)}")
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------ broker
def test_qos1_publish_is_delivered_byte_for_byte(mosquitto, mqtt_subscriber, publisher):
    payload = ALL_BYTES * 8 + b"\x00end"
    sub = mqtt_subscriber(mosquitto, "harness/raw/#", qos=1)
    pub = publisher(mosquitto)

    info = pub.client.publish("harness/raw/bytes", payload, qos=1)
    info.wait_for_publish(timeout=5)

    assert info.is_published()
    assert sub.wait_for(1, timeout=5) == [("harness/raw/bytes", payload, False)]


def test_retained_message_survives_restart(mosquitto, mqtt_subscriber, publisher):
    pub = publisher(mosquitto)
    info = pub.client.publish("harness/state", b"last-known-good", qos=1, retain=True)
    info.wait_for_publish(timeout=5)
    assert info.is_published()
    pub.close()
    pid_before, port_before = mosquitto.pid, mosquitto.port

    mosquitto.restart()

    assert mosquitto.running and mosquitto.port == port_before and mosquitto.pid != pid_before
    assert (mosquitto.workdir / "mosquitto.db").stat().st_size > 0
    log = mosquitto.log_path.read_text()
    assert "Saving in-memory database" in log and "Error saving" not in log
    sub = mqtt_subscriber(mosquitto, "harness/state", qos=1)
    assert sub.wait_for(1, timeout=5) == [("harness/state", b"last-known-good", True)]


def test_outage_publish_queues_then_gets_through_after_start(mosquitto, mqtt_subscriber, publisher):
    # A persistent session: the broker keeps the subscription and queues for it across
    # the outage, so delivery does not race the subscriber's own reconnect.
    sub = mqtt_subscriber(mosquitto, "harness/outage", qos=1, clean_session=False,
                          client_id=f"harness-outage-sub-{os.getpid()}")
    pub = publisher(mosquitto)
    port = mosquitto.port

    mosquitto.stop()
    assert not mosquitto.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mosquitto.host, port), timeout=1).close()
    assert wait_until(lambda: not pub.client.is_connected(), timeout=5)

    info = pub.client.publish("harness/outage", b"sent-during-outage", qos=1)
    # paho keeps the QoS 1 message and sends it after the next CONNACK. Note: info.rc stays
    # NO_CONN for good, so info.is_published()/wait_for_publish() raise even after delivery;
    # track the PUBACK by mid in on_publish instead.
    assert info.rc == mqtt.MQTT_ERR_NO_CONN
    time.sleep(0.3)
    assert not pub.is_acked(info.mid)

    mosquitto.start()
    assert mosquitto.port == port

    assert wait_until(lambda: pub.is_acked(info.mid), timeout=10), "queued message never PUBACKed"
    assert sub.wait_for(1, timeout=10) == [("harness/outage", b"sent-during-outage", False)]
    assert sub.wait_subscribed(2, timeout=5)  # and the subscriber is back for what follows


def test_kill_leaves_no_process_and_stop_is_idempotent(mosquitto):
    pid = mosquitto.pid
    assert pid is not None and pid_alive(pid)

    mosquitto.kill()

    assert not mosquitto.running and mosquitto.pid is None
    assert not pid_alive(pid)  # killed and reaped, not a zombie
    with pytest.raises(OSError):
        socket.create_connection((mosquitto.host, mosquitto.port), timeout=1).close()
    mosquitto.stop()
    mosquitto.stop()
    mosquitto.kill()

    mosquitto.start()  # a crash is recoverable on the same port
    second = mosquitto.pid
    assert second is not None and second != pid
    mosquitto.stop()
    mosquitto.stop()
    assert not pid_alive(second)


def test_context_manager_and_interpreter_exit_never_leak(mosquitto_binary, tmp_path):
    assert find_mosquitto() == mosquitto_binary and os.access(mosquitto_binary, os.X_OK)
    with LocalBroker(tmp_path / "ctx", persistence=False) as broker:
        pid = broker.pid
        assert pid is not None and pid_alive(pid)
    assert not pid_alive(pid)

    # A program that starts a broker and forgets it: the atexit fallback stops it.
    script = (
        "import sys; from pathlib import Path; from edge_agent.local_broker import LocalBroker\n"
        "b = LocalBroker(Path(sys.argv[1])); b.start(); print(b.pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "forgotten")],
                         capture_output=True, text=True, timeout=20, check=True)
    orphan = int(out.stdout.split()[0])
    assert wait_until(lambda: not pid_alive(orphan), timeout=5), f"broker {orphan} outlived its program"


def test_start_failure_reports_the_broker_log(mosquitto_binary, tmp_path):
    broker = LocalBroker(tmp_path / "bad", extra_conf="no_such_option 1")
    with pytest.raises(RuntimeError, match="no_such_option"):
        broker.start(timeout=5)
    assert not broker.running

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = LocalBroker(tmp_path / "busy", port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="in use"):
            busy.start(timeout=5)
        assert not busy.running


def test_a_port_taken_before_start_is_replaced_when_we_chose_it(mosquitto_binary, tmp_path):
    broker = LocalBroker(tmp_path / "moved", persistence=False)
    chosen = broker.port
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", chosen))
        thief.listen()
        with broker:
            assert broker.running and broker.port != chosen
            socket.create_connection((broker.host, broker.port), timeout=1).close()
            broker.restart()
            assert broker.port != chosen  # fixed from the first successful start on


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536


# ------------------------------------------------------------------------ pty
def test_pyserial_opens_pty_by_path_and_bytes_pass_unchanged(pty_pair):
    with serial.Serial(pty_pair.slave_path, baudrate=921600, timeout=0.5) as port:
        # master -> pyserial: every byte value, including NUL, LF, CR, XON/XOFF, ^C, ^D, DEL
        pty_pair.write(ALL_BYTES * 4)
        received = port.read(len(ALL_BYTES) * 4)
        assert received == ALL_BYTES * 4
        assert pty_pair.read(1, timeout=0.1) == b""  # no echo back to the master

        # pyserial -> master
        assert port.write(ALL_BYTES[::-1]) == 256
        port.flush()
        assert pty_pair.read(256, timeout=2) == ALL_BYTES[::-1]
        assert port.read(1) == b""  # nothing echoed to the reader either


def test_pty_is_raw_for_readers_that_are_not_pyserial(pty_pair):
    fd = os.open(pty_pair.slave_path, os.O_RDWR | os.O_NOCTTY)
    try:
        iflag, oflag, _cflag, lflag, *_ = termios.tcgetattr(fd)
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        assert not iflag & (termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.IXOFF)
        assert not oflag & termios.OPOST

        pty_pair.write(ALL_BYTES)
        got = b""
        while len(got) < 256:
            got += os.read(fd, 256 - len(got))
        assert got == ALL_BYTES

        os.write(fd, b"\r\n\n\r")
        assert pty_pair.read(4, timeout=2) == b"\r\n\n\r"
    finally:
        os.close(fd)


def test_link_opens_like_a_device_and_is_removed_on_close(tmp_path):
    link = tmp_path / "ttyEMU0"
    link.symlink_to("/dev/null")  # a stale link from an emulator that was killed
    with PtyPair() as pair:
        assert pair.link(link) == link
        assert os.readlink(link) == pair.slave_path
        with serial.Serial(str(link), baudrate=921600, timeout=0.5) as port:
            pair.write(b"\x00\x11\x13\r\n")
            assert port.read(5) == b"\x00\x11\x13\r\n"
    assert not link.exists() and not link.is_symlink()

    regular = tmp_path / "not-a-link"
    regular.write_text("keep me")
    with PtyPair() as pair, pytest.raises(FileExistsError):
        pair.link(regular)
    assert regular.read_text() == "keep me"


def test_closing_the_master_looks_like_an_unplugged_device():
    pair = PtyPair()
    port = serial.Serial(pair.slave_path, baudrate=921600, timeout=0.5)
    try:
        pair.close()
        pair.close()  # idempotent
        with pytest.raises(serial.SerialException):
            port.read(1)
        with pytest.raises(serial.SerialException):
            port.write(b"x")
    finally:
        port.close()
    with pytest.raises(ValueError):
        pair.write(b"x")


def test_write_with_timeout_when_nobody_reads(pty_pair):
    with pytest.raises(TimeoutError, match="reading"):
        pty_pair.write(b"\x55" * 1_000_000, timeout=0.2)


# ------------------------------------------------------------------------ shared data
def test_cwru_index_lists_the_recordings_present(cwru_dir):
    with open(cwru_dir / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    present = {p.name for p in cwru_dir.glob("*.npz")}

    assert present, "no .npz recordings in ../shared/data/cwru"
    assert {row["file"] for row in rows} == present
    for row in rows:
        with np.load(cwru_dir / row["file"]) as rec:
            assert rec["DE"].shape == (int(row["samples"]),), row["file"]
            assert float(rec["fs"]) == float(row["fs"]), row["file"]
            assert float(rec["rpm"]) == float(row["rpm"]), row["file"]
