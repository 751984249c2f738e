"""Alert latency and publish throughput against a local broker (issue #7, acceptance).

Everything real: the agent's own threads (``Agent.run``), the SQLite outbox (synchronous
FULL), the publisher (paho, QoS 1, its own network thread), a private mosquitto on a free
loopback port (the ``mosquitto`` fixture of tests/conftest.py), and a subscriber in **its
own process** (paho, QoS 1) that stamps ``time.time()`` on each message the moment paho
hands it over: the fleet side is another machine, so its receiving must not compete with
the agent for the GIL. All clocks are this machine's ``time.time()``.

``alert-latency[plain|traced]``: the agent runs ``ToggleSensor``, an in-process source of
six channels of the emulator's signal (edge_agent/emulator/signal.py) paced at real time
like a sensor (a block of 1,024 samples at 25.6 kHz per channel every 40 ms), emitted
through the agent's own ``_run_source`` path. After 3 s of healthy signal (the baseline
scorer learns each channel's healthy baseline from its first 20 windows), every channel
alternates 320 ms of an inner-race fault at full severity with 320 ms of healthy signal,
the channels out of step with each other. With ``[[alert_rule]] type = "anomaly",
raise_after = 1, raise_window = 1, clear_after = 1`` every fault stretch raises an alert and
every healthy one clears it: ~9 raised alerts a second (far more than a turbine's, so this
is a busy case). Window 4,096, hop 2,048 (the defaults). Figures, for raised alerts:
(receipt time - ``window_completed_at``) p50 / p99 / max, and the agent's own part
(``agent.alert_latency``: window completion to the outbox commit returning). Window
completion is when the block that completed the window reached the agent's queue.
Also: the raised alerts over 50 ms, in clusters (one stall or many), and the machine's
load and Linux pressure-stall shares during the run (``io_stall_pct`` / ``cpu_stall_pct``:
% of the time some task, ours included, waited for the disk / a CPU): the VM is shared.
``traced`` wraps (at run time, in this file only) ``process_blocks``, ``_commit_alert``,
``alert_log.record``, ``outbox.commit`` and the publisher's ``client.publish`` to stamp
each alert on its way, which splits its latency into: queue (the block in the queue until
its batch starts), scoring (batch start until the batch's first alert: windowing, quality
checks, features, model, rules), earlier alerts (the alerts before this one in the same
batch, each written as below), alert log (``alert_log.record``: the local SQLite log, with
8 windows of evidence for a raised alert; split into the raises before the evidence cap of
16 MiB and those at it, which evict), log line (the ALERT log line, counters), commit (the
outbox, FULL: one fsync), wake (commit returned until ``client.publish`` is called for it,
on the publisher thread), and wire (publish called until the subscriber has it: paho's
network thread, the broker, the subscriber). The wrappers cost microseconds; ``plain`` has
none and is the headline figure.

``backlog-drain[alert|summary]``: 5,000 messages (an alert of 645 B or a summary of
25,483 B as published: the shapes of bench_outbox.py) committed to an outbox (512 MB cap,
so nothing is evicted) before the publisher starts (an outage's backlog); then the
publisher starts, and the time until the subscriber has all of them gives messages/s and
MB/s (from the publisher's start, connect included, and from the first receipt to the last).

``live-rate[alert|summary]``: the publisher connected, a producer thread commits at a
steady rate for 3 s per step, the rate x1.5 per step from 100 messages/s; a step holds if
the producer kept up (>= 97% of the rate: else the commit itself is the limit), the outbox
depth stayed bounded (at the end of the step <= 0.25 s of messages + 2 x MAX_INFLIGHT, and
never above 0.5 s of messages + 2 x MAX_INFLIGHT, sampled 10 times a second), the
subscriber received >= 95% of the rate during the step, and nothing was lost. The last
rate that held is run again for 10 s (if that does not hold, the rate before it): the
sustained rate. Commit-to-receipt latency p50 /
p99 per step.

Each bench is one round (``pedantic``, rounds=1): the figures are in ``extra_info`` and
printed (-s). Run:
.venv/bin/python -m pytest benches/bench_publish.py -o python_files='bench_*.py' --benchmark-only -s
(~3 minutes in all: each alert-latency run 46 s, a drain 3-7 s, a live-rate run 30-40 s).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.alert_log import EVIDENCE_WINDOWS
from edge_agent.config import default_config
from edge_agent.emulator.signal import SignalGenerator, SignalSpec
from edge_agent.outbox import Outbox
from edge_agent.publisher import MAX_INFLIGHT, Publisher
from edge_agent.topics import Topics
from edge_agent.window import SampleBlock

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from tests.conftest import mosquitto, mosquitto_binary  # noqa: E402,F401  (fixtures: a real broker)

pytestmark = pytest.mark.broker

# ------------------------------------------------------------------------ payloads (as bench_outbox.py)
ALERT = {
    "schema": 1, "id": "a-0001", "time": 1795320668.2, "state": "open", "severity": "warning",
    "type": "inner_race", "channel": "serial0.s3.ch0", "label": "inner_race", "component": "bearing",
    "model_version": "default 2026.11.22-2", "rpm": 1797.0,
    "explanation": "inner race fault: BPFI order 5.42 and its 1x shaft sidebands stand 14.2 dB above "
                   "the envelope noise floor (healthy baseline 2.1 dB), kurtosis 6.8 against 3.0 +- 0.2, "
                   "crest factor 5.9; 4 of the last 5 windows at 1797 rpm; model p = 0.97",
    "features": {f"env_bpfi_{k}": 14.2 - k for k in range(1, 6)} | {"kurtosis": 6.8, "crest": 5.9, "rms_g": 0.41},
    "windows": 4, "of": 5,
}
SUMMARY = {"schema": 1, "time": 1795320668.2, "interval_s": 60, "windows_per_label": {"normal": 350},
           "sketches": {f"f{k}": base64.b64encode(os.urandom(900)).decode() for k in range(21)}}
PAYLOADS = {"alert": ALERT, "summary": SUMMARY}


def _wire_bytes(kind: str) -> int:
    """Bytes of the payload as published (the outbox adds ``seq``)."""
    return len(json.dumps(dict(PAYLOADS[kind], seq=12345), separators=(",", ":")))


def _pct(values, qs=(50, 99)) -> list[float]:
    a = np.asarray(values, dtype=np.float64)
    return [float(np.percentile(a, q)) for q in qs] if len(a) else [float("nan")] * len(qs)


# ------------------------------------------------------------------------ the subscriber, in its own process
SUBSCRIBER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = sys.stdout
def on_connect(client, userdata, flags, rc, props):
    client.subscribe(topic, qos=1)
def on_subscribe(client, userdata, mid, rcs, props):
    out.write("READY\n"); out.flush()
def on_message(client, userdata, msg):
    t = time.time()  # first: the moment of receipt
    p = msg.payload
    kind = msg.topic.rsplit("/", 1)[-1]
    state, done = "-", 0.0
    if len(p) < 8192:
        d = json.loads(p)
        seq, state, done = d.get("seq", -1), d.get("state", "-"), d.get("window_completed_at", 0.0)
    else:
        i = p.rfind(b'"seq":')
        seq = int(p[i + 6:p.index(b"}", i)]) if i >= 0 else -1
    out.write(f"{t:.6f} {kind} {len(p)} {seq} {state} {done}\n"); out.flush()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{time.time_ns()}", clean_session=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=30)
c.loop_forever()
"""


