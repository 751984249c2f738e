"""The persistent outbox (edge_agent/outbox.py, issue #7): what a commit costs the processing
thread, and what the publisher's side (pending, ack on PUBACK) costs, on a real file.

Each round is one call, so the rounds are the latency distribution; ``p50_us`` / ``p99_us``
are in ``extra_info`` and printed. The files are in a pytest tmp dir on the machine's own
disk (on the 2-core VM of RESULTS.md: ext4 on a virtio disk, so an fsync is cheap compared
with an SD card; see RESULTS.md).

* ``commit-alert[FULL|NORMAL]``: one ~700-byte alert into an outbox far from its cap.
  FULL is what the agent uses (the WAL is fsynced before commit returns); NORMAL, the
  alternative the module docstring rejects, for the price of that choice.
* ``commit-summary``: one ~26 kB summary (sketches in base64), FULL.
* ``commit-at-cap``: summaries into a 1 MB outbox that is full: every commit also thins
  (evicts), and checkpoints first when its WAL would not fit beside the database (nearly every
  commit at this cap); the files are sampled around every statement (tests/test_outbox.py's
  ``FileWatch``) and must stay within the cap at every instant.
* ``ack``: the delete on PUBACK (synchronous NORMAL), in a 64 MB outbox (a checkpoint every
  ~50 acks); ``ack-at-cap``: the same in a full 1 MB outbox of alerts (the drain after an
  outage at that cap: a checkpoint every second ack). ``pending-20``: the publisher's read.
Run: .venv/bin/python -m pytest benches/bench_outbox.py -o python_files='bench_*.py' --benchmark-only
"""
from __future__ import annotations

import base64
import json
import os

import pytest

from edge_agent.outbox import Outbox

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


def _percentiles(benchmark, what: str) -> None:
    data = benchmark.stats.stats.sorted_data
    p50, p99 = data[len(data) // 2] * 1e6, data[min(len(data) - 1, int(len(data) * 0.99))] * 1e6
    benchmark.extra_info.update(p50_us=round(p50, 1), p99_us=round(p99, 1))
    print(f"\n{what}: p50 {p50:.0f} us, p99 {p99:.0f} us, {1 / benchmark.stats.stats.mean:.0f} calls/s "
          f"({len(data)} rounds, one call each)")


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_commit_alert(benchmark, tmp_path, sync):
    ob = Outbox(tmp_path, 64 << 20, synchronous=sync)
    benchmark.pedantic(ob.commit, args=("alert", ALERT), rounds=2000, iterations=1, warmup_rounds=50)
    _percentiles(benchmark, f"commit alert ({len(json.dumps(ALERT))} B), synchronous {sync}")
    ob.close()


def test_commit_summary(benchmark, tmp_path):
    ob = Outbox(tmp_path, 256 << 20)
    benchmark.pedantic(ob.commit, args=("summary", SUMMARY), rounds=1000, iterations=1, warmup_rounds=20)
    _percentiles(benchmark, f"commit summary ({len(json.dumps(SUMMARY)) / 1000:.1f} kB)")
    ob.close()


def test_commit_at_cap(benchmark, tmp_path):
    from tests.test_outbox import FileWatch

    ob = Outbox(tmp_path, 1 << 20)
    for i in range(200):  # fill it: from here on every commit evicts
        ob.commit("alert" if i % 10 == 0 else "summary", SUMMARY if i % 10 else ALERT)
    before = sum(ob.evicted.values())
    watch = ob._conn = FileWatch(ob._conn, ob.path, ob)
    benchmark.pedantic(ob.commit, args=("summary", SUMMARY), rounds=500, iterations=1, warmup_rounds=10)
    assert watch.peak <= 1 << 20 and sum(ob.evicted.values()) > before and ob.overruns == 0
    frames = sorted(w for w, _ in watch.frames)
    benchmark.extra_info.update(peak_bytes=watch.peak, wal_frames_p50=frames[len(frames) // 2],
                                wal_frames_max=frames[-1])
    _percentiles(benchmark, f"commit summary into a full 1 MB outbox (evicting; {ob.depth()} held; files at most "
                            f"{watch.peak} B; WAL frames a commit p50 {frames[len(frames) // 2]}, max {frames[-1]})")
    ob._conn = watch._conn
    ob.close()


def test_ack(benchmark, tmp_path):
    ob = Outbox(tmp_path, 64 << 20)
    ids = iter([ob.commit("alert", ALERT) for _ in range(2100)])
    benchmark.pedantic(lambda: ob.ack(next(ids)), rounds=2000, iterations=1, warmup_rounds=50)
    _percentiles(benchmark, "ack (delete on PUBACK)")
    ob.close()


def test_ack_at_cap(benchmark, tmp_path):
    ob = Outbox(tmp_path, 1 << 20)
    for _ in range(3000):  # full of alerts: the oldest go
        ob.commit("alert", ALERT)
    ids = iter([item.id for item in ob.pending(10**6)])
    n = ob.depth()
    benchmark.pedantic(lambda: ob.ack(next(ids)), rounds=n - 60, iterations=1, warmup_rounds=50)
    assert ob.size_bytes <= 1 << 20
    _percentiles(benchmark, f"ack in a full 1 MB outbox ({n} alerts held)")
    ob.close()


def test_pending_20(benchmark, tmp_path):
    ob = Outbox(tmp_path, 64 << 20)
    for _ in range(2000):
        ob.commit("alert", ALERT)
    skip = set(range(1, 11))
    benchmark.pedantic(ob.pending, args=(20, skip), rounds=2000, iterations=1, warmup_rounds=50)
    _percentiles(benchmark, "pending(20) with 10 in flight, 2000 held")
    ob.close()
