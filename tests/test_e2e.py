"""End to end with real parts (issue #9, part 4): the sensor MCU emulator on a real pty
(``edge-agent emulate``, a subprocess) -> the daemon (``edge-agent run``, a subprocess, a
``[[source]] type = "serial"`` on that pty, ``models/default.pack``) -> a real mosquitto ->
a fleet-side subscriber (paho, its own network thread, arrival stamped with time.time()).

* a healthy machine for ~30 s raises no alert: none on the broker, none in the local alert
  log (``edge-agent alerts --json``), none in the status counters;
* an inner-race fault that starts at a known moment (``emulate --fault-at``, the onset's
  wall-clock time from the emulator) raises an ``inner_race`` alert at the subscriber
  within 10 s of the onset, and nothing before it;
* a fault run through a broker outage, with the daemon SIGKILLed twice (once during the
  outage, once with the link up) and restarted on the same state dir, loses nothing: every
  seq the outbox ever assigned (alerts, summaries) reaches the subscriber, gapless across
  the restarts, duplicates only as QoS 1 allows (counted and printed); every alert in the
  local log was published; ``PRAGMA integrity_check`` of the outbox (and the alert log) is
  ok after every kill.

The helpers (config, emulator and daemon processes, status polling, a time-stamping
subscriber) are also used by benches/bench_footprint.py.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pytest

from edge_agent.outbox import FILENAME as OUTBOX_FILE
from edge_agent.status_file import read_status
from tests.cli_helpers import edge_agent_cmd, run_cli
from tests.conftest import Subscriber

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK = REPO_ROOT / "models" / "default.pack"
SITE, DEVICE, PREFIX = "farm-e2e", "wtg-e2e", "pdm"
BASE = f"{PREFIX}/{SITE}/{DEVICE}"
ALERT_LOG_FILE = "alerts.sqlite3"
KINDS_WITH_SEQ = ("alert", "summary", "ack")


# ------------------------------------------------------------------------------ helpers
def write_config(path: Path, *, link: Path, state: Path, broker=None, pack: Path | None = DEFAULT_PACK,
                 summary_interval_s: float = 60.0, status_interval_s: float = 0.5, extra: str = "") -> Path:
    """A daemon config: one serial source on ``link``, the given pack, state in ``state``;
    ``broker`` (host, port) or None for no uplink. Everything else is the default."""
    uplink = (f'host = "{broker.host}"\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n'
              if broker is not None else "enabled = false\n")
    path.write_text(f"""
