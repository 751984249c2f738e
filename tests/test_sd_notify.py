"""systemd notification (Type=notify): a real AF_UNIX datagram socket stands in for systemd's
$NOTIFY_SOCKET, and a real `edge-agent run` process talks to it."""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid

import pytest

from cli_helpers import edge_agent_cmd
from edge_agent.sd_notify import Notifier, watchdog_interval


class NotifySocket:
    """A datagram socket bound at ``address``; every datagram kept with its arrival time."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str = "1", after: float = 0.0, timeout: float = 20.0) -> tuple[float, dict] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for t, m in self.messages:
                    if t >= after and m.get(key) == value:
                        return t, m
            time.sleep(0.02)
        return None

    def times(self, key: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, path  # sun_path holds 108 bytes
    ns = NotifySocket(path)
    yield path, ns
    ns.close()


def test_notifier_sends_to_a_path_and_to_the_abstract_namespace(tmp_path):
    path = str(tmp_path / "n.sock")
    ns = NotifySocket(path)
    name = f"edge-agent-test-{uuid.uuid4().hex[:8]}"
    abstract = NotifySocket(b"\0" + name.encode())
    try:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled and n.ready("running: 3 windows") and n.stopping()
        a = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert a.reloading()
        assert ns.wait_for("READY", timeout=2)[1]["STATUS"] == "running: 3 windows"
        assert ns.wait_for("STOPPING", timeout=2)
        reloading = abstract.wait_for("RELOADING", timeout=2)[1]
        assert int(reloading["MONOTONIC_USEC"]) > 0
        n.close()
        a.close()
    finally:
        ns.close()
        abstract.close()


def test_notifier_is_a_no_op_without_systemd_and_never_raises(tmp_path):
    off = Notifier({})
    assert not off.enabled and not off.ready() and not off.watchdog()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "1000"})
    assert gone.enabled and not gone.ready() and not gone.watchdog()  # logged once, not raised


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000"})
    assert n.interval == 0.5


def _config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[broker]\nenabled = false\n[[source]]\ntype = "emulator"\nchannels = 1\nspeedup = 2.0\n'
        f'[publish]\nstatus_interval_s = 0.5\n[storage]\ndir = "{tmp_path / "state"}"\n'
    )
    return cfg


def _start(tmp_path, path, **env):
    full = {**os.environ, "NOTIFY_SOCKET": path, **env}
    full.pop("WATCHDOG_PID", None)
    return subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(_config(tmp_path))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


def test_run_says_ready_pings_the_watchdog_reloads_and_says_stopping(tmp_path, notify_socket):
    path, ns = notify_socket
    p = _start(tmp_path, path, WATCHDOG_USEC="1000000")  # a ping every 0.5 s
    try:
        ready = ns.wait_for("READY", timeout=30)
        assert ready is not None, p.poll()
        assert ready[1]["STATUS"].startswith("running: pdm/")
        time.sleep(3.0)
        p.send_signal(signal.SIGHUP)
        reloading = ns.wait_for("RELOADING", after=ready[0], timeout=5)
        assert reloading is not None and int(reloading[1]["MONOTONIC_USEC"]) > 0
        again = ns.wait_for("READY", after=reloading[0], timeout=5)
        assert again is not None and "1 reload" in again[1]["STATUS"]
        time.sleep(1.0)
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        took = time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert took < 5.0 and "Traceback" not in out + err
    assert ns.wait_for("STOPPING", after=t, timeout=2) is not None
    pings = [x for x in ns.times("WATCHDOG") if x > ready[0]]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 6, pings
    # half of WATCHDOG_USEC, give or take one processing round (0.1 s when idle)
    assert 0.45 <= statistics.median(gaps) <= 0.75 and max(gaps) < 1.0, gaps
    assert min(ns.times("WATCHDOG")) > ready[0] - 0.001  # READY=1 comes first
    print(f"READY, {len(pings)} pings, median gap {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s; "
          f"exit in {took:.2f} s")


def test_a_stuck_processing_loop_stops_the_watchdog_pings(tmp_path, notify_socket):
    """The test hook makes the processing loop sleep 3 s: the pings stop for that long while the
    process lives (systemd would restart it), and come back when the loop does."""
    path, ns = notify_socket
    p = _start(tmp_path, path, WATCHDOG_USEC="400000", EDGE_AGENT_TEST_STALL_AFTER_S="1.0",
               EDGE_AGENT_TEST_STALL_S="3.0")
    try:
        ready = ns.wait_for("READY", timeout=30)
        assert ready is not None, p.poll()
        time.sleep(5.5)
        alive = p.poll() is None
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert alive and p.returncode == 0, err
    pings = ns.times("WATCHDOG")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    stall = max(gaps)
    i = gaps.index(stall)
    assert 2.8 <= stall <= 4.0, gaps
    assert i >= 2 and len(gaps) - i >= 3, gaps  # pinging before the stall, and again after it
    others = gaps[:i] + gaps[i + 1:]
    assert max(others) < 0.6, others
    assert "the processing loop sleeps" in out
    print(f"pings every {statistics.median(others):.3f} s, none for {stall:.2f} s while the loop was stuck")