class Received:
    __slots__ = ("t", "kind", "nbytes", "seq", "state", "done")

    def __init__(self, line: str) -> None:
        t, self.kind, n, seq, self.state, done = line.split()
        self.t, self.nbytes, self.seq, self.done = float(t), int(n), int(seq), float(done)


class ProcessSubscriber:
    """A paho subscriber (QoS 1) in a child process; its lines are read on a thread here."""

    def __init__(self, broker, topic: str, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, broker.host, str(broker.port), topic],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self._cond = threading.Condition()
        self._got: list[Received] = []
        self.seqs: set[int] = set()  # unique seqs received (kept here: predicates stay O(1))
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="bench-subscriber-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready, timeout):
                self.close()
                raise TimeoutError(f"subscriber to {topic!r}: no SUBACK within {timeout} s")

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._cond:
                if line.startswith("READY"):
                    self._ready = True
                else:
                    r = Received(line)
                    self._got.append(r)
                    self.seqs.add(r.seq)
                self._cond.notify_all()

    @property
    def got(self) -> list[Received]:
        with self._cond:
            return list(self._got)

    def wait_for(self, pred, timeout: float) -> bool:
        """Wait until ``pred(self)`` (called on every message: keep it O(1))."""
        with self._cond:
            return self._cond.wait_for(lambda: pred(self), timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def subscriber():
    made: list[ProcessSubscriber] = []

    def make(broker, topic: str) -> ProcessSubscriber:
        made.append(ProcessSubscriber(broker, topic))
        return made[-1]

    yield make
    for s in made:
        s.close()


# ------------------------------------------------------------------------ alert latency
FS = 25600.0
BLOCK = 1024  # as EmulatorSource: 40 ms of signal per channel per block
CHANNELS = 6
WARM_BLOCKS = 75  # 3 s healthy: the baseline (20 windows per channel) is learnt
PERIOD_BLOCKS, FAULT_BLOCKS = 16, 8  # then 320 ms faulty, 320 ms healthy, again and again
RUN_S = 45.0


class ToggleSensor:
    """A source (name, run(emit, stop), counters()) of CHANNELS channels of emulated signal,
    paced at real time; after WARM_BLOCKS each channel alternates faulty and healthy
    stretches, channel i shifted by i * PERIOD_BLOCKS / CHANNELS blocks."""

    name = "bench"

    def __init__(self) -> None:
        self.healthy = [SignalGenerator(SignalSpec(fs=FS, scenario="healthy", seed=1), i) for i in range(CHANNELS)]
        self.faulty = [SignalGenerator(SignalSpec(fs=FS, scenario="inner_race", seed=2, onset_s=0.0, ramp_s=1e-3), i)
                       for i in range(CHANNELS)]
        self.offsets = [round(i * PERIOD_BLOCKS / CHANNELS) for i in range(CHANNELS)]
        self.halt = threading.Event()  # stops emitting, the agent runs on
        self.blocks = 0
        self.late_s = 0.0  # the most the source fell behind real time

    def counters(self) -> dict[str, int]:
        return {"blocks": self.blocks}

    def run(self, emit, stop: threading.Event) -> None:
        start = time.monotonic()
        t0_us = int(time.time() * 1e6)
        k = 0
        while not (stop.is_set() or self.halt.is_set()):
            for i in range(CHANNELS):
                faulty = k >= WARM_BLOCKS and (k - WARM_BLOCKS + self.offsets[i]) % PERIOD_BLOCKS < FAULT_BLOCKS
                x, rpm = (self.faulty if faulty else self.healthy)[i].next_block(BLOCK)
                emit(SampleBlock(f"bench.ch{i}", x, FS, t0_us + round(k * BLOCK * 1e6 / FS), k * BLOCK, rpm))
                self.blocks += 1
            k += 1
            ahead = k * BLOCK / FS - (time.monotonic() - start)
            self.late_s = max(self.late_s, -ahead)
            if ahead > 0:
                stop.wait(ahead)


class Tracer:
    """Time stamps of each raised alert on its way, by seq (traced runs only)."""

    def __init__(self, agent: Agent) -> None:
        self.batch_start = 0.0
        self.enter = 0.0
        self.record_span = (0.0, 0.0)  # the last alert_log.record call
        self.first_enter: float | None = None  # the batch's first alert
        self.by_seq: dict[int, dict] = {}
        self.published: dict[int, float] = {}
        self.batches: list[tuple[float, float, int]] = []  # (start, end, blocks)
        log_ = agent.alert_log
        self.evidence_cap = log_.evidence_max_bytes // (EVIDENCE_WINDOWS * agent.windower.length * 4) if log_ else 0
        self._wrap(agent)

    def _wrap(self, agent: Agent) -> None:
        process_blocks, commit_alert, commit = agent.process_blocks, agent._commit_alert, agent.outbox.commit
        publish = agent.publisher.client.publish
        record = agent.alert_log.record if agent.alert_log is not None else None

        def traced_process_blocks(blocks, arrived=None):
            self.batch_start = t = time.time()
            self.first_enter = None
            try:
                return process_blocks(blocks, arrived)
            finally:
                self.batches.append((t, time.time(), len(blocks)))

        def traced_commit_alert(msg):
            self.enter = time.time()
            if self.first_enter is None:
                self.first_enter = self.enter
            self.record_span = (self.enter, self.enter)
            return commit_alert(msg)

        def traced_record(msg, evidence=()):
            t = time.time()
            try:
                return record(msg, evidence)
            finally:
                self.record_span = (t, time.time())

        def traced_commit(kind, message):
            t = time.time()
            seq = commit(kind, message)
            if kind == "alert" and seq is not None:
                self.by_seq[seq] = {"batch": self.batch_start, "first": self.first_enter, "enter": self.enter,
                                    "record": self.record_span,
                                    "commit": t, "committed": time.time()}
            return seq

        def traced_publish(topic, payload=None, *args, **kwargs):
            t = time.time()
            if isinstance(payload, (bytes, bytearray)) and topic.endswith("/alert"):
                i = payload.rfind(b'"seq":')
                if i >= 0:
                    self.published.setdefault(int(payload[i + 6:payload.index(b"}", i)]), t)
            return publish(topic, payload, *args, **kwargs)

        agent.process_blocks = traced_process_blocks
        agent._commit_alert = traced_commit_alert
        agent.outbox.commit = traced_commit
        agent.publisher.client.publish = traced_publish
        if record is not None:
            agent.alert_log.record = traced_record


def _alert_latency_run(broker, tmp_path: Path, make_subscriber, traced: bool, prepare=None, **overrides) -> dict:
    """``overrides`` (config sections) and ``prepare(agent)`` are for experiments outside the
    bench; the bench itself runs the defaults plus the alert rule."""
    cfg = default_config(**{
        "broker": {"host": broker.host, "port": broker.port},
        "storage": {"dir": str(tmp_path / "state")},
        "alert_rule": [{"type": "anomaly", "raise_after": 1, "raise_window": 1, "clear_after": 1}],
        **overrides,
    })
    load_before = _load()
    agent = Agent(cfg)
    if prepare is not None:
        prepare(agent)
    sensor = ToggleSensor()
    agent.sources = [sensor]  # the agent's own _run_source feeds it to agent.samples
    sub = make_subscriber(broker, agent.topics.of("alert"))
    tracer = Tracer(agent) if traced else None
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), name="bench-agent")
    started, stalls = time.time(), _stalls()
    runner.start()
    try:
        time.sleep(RUN_S)
        sensor.halt.set()
        time.sleep(0.5)  # the last blocks processed
        committed = agent.outbox.committed["alert"]
        sub.wait_for(lambda s: len(s.seqs) >= committed, timeout=15)
    finally:
        stop.set()
        runner.join(timeout=15)
    got = sub.got
    first: dict[int, Received] = {}
    for r in got:
        first.setdefault(r.seq, r)
    raised = [r for r in first.values() if r.state == "open" and r.done > 0]
    cleared = [r for r in first.values() if r.state == "cleared" and r.done > 0]
    e2e = [(r.t - r.done) * 1e3 for r in raised]
    agent_part = [s * 1e3 for s in agent.alert_latency]
    p50, p99 = _pct(e2e)
    a50, a99 = _pct(agent_part)
    c50, c99 = _pct([(r.t - r.done) * 1e3 for r in cleared])
    sizes = [r.nbytes for r in raised]
    # the raised alerts over the goal, in clusters (a gap > 1 s starts a new one): one stall or many?
    slow = sorted((r.done, (r.t - r.done) * 1e3) for r in raised if (r.t - r.done) * 1e3 > 50.0)
    clusters: list[list] = []
    for done, ms in slow:
        if clusters and done - clusters[-1][3] <= 1.0:
            c = clusters[-1]
            c[1], c[2], c[3] = c[1] + 1, max(c[2], ms), done
        else:
            clusters.append([done, 1, ms, done])
    out = {
        "channels": CHANNELS, "run_s": RUN_S, "windows": agent.windows_total,
        "raised": len(raised), "cleared": len(cleared), "alerts_committed": committed,
        "received_unique": len(first), "duplicates": len(got) - len(first),
        "samples_dropped": agent.samples.dropped, "processing_errors": agent.processing_errors,
        "source_late_max_ms": round(sensor.late_s * 1e3, 1),
        "alert_bytes_median": int(np.median(sizes)) if sizes else 0,
        "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "max_ms": round(max(e2e, default=float("nan")), 2),
        "agent_part_n": len(agent_part), "agent_part_p50_ms": round(a50, 2), "agent_part_p99_ms": round(a99, 2),
        "agent_part_max_ms": round(max(agent_part, default=float("nan")), 2),
        "cleared_p50_ms": round(c50, 2), "cleared_p99_ms": round(c99, 2),
        "goal_p99_le_50ms": bool(p99 <= 50.0),
        "over_50ms": len(slow),  # clusters: (s after start, alerts, worst ms, s long)
        "over_50ms_clusters": [(round(c[0] - started, 1), c[1], round(c[2], 1), round(c[3] - c[0], 2))
                               for c in clusters],
        "load_before": load_before, "load_after": _load(), **_stall_share(stalls, time.time() - started),
    }
    if tracer is not None:
        out.update(_split(tracer, raised))
    return out