[device]
site = "{SITE}"
id = "{DEVICE}"
[broker]
{uplink}
[[source]]
type = "serial"
port = "{link}"
[model]
pack = "{pack or ''}"
[publish]
summary_interval_s = {summary_interval_s}
status_interval_s = {status_interval_s}
[storage]
dir = "{state}"
{extra}
""")
    return path


class _Lines:
    """Reads a text pipe on a thread; keeps every line with the time.time() it arrived."""

    def __init__(self, pipe, sink: Path | None = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._sink = sink.open("a") if sink is not None else None
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            now = time.time()
            with self._lock:
                self.lines.append((now, line.rstrip("\n")))
            if self._sink is not None:
                self._sink.write(f"{now:.6f} {line}")
                self._sink.flush()
        pipe.close()

    def first(self, pattern: str, after: float = 0.0) -> tuple[float, re.Match] | None:
        """(arrival time, match) of the first line matching ``pattern`` that arrived after ``after``."""
        with self._lock:
            for t, line in self.lines:
                m = re.search(pattern, line)
                if m and t >= after:
                    return t, m
        return None

    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        if self._sink is not None:
            self._sink.close()
            self._sink = None


class Emulator:
    """``edge-agent emulate`` as a subprocess; returns once its link exists."""

    def __init__(self, link: Path, scenario: str, *, fault_at: float | None = None, channels: int = 4,
                 seconds: float | None = None, stats: Path | None = None, seed: int = 0, log: Path | None = None) -> None:
        self.link, self.stats_path = link, stats
        cmd = [*edge_agent_cmd(), "emulate", "--link", str(link), "--scenario", scenario, "--channels", str(channels),
               "--seed", str(seed)]
        if fault_at is not None:
            cmd += ["--fault-at", f"{fault_at:g}"]
        if seconds is not None:
            cmd += ["--seconds", f"{seconds:g}"]
        if stats is not None:
            cmd += ["--stats", str(stats)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err = _Lines(self.proc.stderr, log)
        if not wait_for(lambda: link.is_symlink() or self.proc.poll() is not None, 15):
            self.stop()
            raise AssertionError(f"the emulator did not create {link}: {self.err.text()}")
        if self.proc.poll() is not None:
            raise AssertionError(f"the emulator exited {self.proc.returncode}: {self.err.text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def onset_unix(self) -> float | None:
        """When the fault began (the emulator's "fault onset" line), time.time() scale."""
        hit = self.err.first(r"fault onset: .* \(unix ([0-9.]+),")
        return float(hit[1][1]) if hit else None

    def stop(self) -> dict | None:
        """SIGTERM, wait; the --stats document if one was asked for."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.join()
        if self.stats_path is not None and self.stats_path.exists():
            return json.loads(self.stats_path.read_text())
        return None


class Daemon:
    """``edge-agent run --config CFG`` as a subprocess; its log lines kept with arrival times
    (and appended to ``log``). ``started`` is time.time() just before the spawn."""

    def __init__(self, cfg: Path, log: Path | None = None) -> None:
        self.cfg = cfg
        env = dict(os.environ)
        env.pop("EDGE_AGENT_TEST_KILL_AT", None)
        self.started = time.time()
        self.proc = subprocess.Popen([*edge_agent_cmd(), "run", "--config", str(cfg)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = _Lines(self.proc.stdout, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (drain and exit 0); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.join()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, mid-stream."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.out.join()
        assert self.proc.returncode == -signal.SIGKILL


def wait_for(predicate: Callable[[], object], timeout: float, every: float = 0.05):
    """Poll ``predicate`` until truthy (returned) or ``timeout`` (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def scored(state: Path) -> int:
    """windows_scored in the status file (0 when there is none yet)."""
    snap = read_status(state) or {}
    return int(snap.get("counters", {}).get("windows_scored", 0)) if snap.get("state") == "running" else 0


def integrity(db: Path) -> list:
    with sqlite3.connect(db) as c:
        rows = c.execute("PRAGMA integrity_check").fetchall()
    c.close()
    return rows


def outbox_meta(state: Path) -> tuple[dict, int]:
    """The outbox's meta table and how many items it holds."""
    with sqlite3.connect(state / OUTBOX_FILE) as c:
        meta = dict(c.execute("SELECT key, value FROM meta"))
        held = c.execute("SELECT count(*) FROM items").fetchone()[0]
    c.close()
    return meta, held


def local_alerts(cfg: Path) -> list[dict]:
    r = run_cli("alerts", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class TimedSubscriber(Subscriber):
    """The suite's Subscriber, with each message's arrival time (time.time())."""

    def __init__(self, *args, **kwargs) -> None:
        self.arrivals: list[float] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._cond:  # an RLock: the parent takes it again
            self.arrivals.append(time.time())
            super()._on_message(client, userdata, message)

    def received(self, kind: str | None = None) -> list[tuple[float, dict]]:
        """(arrival, payload) of the JSON messages on ``{BASE}/{kind}`` (every kind with a seq
        when None), in arrival order."""
        with self._cond:
            pairs = list(zip(self.arrivals, self._messages))
        out = []
        for t, (topic, payload, _) in pairs:
            k = topic.rsplit("/", 1)[-1]
            if (k == kind) if kind else (k in KINDS_WITH_SEQ):
                out.append((t, {**json.loads(payload), "_topic": k}))
        return out


@pytest.fixture
def timed_subscriber() -> Iterator[Callable[..., TimedSubscriber]]:
    made: list[TimedSubscriber] = []

    def make(broker, topic: str = f"{BASE}/+", **kwargs) -> TimedSubscriber:
        sub = TimedSubscriber(broker.host, broker.port, topic, 1, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def parts(tmp_path) -> Iterator[dict]:
    """Paths, and every emulator/daemon a test starts, stopped at teardown (logs printed on failure)."""
    made: dict = {"emulators": [], "daemons": [], "tmp": tmp_path, "link": tmp_path / "ttyEMU0",
                  "state": tmp_path / "state", "log": tmp_path / "daemon.log", "emu_log": tmp_path / "emulator.log"}
    yield made
    for d in made["daemons"]:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    for e in made["emulators"]:
        e.stop()


def _start(parts: dict, what: str, *args, **kwargs):
    if what == "emulator":
        obj = Emulator(parts["link"], *args, log=parts["emu_log"], **kwargs)
        parts["emulators"].append(obj)
    else:
        obj = Daemon(*args, log=parts["log"], **kwargs)
        parts["daemons"].append(obj)
    return obj


def _logs(parts: dict) -> str:
    text = ""
    for key in ("log", "emu_log"):
        if parts[key].exists():
            text += f"\n--- {parts[key].name} (last 40 lines) ---\n" + "\n".join(parts[key].read_text().splitlines()[-40:])
    return text


pytestmark = [pytest.mark.broker, pytest.mark.slow]


# ------------------------------------------------------------------------------ tests
def test_a_healthy_machine_raises_no_alert(parts, mosquitto, timed_subscriber):
    sub = timed_subscriber(mosquitto)
    _start(parts, "emulator", "healthy")
    cfg = write_config(parts["tmp"] / "agent.toml", link=parts["link"], state=parts["state"], broker=mosquitto,
                       summary_interval_s=10.0)
    daemon = _start(parts, "daemon", cfg)
    assert wait_for(lambda: scored(parts["state"]) > 0, 20), "no window scored" + _logs(parts)
    time.sleep(30.0)
    snap = read_status(parts["state"])
    assert daemon.terminate() == 0, _logs(parts)
    wait_for(lambda: len(sub.received("summary")) >= 3, 5)
    final = read_status(parts["state"])
    counters = final["counters"]
    alerts = sub.received("alert")
    assert alerts == [], [a for _, a in alerts]
    assert local_alerts(cfg) == []
    assert counters["alerts_raised"] == 0 and counters["open_alerts"] == 0, counters
    # it did work: 4 channels; the pack's windows are 0.341 s every 0.171 s: 23.4 windows/s
    assert counters["windows_scored"] >= 30 * 4 * 12000 / 2048 * 0.9, counters
    # the model may mislabel an odd window (the alert rules' k of n is there for that)
    labels = counters["windows_per_label"]
    assert labels.get("normal", 0) >= 0.98 * sum(labels.values()), labels
    assert len(sub.received("summary")) >= 3 and snap["queues"]["samples"]["dropped"] == 0
    print(f"healthy: {counters['windows_scored']} windows scored, labels {counters['windows_per_label']}, "
          f"{len(sub.received('summary'))} summaries, 0 alerts")


def test_an_inner_race_fault_is_alerted_within_10_s_of_its_onset(parts, mosquitto, timed_subscriber):
    sub = timed_subscriber(mosquitto)
    emulator = _start(parts, "emulator", "inner_race", fault_at=6.0, stats=parts["tmp"] / "emulator.json")
    cfg = write_config(parts["tmp"] / "agent.toml", link=parts["link"], state=parts["state"], broker=mosquitto)
    daemon = _start(parts, "daemon", cfg)
    assert wait_for(lambda: scored(parts["state"]) > 0, 20), "no window scored" + _logs(parts)
    onset = wait_for(emulator.onset_unix, 15)
    assert onset, "the emulator reported no onset" + _logs(parts)

    def first_inner_race():
        return next(((t, a) for t, a in sub.received("alert") if a.get("type") == "inner_race" and a.get("state") == "open"), None)

    hit = wait_for(first_inner_race, max(0.0, onset + 12.0 - time.time()))
    assert daemon.terminate() == 0, _logs(parts)
    stats = emulator.stop()
    assert stats["fault_onset"]["unix"] == pytest.approx(onset, abs=1e-5) and stats["fault_at_s"] == 6.0
    assert hit is not None, f"no inner_race alert within 12 s of the onset: {[a for _, a in sub.received('alert')]}" + _logs(parts)
    arrived, alert = hit
    delay = arrived - onset
    # the machine was healthy before the onset: nothing raised before it
    early = [a for t, a in sub.received("alert") if t < onset]
    assert early == [], early
    assert alert["label"] == "inner_race" and alert["severity"] in ("warning", "alarm"), alert
    assert delay <= 10.0, f"inner_race alert {delay:.2f} s after the onset"
    assert onset < alert["window_completed_at"] <= arrived
    # the local log has it too
    logged = [a for a in local_alerts(cfg) if a["type"] == "inner_race"]
    assert alert["id"] in {a["id"] for a in logged}
    print(f"inner_race: onset {onset:.3f}, first alert ({alert['channel']}, {alert['severity']}) at the subscriber "
          f"{delay:.2f} s later (window completed {alert['window_completed_at'] - onset:.2f} s after the onset, "
          f"{(arrived - alert['window_completed_at']) * 1e3:.1f} ms to the subscriber); "
          f"{len([a for a in logged if a['state'] == 'open'])} inner_race alerts open")


def test_broker_outage_and_sigkills_lose_nothing(parts, mosquitto, timed_subscriber):
    """Fault at 3 s; the broker goes down at ~4 s; the daemon is SIGKILLed during the
    outage, restarted on the same state dir (still no broker), the broker comes back, the
    daemon is SIGKILLed again with the link up, restarted, and finally stopped cleanly once
    everything is published."""
    state = parts["state"]
    sub = timed_subscriber(mosquitto, clean_session=False, client_id="e2e-fleet-side")
    _start(parts, "emulator", "inner_race", fault_at=3.0)
    cfg = write_config(parts["tmp"] / "agent.toml", link=parts["link"], state=state, broker=mosquitto,
                       summary_interval_s=1.0)
    checks: list[str] = []

    def kill_and_check(d: Daemon, when: str) -> None:
        d.kill()
        for name in (OUTBOX_FILE, ALERT_LOG_FILE):
            assert integrity(state / name) == [("ok",)], (when, name)
        meta, held = outbox_meta(state)
        checks.append(f"{when}: next_seq {meta['next_seq']}, {held} held")

    def running(d: Daemon, after: int = 0) -> bool:
        snap = read_status(state) or {}
        return snap.get("state") == "running" and snap.get("counters", {}).get("windows_scored", 0) > after \
            and snap.get("uptime_s", 1e9) < time.time() - d.started + 1

    a = _start(parts, "daemon", cfg)
    assert wait_for(lambda: running(a), 20), "daemon A never scored" + _logs(parts)
    wait_for(lambda: len(sub.received("summary")) >= 2, 5)
    mosquitto.stop()
    outage_started = time.time()
    time.sleep(5.0)  # the fault is alerted meanwhile; summaries every second
    kill_and_check(a, "kill 1 (broker down)")
    (state / "status.json").unlink(missing_ok=True)
    b = _start(parts, "daemon", cfg)
    assert wait_for(lambda: running(b), 20), "daemon B never scored" + _logs(parts)
    time.sleep(3.0)
    subacks = sub.subacks
    mosquitto.start()
    outage_s = time.time() - outage_started
    assert sub.wait_subscribed(subacks + 1, 15), "the subscriber did not come back"
    # B reconnects and drains what A and B committed while the broker was down
    wait_for(lambda: (read_status(state) or {}).get("broker", {}).get("connected"), 15)
    time.sleep(2.0)
    kill_and_check(b, "kill 2 (link up)")
    (state / "status.json").unlink(missing_ok=True)
    c = _start(parts, "daemon", cfg)
    assert wait_for(lambda: running(c), 20), "daemon C never scored" + _logs(parts)
    time.sleep(2.0)
    assert wait_for(lambda: (read_status(state) or {}).get("queues", {}).get("outbox", {}).get("depth") == 0, 20), \
        "the outbox did not drain" + _logs(parts)
    assert c.terminate() == 0, _logs(parts)
    meta, held = outbox_meta(state)
    assert integrity(state / OUTBOX_FILE) == [("ok",)] and integrity(state / ALERT_LOG_FILE) == [("ok",)]
    last_seq = meta["next_seq"] - 1
    evicted = sum(v for k, v in meta.items() if k.startswith("evicted."))
    wait_for(lambda: max((p["seq"] for _, p in sub.received()), default=0) >= last_seq, 10)

    got = sub.received()
    seqs = [p["seq"] for _, p in got]
    unique = sorted(set(seqs))
    duplicates = len(seqs) - len(unique)
    kinds = Counter(p["_topic"] for _, p in got)
    assert held == 0 and evicted == 0, (held, meta)
    missing = sorted(set(range(1, last_seq + 1)) - set(unique))
    assert not missing, f"seqs committed but never received: {missing[:20]} ({len(missing)}); {checks}"
    assert unique == list(range(1, last_seq + 1)), "a seq received that the outbox never assigned"
    # every alert the local log holds was published (raised ones; clears are separate messages)
    published_ids = {p["id"] for _, p in sub.received("alert")}
    logged = local_alerts(cfg)
    assert logged and {a["id"] for a in logged} <= published_ids
    fault_alerts = [p for _, p in sub.received("alert") if p["type"] == "inner_race" and p["state"] == "open"]
    assert fault_alerts, "the fault raised no inner_race alert"
    open_per_channel = Counter(a["channel"] for a in logged if a["type"] == "inner_race" and a["state"] == "open")
    print(f"outage {outage_s:.1f} s, 2 SIGKILLs: {last_seq} seqs committed by 3 processes, all received, "
          f"{duplicates} duplicates (QoS 1), by kind {dict(kinds)}; {len(logged)} alerts in the local log, "
          f"{len(fault_alerts)} inner_race raises published (open in the local log per channel: "
          f"{dict(open_per_channel)}); {'; '.join(checks)}")

