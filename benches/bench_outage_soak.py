"""The outbox through a 10-minute broker outage at a 1 MB cap (issue #7, acceptance: "Outbox
capped at 1 MB through a 10-minute outage: the policy holds (alerts survive, summaries
thinned), counts reported").

The agent runs in real time on its emulator source (inner-race fault, 8 channels: a
drivetrain's accelerometers), summaries every 5 s, a 1 MB outbox, the daemon's reconnect
backoff (1-60 s, full jitter), against a real mosquitto with a fleet-side subscriber
(persistent session). Once two summaries are acknowledged the broker is stopped for
``OUTAGE_S`` (600 s), then started again; the agent reconnects and drains; it runs
``AFTER_S`` (60 s) more with the link up. tests/test_outage_cap.py does the same in about a
minute (16 channels at 2x, summaries every second); this is the real duration, and the same
checks (``check_policy``: alerts all received and none evicted, summaries evicted and the
survivors spread evenly over the outage, seq accounting, duplicates only QoS 1 resends, the
evictions reported in the next summary; the files within the cap between commits during the
outage), then ``check_cap``: the files never over the cap, at any instant and in every phase
(outage, drain, link up again): outbox.py's stated bound, a hard assertion.

One round (``benchmark.pedantic``, rounds=1): its time is the whole run. Figures in
``extra_info`` (and printed): bytes committed during the outage and their multiple of the cap,
the largest size of the files (database + WAL + shm) per phase, at any instant and between
commits, evictions by kind, alerts committed / received, surviving summaries and their gaps,
reconnect and drain times after the restart.

Environment: ``EDGE_SOAK_OUTAGE_S`` (default 600), ``EDGE_SOAK_SUMMARY_S`` (5),
``EDGE_SOAK_CHANNELS`` (8), ``EDGE_SOAK_SPEEDUP`` (1), ``EDGE_SOAK_AFTER_S`` (60),
``EDGE_SOAK_RECONNECT_MAX_S`` (60, the daemon's default). A quick run must still commit 3x the
cap during the outage, e.g. (the test's load) ``EDGE_SOAK_OUTAGE_S=60 EDGE_SOAK_SUMMARY_S=1
EDGE_SOAK_CHANNELS=16 EDGE_SOAK_SPEEDUP=2 EDGE_SOAK_AFTER_S=10 EDGE_SOAK_RECONNECT_MAX_S=5``.
Run: .venv/bin/python -m pytest benches/bench_outage_soak.py -o python_files='bench_*.py' --benchmark-only -s
(part of `make bench`: about 12 minutes).
"""
from __future__ import annotations

import json
import os

import pytest

from edge_agent.local_broker import LocalBroker, find_mosquitto
from tests.conftest import Subscriber
from tests.test_outage_cap import check_cap, check_policy, run_outage

OUTAGE_S = float(os.environ.get("EDGE_SOAK_OUTAGE_S", "600"))
SUMMARY_S = float(os.environ.get("EDGE_SOAK_SUMMARY_S", "5"))
CHANNELS = int(os.environ.get("EDGE_SOAK_CHANNELS", "8"))
SPEEDUP = float(os.environ.get("EDGE_SOAK_SPEEDUP", "1"))
AFTER_S = float(os.environ.get("EDGE_SOAK_AFTER_S", "60"))
RECONNECT_MAX_S = float(os.environ.get("EDGE_SOAK_RECONNECT_MAX_S", "60"))


@pytest.mark.broker
@pytest.mark.timeout(int(OUTAGE_S + AFTER_S + RECONNECT_MAX_S + 300))
def test_outbox_through_a_10_minute_outage(benchmark, tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed: scripts/ensure-system.sh mosquitto")
    broker = LocalBroker(tmp_path / "mosquitto")
    broker.start()
    sub = None
    try:
        sub = Subscriber(broker.host, broker.port, "pdm/+/+/+", clean_session=False, client_id="fleet-side")
        runs = []

        def run() -> None:
            runs.append(run_outage(tmp_path, broker, sub, channels=CHANNELS, speedup=SPEEDUP,
                                   summary_interval_s=SUMMARY_S, reconnect_max_s=RECONNECT_MAX_S,
                                   outage_s=OUTAGE_S, after_s=AFTER_S))

        benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        if sub is not None:
            sub.close()
        broker.stop()
    fig = runs[0]
    # the figures first (extra_info and printed), then the checks
    over = {k: (v["max"], v["max_between_commits"], v["samples_over_cap"], v["samples"]) for k, v in fig.disk.items()}
    benchmark.extra_info.update(
        outage_s=round(fig.outage_s, 1), summary_interval_s=SUMMARY_S, channels=CHANNELS, speedup=SPEEDUP,
        cap_bytes=fig.cap_bytes,
        bytes_committed_outage=sum(fig.seen[s][1] for s in range(fig.c_before + 1, fig.c_restart + 1) if s in fig.seen),
        disk=fig.disk, committed=fig.committed, evicted=fig.evicted, reconnect_s=round(fig.reconnect_s, 2),
        drain_s=round(fig.drain_s, 2))
    print(f"\nfiles by phase (max any instant, max between commits/acks, samples over the cap, samples): {over}")
    figures = check_policy(fig)
    benchmark.extra_info.update({k: v for k, v in figures.items() if k not in benchmark.extra_info})
    print("\n".join(f"  {k}: {json.dumps(v, default=str)}" for k, v in figures.items()))
    check_cap(fig)