def _split(tracer: Tracer, raised: list[Received]) -> dict:
    """Per raised alert: where its latency went (ms), p50 / p99 / max of each stage."""
    stages: dict[str, list[float]] = {k: [] for k in ("queue", "scoring", "earlier_alerts", "alert_log", "log_line",
                                                       "commit", "wake", "wire")}
    worst: list[tuple[float, dict]] = []
    for r in sorted(raised, key=lambda r: r.seq):
        s, pub = tracer.by_seq.get(r.seq), tracer.published.get(r.seq)
        if s is None or pub is None:
            continue
        rec0, rec1 = s["record"]
        parts = {"queue": s["batch"] - r.done, "scoring": s["first"] - s["batch"],
                 "earlier_alerts": s["enter"] - s["first"],
                 "alert_log": rec1 - rec0, "log_line": s["commit"] - s["enter"] - (rec1 - rec0),
                 "commit": s["committed"] - s["commit"], "wake": pub - s["committed"], "wire": r.t - pub}
        for k, v in parts.items():
            stages[k].append(v * 1e3)
        worst.append(((r.t - r.done) * 1e3, {k: round(v * 1e3, 1) for k, v in parts.items()}))
    out: dict = {"traced": len(stages["queue"])}
    for k, v in stages.items():
        p50, p99 = _pct(v)
        out[f"{k}_p50_ms"], out[f"{k}_p99_ms"] = round(p50, 2), round(p99, 2)
        out[f"{k}_max_ms"] = round(max(v, default=0), 2)
    # the local alert log keeps 8 windows of evidence per raised alert up to its cap (16 MiB):
    # the raises after the first ``cap`` ones each evict the oldest evidence first
    cap = tracer.evidence_cap
    log_ms = stages["alert_log"]
    if cap and len(log_ms) > cap:
        (b50, b99), (a50, a99) = _pct(log_ms[:cap]), _pct(log_ms[cap:])
        out.update(evidence_cap_raises=cap, alert_log_before_cap_p50_ms=round(b50, 2),
                   alert_log_before_cap_p99_ms=round(b99, 2), alert_log_at_cap_p50_ms=round(a50, 2),
                   alert_log_at_cap_p99_ms=round(a99, 2))
    worst.sort(key=lambda w: -w[0])
    out["slowest5"] = [{"total_ms": round(t, 1), **parts} for t, parts in worst[:5]]
    durations = [(e - s) * 1e3 for s, e, _ in tracer.batches]
    sizes = [n for _, _, n in tracer.batches]
    b50, b99 = _pct(durations)
    out.update(batches=len(durations), batch_p50_ms=round(b50, 2), batch_p99_ms=round(b99, 2),
               batch_max_ms=round(max(durations, default=0), 2), batch_blocks_median=float(np.median(sizes)),
               batch_blocks_max=max(sizes, default=0))
    return out


