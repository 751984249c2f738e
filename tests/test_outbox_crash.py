"""The outbox against real crashes and real write errors, in child processes.

* SIGKILL: a child commits alerts and summaries in a loop while a second thread of it reads
  and acks (the publisher's pattern), printing every seq after ``commit`` returned and every
  ack before and after ``ack``; it is SIGKILLed mid-stream, several times over the same
  outbox. After each kill: ``PRAGMA integrity_check`` is ok, every seq reported committed is
  still there or was being acked, the seqs are gapless (every seq ever assigned is held,
  acked or counted as evicted), and the next commit gets the next seq.
* A write error: the child's file-size limit (RLIMIT_FSIZE, the kernel refuses the write with
  EFBIG, as it would with ENOSPC on a full card) is lowered under the outbox mid-stream and
  raised again; the child must go on, lose nothing it committed, and commit what it held
  afterwards in order.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.outbox import FILENAME, Outbox

CHILD = r"""
import sys, threading, time
from edge_agent.outbox import Outbox

ob = Outbox(sys.argv[1], int(sys.argv[2]))
out = threading.Lock()

def say(*words):
    with out:
        sys.stdout.write(" ".join(map(str, words)) + "\n")
        sys.stdout.flush()

def publisher():  # reads and acks like the publisher and paho's thread
    while True:
        for item in ob.pending(4)[:2]:
            say("a", item.id)  # about to ack
            ob.ack(item.id)
            say("A", item.id)  # acked
        time.sleep(0.002)

say("READY")
threading.Thread(target=publisher, daemon=True).start()
i = 0
while True:
    kind = "summary" if i % 3 == 0 else "alert"
    seq = ob.commit(kind, {"i": i, "pad": "x" * (4000 if kind == "summary" else 300)})
    say("C", seq)
    i += 1
"""


def _run_and_kill(state: Path, max_bytes: int, commits: int) -> dict[str, set[int]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(state), str(max_bytes)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, set[int]] = {"C": set(), "a": set(), "A": set()}
    try:
        first = proc.stdout.readline().strip()
        if first != "READY":
            proc.kill()
            pytest.fail(f"the child did not start: {first!r} {proc.stderr.read()}")
        deadline = time.monotonic() + 30
        while len(seen["C"]) < commits:
            assert time.monotonic() < deadline, "the child is too slow"
            tag, n = proc.stdout.readline().split()
            seen[tag].add(int(n))
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: commits and acks are going on
        for line in proc.stdout:  # what it printed before it died
            if line.strip():
                tag, n = line.split()
                seen[tag].add(int(n))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return seen


def _check(state: Path, seen: dict[str, set[int]], acking: set[int], evicts_now: bool, evicted_ever: bool) -> int:
    """Check the outbox after a kill; ``acking``: every id any child was about to ack;
    ``evicts_now``: this round's cap makes the outbox evict (so a committed seq may have
    gone that way: counted)."""
    with sqlite3.connect(state / FILENAME) as c:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = c.execute("SELECT id, payload FROM items").fetchall()
        meta = dict(c.execute("SELECT key, value FROM meta"))
    c.close()
    held = {seq for seq, _ in rows}
    assert all(json.loads(payload)["seq"] == seq for seq, payload in rows)
    next_seq = meta["next_seq"]
    assigned = set(range(1, next_seq))
    assert held <= assigned
    if not evicts_now:
        assert seen["C"] <= held | seen["a"], "a seq reported committed is lost"
    assert not (seen["A"] & held), "an acked message came back"
    assert max(seen["C"]) < next_seq
    acked = sum(v for k, v in meta.items() if k.startswith("acked."))
    evicted = sum(v for k, v in meta.items() if k.startswith("evicted."))
    # every seq ever assigned is accounted for: held, acked or evicted (no gap, nothing twice)
    assert len(held) + acked + evicted == next_seq - 1
    if not evicted_ever:  # and, seq by seq: each one is still held or was being acked
        assert evicted == 0 and assigned <= held | acking
    return next_seq


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_committed_and_leaves_no_gap(tmp_path):
    state = tmp_path / "state"
    acking: set[int] = set()
    evicted_ever = False
    rounds = [(64 << 20, 300), (64 << 20, 150), (256 << 10, 400), (64 << 20, 100)]
    for max_bytes, commits in rounds:
        seen = _run_and_kill(state, max_bytes, commits)
        acking |= seen["a"]
        evicts_now = max_bytes < 1 << 20
        evicted_ever = evicted_ever or evicts_now
        next_seq = _check(state, seen, acking, evicts_now, evicted_ever)
    with sqlite3.connect(state / FILENAME) as c:
        assert dict(c.execute("SELECT key, value FROM meta")).get("evicted.summary", 0) > 0  # the small round evicted
    c.close()
    # reopened by the agent's class: the next seq follows on, publishing resumes in order
    ob = Outbox(state, 64 << 20)
    assert ob.commit("alert", {"after": "crash"}) == next_seq
    items = ob.pending(10**6)
    assert [i.seq for i in items] == sorted(i.seq for i in items) and items[-1].seq == next_seq
    ob.close()


CHILD_FSIZE = r"""
import json, logging, os, resource, signal, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
from edge_agent.outbox import Outbox, FILENAME

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
state = sys.argv[1]
ob = Outbox(state, 64 << 20)
committed, held_results = [], []
for i in range(40):
    committed.append(ob.commit("alert", {"i": i, "pad": "a" * 500}))
ob.ack(committed[0])
files = [os.path.join(state, FILENAME + s) for s in ("", "-wal")]
limit = max(os.path.getsize(f) for f in files) + 64 * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # the disk is full from here on
i = 40
while sum(r is None for r in held_results) < 5 and i < 2000:
    r = ob.commit("summary" if i % 2 else "alert", {"i": i, "pad": "s" * 20000})
    (committed if r is not None and not held_results else held_results).append(r)
    i += 1
depth_while_full = ob.depth()
pending_while_full = [it.seq for it in ob.pending(10**6)]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
last = ob.commit("alert", {"i": i, "last": True})
print(json.dumps({"committed": committed, "held_results": held_results, "last": last, "n": i + 1,
                  "depth_while_full": depth_while_full, "pending_while_full": pending_while_full,
                  "write_errors": ob.write_errors, "final": [json.loads(it.payload)["i"] for it in ob.pending(10**6)],
                  "seqs": [it.seq for it in ob.pending(10**6)]}))
ob.close()
"""


def test_a_real_write_error_mid_stream_is_survived_and_nothing_committed_is_lost(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-c", CHILD_FSIZE, str(state)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    ok = [s for s in r["committed"] if s is not None]
    assert ok == list(range(1, len(ok) + 1)) and len(ok) >= 40  # every commit before the error got its seq
    assert None in r["held_results"] and r["write_errors"] >= 1
    assert r["pending_while_full"][:len(ok) - 1] == ok[1:]  # nothing committed was lost meanwhile
    assert r["depth_while_full"] == len(r["pending_while_full"]) + r["held_results"].count(None)
    # after the disk had room again: everything, in order, gapless seqs
    assert r["final"] == list(range(1, r["n"])) and r["seqs"] == list(range(2, r["n"] + 1))
    assert r["last"] == r["n"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "nothing committed is lost" in errors[0], proc.stderr
    assert "writable again" in proc.stderr
    with sqlite3.connect(state / FILENAME) as c:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    c.close()