def _load() -> str:
    """The 1/5/15-minute load averages (the VM is shared: other work shows here)."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _stalls() -> dict[str, float]:
    """Linux pressure-stall totals (s): time some task waited for the disk / for a CPU."""
    out = {}
    for what in ("io", "cpu"):
        try:
            with open(f"/proc/pressure/{what}") as f:
                out[what] = int(f.readline().split("total=")[1]) / 1e6
        except (OSError, IndexError, ValueError):
            pass
    return out


def _stall_share(before: dict[str, float], seconds: float) -> dict[str, float]:
    """% of the run's wall time during which some task stalled on io / cpu (PSI "some")."""
    after = _stalls()
    return {f"{k}_stall_pct": round(100 * (after[k] - before[k]) / seconds, 1) for k in before if k in after}


def _print(title: str, info: dict) -> None:
    print(f"\n{title}:")
    for k, v in info.items():
        print(f"  {k}: {v}")


@pytest.mark.parametrize("mode", ["plain", "traced"])
def test_alert_latency(benchmark, mosquitto, subscriber, tmp_path, mode):  # noqa: F811
    info = benchmark.pedantic(_alert_latency_run, args=(mosquitto, tmp_path, subscriber, mode == "traced"),
                              rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    _print(f"alert latency ({mode}): window completion -> subscriber, raised alerts", info)
    assert info["raised"] >= 200, info
    assert info["received_unique"] == info["alerts_committed"], "an alert did not reach the subscriber"


# ------------------------------------------------------------------------ throughput
def _publisher(broker, outbox: Outbox) -> Publisher:
    cfg = default_config(broker={"host": broker.host, "port": broker.port})
    topics = Topics(cfg.broker.topic_prefix, cfg.device.site, cfg.device.id)
    return Publisher(cfg.broker, topics, outbox, lambda: {"schema": 1, "state": "online", "time": time.time()})


def _topic(kind: str) -> str:
    cfg = default_config()
    return Topics(cfg.broker.topic_prefix, cfg.device.site, cfg.device.id).of(kind)


BACKLOG = 5000


def _drain_run(broker, tmp_path: Path, make_subscriber, kind: str) -> dict:
    load_before = _load()
    outbox = Outbox(tmp_path / "outbox", 512 << 20)
    t = time.perf_counter()
    for _ in range(BACKLOG):
        outbox.commit(kind, PAYLOADS[kind])
    commit_s = time.perf_counter() - t
    sub = make_subscriber(broker, _topic(kind))
    pub = _publisher(broker, outbox)
    stop = threading.Event()
    t0, stalls = time.time(), _stalls()
    runner = threading.Thread(target=pub.run, args=(stop,), name="bench-publisher")
    runner.start()
    try:
        complete = sub.wait_for(lambda s: len(s.seqs) >= BACKLOG, timeout=100)
        got = sub.got
        deadline = time.monotonic() + 10
        while outbox.depth() and time.monotonic() < deadline:  # the last PUBACKs
            time.sleep(0.05)
        depth = outbox.depth()
    finally:
        stop.set()
        runner.join(timeout=10)
        outbox.close()
    assert complete, f"the subscriber got {len({r.seq for r in got})} of {BACKLOG}"
    first: dict[int, Received] = {}
    for r in got:
        first.setdefault(r.seq, r)
    times = sorted(r.t for r in first.values())
    nbytes = sum(r.nbytes for r in first.values())
    total_s, steady_s = times[-1] - t0, times[-1] - times[0]
    return {
        "kind": kind, "messages": BACKLOG, "payload_bytes": first[min(first)].nbytes,
        "commit_backlog_s": round(commit_s, 2),
        "drain_s": round(total_s, 3), "first_receipt_after_ms": round((times[0] - t0) * 1e3, 1),
        "msgs_per_s": round(BACKLOG / total_s), "mb_per_s": round(nbytes / total_s / 1e6, 2),
        "msgs_per_s_first_to_last": round((BACKLOG - 1) / steady_s),
        "mb_per_s_first_to_last": round(nbytes / steady_s / 1e6, 2),
        "duplicates": len(got) - len(first), "outbox_depth_after": depth,
        "load_before": load_before, "load_after": _load(), **_stall_share(stalls, time.time() - t0),
    }


@pytest.mark.parametrize("kind", ["alert", "summary"])
def test_backlog_drain(benchmark, mosquitto, subscriber, tmp_path, kind):  # noqa: F811
    info = benchmark.pedantic(_drain_run, args=(mosquitto, tmp_path, subscriber, kind), rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    _print(f"backlog drain: {BACKLOG} x {kind} committed, then published", info)
    assert info["outbox_depth_after"] == 0


STEP_S, CONFIRM_S, START_RATE, FACTOR, MAX_STEPS = 3.0, 10.0, 100.0, 1.5, 14


def _live_step(outbox: Outbox, sub: ProcessSubscriber, kind: str, rate: float, seconds: float) -> dict:
    """Commit at ``rate`` for ``seconds``; what came of it."""
    message = PAYLOADS[kind]
    committed_at: dict[int, float] = {}
    depths: list[int] = []
    n_total = int(rate * seconds)
    t0 = time.time()
    start = time.monotonic()
    for i in range(n_total):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        seq = outbox.commit(kind, message)
        if seq is not None:
            committed_at[seq] = time.time()
        if i % max(1, int(rate / 10)) == 0:
            depths.append(outbox.depth())
    elapsed = time.monotonic() - start
    t_end = time.time()
    depth_end = outbox.depth()
    seqs = set(committed_at)
    last = max(seqs, default=0)
    sub.wait_for(lambda s: last in s.seqs, timeout=15)  # in order (one publisher, QoS 1): the rest is there
    got = [r for r in sub.got if r.seq in seqs]
    first: dict[int, Received] = {}
    for r in got:
        first.setdefault(r.seq, r)
    in_step = sum(1 for r in first.values() if t0 <= r.t <= t_end)
    lat = [(r.t - committed_at[r.seq]) * 1e3 for r in first.values()]
    p50, p99 = _pct(lat)
    produced = len(committed_at) / elapsed
    bound, peak_bound = 0.25 * rate + 2 * MAX_INFLIGHT, 0.5 * rate + 2 * MAX_INFLIGHT
    depth_max = max(depths, default=0)
    return {
        "rate": round(rate), "committed_per_s": round(produced), "received_per_s": round(in_step / (t_end - t0)),
        "depth_max": depth_max, "depth_end": depth_end, "depth_bound": round(bound),
        "lost": len(seqs) - len(first), "latency_p50_ms": round(p50, 2), "latency_p99_ms": round(p99, 2),
        "producer_kept_up": produced >= 0.97 * rate,
        "held": produced >= 0.97 * rate and depth_end <= bound and depth_max <= peak_bound
        and in_step / (t_end - t0) >= 0.95 * rate and len(first) == len(seqs),
    }


def _live_run(broker, tmp_path: Path, make_subscriber, kind: str) -> dict:
    load_before = _load()
    outbox = Outbox(tmp_path / "outbox", 512 << 20)
    sub = make_subscriber(broker, _topic(kind))
    pub = _publisher(broker, outbox)
    started, stalls = time.time(), _stalls()
    stop = threading.Event()
    runner = threading.Thread(target=pub.run, args=(stop,), name="bench-publisher")
    runner.start()
    steps: list[dict] = []
    try:
        assert pub.connected.wait(10), "publisher did not connect"
        rate = START_RATE
        for _ in range(MAX_STEPS):
            step = _live_step(outbox, sub, kind, rate, STEP_S)
            steps.append(step)
            print(f"  {kind} at {step['rate']}/s: {step}")
            deadline = time.monotonic() + 30
            while outbox.depth() and time.monotonic() < deadline:  # each step starts from an empty outbox
                time.sleep(0.05)
            if not step["held"]:
                break
            rate *= FACTOR
        held = [s for s in steps if s["held"]]
        confirm = None
        for step in held[::-1][:2]:  # the last rate that held; if it does not hold for 10 s, the one before
            confirm = _live_step(outbox, sub, kind, step["rate"], CONFIRM_S)
            print(f"  {kind} confirm at {confirm['rate']}/s for {CONFIRM_S:g} s: {confirm}")
            if confirm["held"]:
                break
            deadline = time.monotonic() + 30
            while outbox.depth() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop.set()
        runner.join(timeout=10)
        outbox.close()
    failed = next((s for s in steps if not s["held"]), None)
    limit = None
    if failed is not None:
        why = [] if failed["producer_kept_up"] else ["commit: the producer could not keep the rate"]
        if failed["depth_end"] > failed["depth_bound"] or failed["received_per_s"] < 0.95 * failed["rate"]:
            why.append("publish: the outbox backlog grew")
        limit = "; ".join(why) or "depth peaked above 0.5 s of messages"
    return {
        "kind": kind, "payload_bytes": _wire_bytes(kind),
        "sustained_msgs_per_s": confirm["rate"] if confirm and confirm["held"] else None,
        "confirm_held": bool(confirm and confirm["held"]),
        "sustained_mb_per_s": round(confirm["rate"] * _wire_bytes(kind) / 1e6, 2) if confirm and confirm["held"]
        else None,
        "confirm": confirm, "first_failing": failed, "limited_by": limit,
        "load_before": load_before, "load_after": _load(), **_stall_share(stalls, time.time() - started),
        "steps": steps,
    }


@pytest.mark.parametrize("kind", ["alert", "summary"])
def test_live_rate(benchmark, mosquitto, subscriber, tmp_path, kind):  # noqa: F811
    info = benchmark.pedantic(_live_run, args=(mosquitto, tmp_path, subscriber, kind), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in info.items() if k != "steps"})
    benchmark.extra_info["steps"] = [{k: s[k] for k in ("rate", "committed_per_s", "received_per_s", "depth_end",
                                                        "latency_p50_ms", "latency_p99_ms", "held")}
                                     for s in info["steps"]]
    _print(f"live publishing of {kind} messages at a steady rate", {k: v for k, v in info.items() if k != "steps"})
    assert info["confirm"] is not None, "not even the first rate held"
