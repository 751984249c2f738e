"""The persistent outbox (edge_agent/outbox.py): a real SQLite file in tmp_path in every test.

Ordering, seq persistence across reopen, ack/delete, the eviction policy at the cap and its
counts, the bound on the files at every instant (``FileWatch``: their sizes around every
statement, and each transaction's WAL frames against the outbox's estimate, over varied
loads), the migration of a schema-1 file, the unusable-file and failed-write paths, threads;
and, with the real mosquitto and the real Publisher, delivery across a broker outage and an
agent restart. The SIGKILL and real write-error tests are in test_outbox_crash.py."""
from __future__ import annotations

import faulthandler
import json
import logging
import os
import random
import sqlite3
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_agent.outbox import FILENAME, Outbox


def seqs_in_db(path: Path) -> list[int]:
    with sqlite3.connect(path / FILENAME) as c:
        return [r[0] for r in c.execute("SELECT id FROM items ORDER BY id")]


def disk_bytes(path: Path) -> int:
    return sum(os.stat(p).st_size for p in path.glob(FILENAME + "*") if ".corrupt-" not in p.name)


def payloads(ob: Outbox, kind: str | None = None) -> list[dict]:
    return [json.loads(i.payload) for i in ob.pending(10**6) if kind is None or i.kind == kind]


# -- basics ---------------------------------------------------------------------------------------
def test_seq_is_assigned_at_commit_and_items_stay_until_acked(tmp_path):
    ob = Outbox(tmp_path, 10 << 20)
    seqs = [ob.commit("alert", {"n": i}) for i in range(3)]
    assert seqs == [1, 2, 3]
    items = ob.pending(10)
    assert [json.loads(i.payload) for i in items] == [{"n": i, "seq": i + 1} for i in range(3)]
    assert [i.id for i in items] == [i.seq for i in items] == [1, 2, 3]
    ob.ack(items[0].id)
    assert [i.seq for i in ob.pending(10)] == [2, 3]
    assert [i.seq for i in ob.pending(10, skip={items[1].id})] == [3]
    assert [i.seq for i in ob.pending(1, skip={items[1].id})] == [3]
    assert ob.acked["alert"] == 1 and ob.committed["alert"] == 3 and ob.depth() == 2
    assert seqs_in_db(tmp_path) == [2, 3]  # deleted from the file, not only hidden
    ob.ack(1)  # twice, or an id that was evicted meanwhile: ignored
    ob.ack(999)
    assert ob.acked["alert"] == 1 and seqs_in_db(tmp_path) == [2, 3]
    ob.close()


def test_commit_order_is_kept_across_kinds_and_each_topic_is_in_order(tmp_path):
    ob = Outbox(tmp_path, 10 << 20)
    kinds = ["alert", "summary", "alert", "ack", "summary", "alert", "alert", "summary"] * 5
    for i, kind in enumerate(kinds):
        assert ob.commit(kind, {"i": i}) == i + 1
    items = ob.pending(1000)
    assert [i.kind for i in items] == kinds
    for kind in set(kinds):
        got = [json.loads(i.payload)["i"] for i in items if i.kind == kind]
        assert got == sorted(got) and len(got) == kinds.count(kind)
    # the publisher's pattern: some in flight (skip), a window of 20
    first = ob.pending(20)
    nxt = ob.pending(20, skip={i.id for i in first})
    assert [i.seq for i in first + nxt] == list(range(1, 41))
    ob.close()


def test_seq_and_counters_persist_across_reopen_without_gap(tmp_path):
    ob = Outbox(tmp_path, 10 << 20)
    for i in range(5):
        ob.commit("alert" if i % 2 else "summary", {"i": i})
    for item in ob.pending(2):
        ob.ack(item.id)
    ob.close()
    ob = Outbox(tmp_path, 10 << 20)
    assert [i.seq for i in ob.pending(10)] == [3, 4, 5]
    assert ob.acked == Counter({"summary": 1, "alert": 1})
    assert ob.commit("alert", {}) == 6
    # not closed (a crash): the WAL holds the last commit; the next open recovers it
    ob2 = Outbox(tmp_path, 10 << 20)
    assert [i.seq for i in ob2.pending(10)] == [3, 4, 5, 6]
    assert ob2.commit("summary", {}) == 7
    ob.close()
    ob2.close()
    # every assigned seq is accounted for: still held, acked or evicted
    ob = Outbox(tmp_path, 10 << 20)
    assert ob.depth() + sum(ob.acked.values()) + sum(ob.evicted.values()) == 7
    ob.close()


def test_the_files_are_in_wal_mode_and_synced_fully(tmp_path):
    ob = Outbox(tmp_path, 10 << 20)
    ob.commit("alert", {})
    c = ob._conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ob.ack(1)
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # restored after the NORMAL delete
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    ob.close()


# -- the cap ------------------------------------------------------------------------------------------
def test_eviction_at_the_cap_thins_summaries_keeps_alerts_counts_and_bounds_the_files(tmp_path):
    cap = 1 << 20
    ob = Outbox(tmp_path, cap)
    n = 600
    biggest = 0
    for i in range(n):
        kind = "alert" if i % 6 == 0 else "summary"
        ob.commit(kind, {"i": i, "pad": ("a" * 600) if kind == "alert" else ("s" * 6000)})
        size = disk_bytes(tmp_path)
        assert size == ob.size_bytes
        biggest = max(biggest, size)
    assert biggest <= cap, biggest  # after every commit: database + WAL + shm
    alerts = payloads(ob, "alert")
    summaries = payloads(ob, "summary")
    assert [a["i"] for a in alerts] == list(range(0, n, 6))  # every alert survived
    assert ob.evicted["alert"] == 0
    assert ob.evicted["summary"] == n - n // 6 - len(summaries) > 0
    # thinned, not cut: the kept summaries still span the whole run, evenly
    kept = [s["i"] for s in summaries]
    assert kept[0] < n // 10 and kept[-1] == n - 1
    gaps = [b - a for a, b in zip(kept, kept[1:-1])]
    assert max(gaps) <= 3 * (sum(gaps) / len(gaps)), kept
    assert len(summaries) > 20
    ob.close()
    ob = Outbox(tmp_path, cap)  # the counts survive a restart
    assert ob.evicted["summary"] == n - n // 6 - len(summaries)
    ob.close()


def test_alerts_are_evicted_only_when_nothing_else_is_left_oldest_first(tmp_path):
    cap = 256 * 1024
    ob = Outbox(tmp_path, cap)
    ob.commit("summary", {"pad": "s" * 3000})
    ob.commit("ack", {"alert_id": "x"})
    n = 0
    while ob.evicted["alert"] == 0:
        ob.commit("alert", {"n": n, "pad": "a" * 2000})
        n += 1
        assert n < 1000
    assert ob.evicted == Counter({"summary": 1, "ack": 1, "alert": 1})  # in that order
    held = payloads(ob, "alert")
    assert held[0]["n"] == 1 and held[-1]["n"] == n - 1  # the oldest alert went
    # a summary that needs room (more than the page or so an alert's eviction left free), into
    # an outbox of alerts only, is the one dropped
    ob.commit("summary", {"pad": "s" * 9000})
    assert ob.evicted["summary"] == 2 and payloads(ob, "summary") == []
    assert [a["n"] for a in payloads(ob, "alert")][-1] == n - 1
    assert ob.size_bytes <= cap
    ob.close()


def test_the_newest_message_is_kept_even_when_larger_than_the_cap(tmp_path, caplog):
    cap = 200 * 1024
    ob = Outbox(tmp_path, cap)
    ob.commit("alert", {"pad": "a" * 1000})
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        seq = ob.commit("alert", {"pad": "a" * 400_000})
    assert [i.seq for i in ob.pending(10)] == [seq]
    assert ob.evicted == Counter({"alert": 1})
    assert "larger than the budget" in caplog.text
    ob.commit("alert", {"pad": "a" * 100})  # the big one goes, the file shrinks back
    assert ob.size_bytes <= cap and ob.evicted == Counter({"alert": 2})
    # a summary that big, with an alert there, is itself the one evicted
    ob.commit("summary", {"pad": "s" * 400_000})
    assert [i.kind for i in ob.pending(10)] == ["alert"] and ob.size_bytes <= cap
    ob.close()


def test_a_lower_cap_at_start_shrinks_the_outbox(tmp_path):
    ob = Outbox(tmp_path, 8 << 20)
    for i in range(400):
        ob.commit("summary" if i % 4 else "alert", {"i": i, "pad": "x" * 8000})
    ob.close()
    assert disk_bytes(tmp_path) > 2 << 20
    ob = Outbox(tmp_path, 1 << 20)
    assert disk_bytes(tmp_path) <= 1 << 20
    assert ob.evicted["alert"] == 0 and ob.evicted["summary"] > 0
    assert len(payloads(ob, "alert")) == 100
    ob.close()


# -- the cap at every instant ---------------------------------------------------------------------------
class FileWatch:
    """The outbox's connection, with the three files' sizes taken (os.stat) before and after
    every statement. In WAL mode the files change only inside a statement of this connection
    (the WAL at COMMIT, the database file and the WAL at a checkpoint), and within one the
    database only grows up to its size after it and the WAL only grows (COMMIT) or only
    shrinks after the database is written (checkpoint): so the sum of each file's larger size,
    before or after, bounds every instant. Per COMMIT, the WAL frames the transaction wrote
    (``mxFrame`` of the wal-index header in -shm, https://www.sqlite.org/walformat.html; from 0
    when the commit restarted the WAL, which changes its salt) are recorded beside the outbox's
    estimate for it."""

    def __init__(self, conn, path: Path, outbox: Outbox | None = None):
        self._conn = conn
        self.outbox = outbox
        self.paths = [f"{path}{s}" for s in ("", "-wal", "-shm")]
        self.peak = 0
        self.peak_at: tuple = ()
        self.max_db = 0
        self.frames: list[tuple[int, int]] = []  # (written, estimated) per COMMIT

    def _sizes(self) -> list[int]:
        out = []
        for p in self.paths:
            try:
                out.append(os.stat(p).st_size)
            except OSError:
                out.append(0)
        return out

    def _wal_index(self) -> tuple[int, bytes]:
        """(mxFrame, salt) of the wal-index header."""
        with open(self.paths[2], "rb") as f:
            head = f.read(48)
        return struct.unpack("=I", head[16:20])[0], head[32:40]

    def execute(self, sql, *args):
        commit = sql.startswith("COMMIT") and self.outbox is not None
        mx, salt = self._wal_index() if commit else (0, b"")
        before = self._sizes()
        result = self._conn.execute(sql, *args)
        after = self._sizes()
        peak = sum(max(b, a) for b, a in zip(before, after))
        self.max_db = max(self.max_db, before[0], after[0])
        if peak > self.peak:
            self.peak, self.peak_at = peak, (sql, before, after)
        if commit:
            mx_after, salt_after = self._wal_index()
            written = mx_after - mx if salt_after == salt else mx_after
            self.frames.append((written, getattr(self.outbox, "_tx_estimate", 0)))
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _workload(name: str):
    """(cap, [(kind, payload bytes)], ack probability): the agent's (summaries of ~60 kB among
    alerts), smaller and larger caps, sizes that grow, shrink or are all over the place."""
    rnd = random.Random(name)
    if name == "agent-1MiB":
        return 1 << 20, [("summary", rnd.randint(55_000, 62_000)) if i % 8 == 0 else ("alert", rnd.randint(500, 2000))
                         for i in range(600)], 0.1
    if name == "alerts-and-acks-256KiB":
        return 256 << 10, [(rnd.choice(["alert", "ack"]), rnd.randint(100, 3000)) for _ in range(1500)], 0.1
    if name == "random-1MiB":
        return 1 << 20, [(rnd.choice(["alert", "ack", "summary"]), int(rnd.expovariate(1 / 20_000)))
                         for _ in range(1000)], 0.1
    if name == "growing-then-shrinking-1MiB":
        return 1 << 20, [("summary", 5000 + 200 * min(i, 800 - i)) if i % 3 else ("alert", 800)
                         for i in range(800)], 0.05
    if name == "summaries-8MiB":
        return 8 << 20, [("summary", rnd.randint(40_000, 90_000)) if i % 4 else ("alert", rnd.randint(300, 6000))
                         for i in range(700)], 0.05
    raise KeyError(name)


@pytest.mark.parametrize("name", ["agent-1MiB", "alerts-and-acks-256KiB", "random-1MiB", "growing-then-shrinking-1MiB",
                                  "summaries-8MiB"])
def test_the_files_stay_within_the_cap_at_every_instant_commits_acks_and_checkpoints_included(tmp_path, name):
    cap, load, ack_p = _workload(name)
    rnd = random.Random(1)
    ob = Outbox(tmp_path, cap)
    watch = ob._conn = FileWatch(ob._conn, ob.path, ob)
    for i, (kind, n) in enumerate(load):
        ob.commit(kind, {"i": i, "pad": "x" * n})
        if rnd.random() < ack_p:  # the publisher acks what it sent, oldest first
            for item in ob.pending(rnd.randint(1, 3)):
                ob.ack(item.id)
    assert sum(ob.evicted.values()) > 0  # the cap was reached
    assert ob.evicted["alert"] == 0 or name != "agent-1MiB"
    for item in ob.pending(10**6):  # the link is back: everything is acked
        ob.ack(item.id)
    assert ob.depth() == 0
    assert watch.peak <= cap, (watch.peak, watch.peak_at)
    assert watch.max_db <= ob.db_budget_pages * 4096
    over = [(w, e) for w, e in watch.frames if w > e]
    assert not over, f"transactions that wrote more WAL frames than estimated: {over[:10]}"
    assert ob.overruns == 0
    ob._conn = watch._conn
    ob.close()


def test_a_summary_committed_at_the_cap_writes_its_own_pages_and_a_few_more(tmp_path):
    """Thinning updates the kept summary's weight in its own table, not in the summary's row
    (which SQLite would rewrite whole: 32 frames for a 59 kB summary), and a deleted summary's
    pages go to the freelist unwritten (secure_delete = FAST)."""
    ob = Outbox(tmp_path, 1 << 20)
    watch = ob._conn = FileWatch(ob._conn, ob.path, ob)
    for i in range(60):
        ob.commit("summary", {"i": i, "pad": "s" * 59_000})
    assert ob.evicted["summary"] > 20
    at_cap = [w for w, _ in watch.frames[-30:]]
    assert max(at_cap) <= 15 + 12, at_cap  # 15 pages of its own; was 51-57 with schema 1
    weights = dict(ob._conn.execute("SELECT id, weight FROM weights").fetchall())
    assert weights and max(weights.values()) >= 2 and sum(weights.values()) + 1 >= 60 - ob.evicted["summary"]
    ob._conn = watch._conn
    ob.close()


def test_a_transaction_larger_than_estimated_is_caught_after_its_commit(tmp_path, monkeypatch, caplog):
    """The safety net: with estimates far too low, the WAL goes over the budget; the commit
    that did it counts an overrun, logs it and checkpoints, so the files are back under the
    cap when it returns."""
    import edge_agent.outbox as outbox_mod

    ob = Outbox(tmp_path, 1 << 20)
    monkeypatch.setattr(outbox_mod, "TX_FRAMES", -40)
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        for i in range(40):
            ob.commit("summary", {"i": i, "pad": "s" * 59_000})
            assert ob.size_bytes <= 1 << 20
    assert ob.overruns > 0 and "overrun" in caplog.text
    ob.close()


def _v1_outbox(path: Path, rows: list[tuple[int, str, int, bytes]], meta: dict[str, int]) -> None:
    """An outbox as schema 1 made it (edge_agent 2026-11-22), written with sqlite3 alone."""
    path.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path / FILENAME, isolation_level=None)
    c.execute("PRAGMA page_size = 4096")
    c.execute("PRAGMA auto_vacuum = INCREMENTAL")
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("BEGIN IMMEDIATE")
    c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
              "weight INTEGER NOT NULL DEFAULT 1, payload BLOB NOT NULL)")
    c.execute("CREATE INDEX items_kind ON items (kind, id, weight)")
    c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    c.executemany("INSERT INTO items (id, kind, weight, payload) VALUES (?, ?, ?, ?)", rows)
    c.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    c.execute("PRAGMA user_version = 1")
    c.execute("COMMIT")
    c.close()


def _v1_rows(n: int, summary_bytes: int, first_seq: int = 1) -> list[tuple[int, str, int, bytes]]:
    rows = []
    for k in range(n):
        seq, kind = first_seq + 2 * k, "alert" if k % 4 == 0 else "summary"
        weight = 1 + (k % 3) if kind == "summary" else 1  # thinned before: weights 1, 2, 3
        pad = "a" * 700 if kind == "alert" else "s" * summary_bytes
        rows.append((seq, kind, weight, json.dumps({"k": k, "pad": pad, "seq": seq}, separators=(",", ":")).encode()))
    return rows


def test_a_schema_1_outbox_is_migrated_in_place_items_seqs_and_counters_intact(tmp_path, caplog):
    rows = _v1_rows(40, 3000, first_seq=101)
    meta = {"next_seq": 181, "evicted.summary": 17, "evicted.ack": 2, "acked.alert": 31, "acked.summary": 9}
    _v1_outbox(tmp_path, rows, meta)
    with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
        ob = Outbox(tmp_path, 10 << 20)
    assert "migrated" in caplog.text and "moved aside" not in caplog.text
    assert ob.resets == 0 and not _aside(tmp_path)  # never taken for a corrupt file
    assert ob._conn.execute("PRAGMA user_version").fetchone()[0] == 2
    items = ob.pending(10**6)
    assert [(i.seq, i.kind, i.payload) for i in items] == [(s, k, p) for s, k, _, p in rows]  # nothing lost
    assert ob.evicted == Counter({"summary": 17, "ack": 2}) and ob.acked == Counter({"alert": 31, "summary": 9})
    assert dict(ob._conn.execute("SELECT id, weight FROM weights").fetchall()) == {s: w for s, _, w, _ in rows if w > 1}
    assert ob.commit("alert", {"after": "migration"}) == 181  # seq goes on
    ob.ack(101)
    assert ob.acked["alert"] == 32 and ob.depth() == 40
    ob.close()
    ob = Outbox(tmp_path, 10 << 20)  # and it opens as schema 2 from now on
    assert ob.resets == 0 and ob.depth() == 40 and ob.commit("alert", {}) == 182
    ob.close()


def test_a_full_schema_1_outbox_is_migrated_and_brought_within_the_cap_at_every_instant(tmp_path, monkeypatch):
    """A 1 MiB outbox filled by schema 1 (its database's share: 232 pages) has more than the
    database's share now (204 pages with 56 kB summaries): at start it is migrated, then
    summaries are thinned and pages given back in steps that each fit the budget. Alerts
    stay; counts add up."""
    rows = _v1_rows(22, 56_000)
    _v1_outbox(tmp_path, rows, {"next_seq": 50, "evicted.summary": 5})
    assert 220 * 4096 <= (tmp_path / FILENAME).stat().st_size <= 232 * 4096
    connect = sqlite3.connect
    watches = []

    def watched(*args, **kwargs):
        watches.append(FileWatch(connect(*args, **kwargs), args[0]))
        return watches[-1]

    monkeypatch.setattr(sqlite3, "connect", watched)
    ob = Outbox(tmp_path, 1 << 20)
    monkeypatch.setattr(sqlite3, "connect", connect)
    assert watches[0].peak <= 1 << 20, (watches[0].peak, watches[0].peak_at)
    assert ob.resets == 0 and ob.evicted["summary"] > 5 and ob.size_bytes <= 1 << 20
    held = {i.seq: i.payload for i in ob.pending(10**6)}
    assert all(held[s] == p for s, _, _, p in rows if s in held)
    assert {s for s, k, _, _ in rows if k == "alert"} <= set(held)  # every alert kept
    assert len(held) + ob.evicted["summary"] - 5 == len(rows)
    ob._conn = watches[0]._conn
    ob.close()


# -- unusable files ----------------------------------------------------------------------------------
def _aside(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_outbox_continues_seq(tmp_path, caplog):
    ob = Outbox(tmp_path, 10 << 20)
    for _ in range(5):
        ob.commit("alert", {})
    ob.close()
    (tmp_path / FILENAME).write_bytes(b"this is not SQLite" * 500)
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
        ob = Outbox(tmp_path, 10 << 20)
    lines = [r for r in caplog.records if r.name == "edge_agent.outbox"]
    assert len(lines) == 1 and "moved aside" in lines[0].getMessage() and "fresh outbox" in lines[0].getMessage()
    assert _aside(tmp_path) and _aside(tmp_path)[0].startswith(FILENAME + ".corrupt-")
    assert ob.depth() == 0 and ob.resets == 1 and ob.evicted["corrupt_reset"] == 1
    seq = ob.commit("alert", {})
    assert seq > 5  # above every seq ever used: the fleet sees a gap, never a reused number
    ob.close()
    ob = Outbox(tmp_path, 10 << 20)  # the reset count survives a restart; seq goes on
    assert ob.resets == 1 and ob.commit("alert", {}) == seq + 1
    ob.close()


def test_a_damaged_database_is_moved_aside(tmp_path, caplog):
    ob = Outbox(tmp_path, 10 << 20)
    for i in range(300):
        ob.commit("summary", {"i": i, "pad": "x" * 3000})
    ob.close()
    path = tmp_path / FILENAME
    with open(path, "r+b") as f:  # scribble over pages in the middle of the file
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(3 * 4096))
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
        ob = Outbox(tmp_path, 10 << 20)
    assert "moved aside" in caplog.text and ob.resets == 1 and ob.depth() == 0
    assert ob.commit("alert", {}) > 300
    ob.close()


def test_an_unopenable_file_is_moved_aside(tmp_path):
    (tmp_path / FILENAME).mkdir()  # e.g. a botched restore: something that is not a file
    (tmp_path / FILENAME / "x").write_text("x")
    ob = Outbox(tmp_path, 10 << 20)
    assert ob.resets == 1 and ob.commit("alert", {}) >= 1
    assert (tmp_path / _aside(tmp_path)[0] / "x").is_file()  # kept, for whoever looks
    ob.close()


def test_an_unknown_schema_is_moved_aside_and_only_two_aside_sets_are_kept(tmp_path):
    for round_ in range(4):
        with sqlite3.connect(tmp_path / FILENAME) as c:
            c.execute("PRAGMA user_version = 99")
            c.execute("CREATE TABLE IF NOT EXISTS something_else (x)")
        ob = Outbox(tmp_path, 10 << 20)
        assert ob.resets == round_ + 1
        ob.close()
        (tmp_path / FILENAME).unlink()
        time.sleep(0.01)
    assert len([n for n in _aside(tmp_path) if not n.endswith(("-wal", "-shm"))]) == 2


def test_an_unwritable_storage_dir_is_a_startup_error_not_a_reset(tmp_path):
    from edge_agent.errors import StartupError

    ob = Outbox(tmp_path, 10 << 20)
    ob.commit("alert", {})
    ob.close()
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes")
    os.chmod(tmp_path / FILENAME, 0o400)
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(StartupError, match="outbox"):
            Outbox(tmp_path, 10 << 20)
    finally:
        os.chmod(tmp_path, 0o700)
        os.chmod(tmp_path / FILENAME, 0o600)
    assert not _aside(tmp_path)


# -- failed writes (simulated: the one place with a stand-in connection) ---------------------------
class FullDisk:
    """The real connection, except that while ``full`` every INSERT/DELETE fails as SQLite
    fails on a full disk."""

    def __init__(self, conn):
        self._conn = conn
        self.full = True

    def execute(self, sql, *args):
        if self.full and sql.lstrip().upper().startswith(("INSERT", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_full_disk_is_logged_held_in_memory_and_committed_later_in_order(tmp_path, caplog):
    ob = Outbox(tmp_path, 10 << 20)
    assert [ob.commit("alert", {"n": n}) for n in range(3)] == [1, 2, 3]
    real = ob._conn
    ob._conn = disk = FullDisk(real)
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
        results = [ob.commit("summary" if n % 2 else "alert", {"n": n}) for n in range(3, 8)]
        ob.ack(1)  # PUBACK while the disk is full: retried later; not handed out again meanwhile
    assert results == [None] * 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "nothing committed is lost" in errors[0].getMessage()
    assert ob.write_errors >= 6
    assert [i.seq for i in ob.pending(10)] == [2, 3]  # committed ones intact, the acked one hidden
    assert ob.depth() == 2 + 5
    assert seqs_in_db(tmp_path) == [1, 2, 3]
    disk.full = False  # room again: the next commit writes the held ones first, in order
    assert ob.commit("alert", {"n": 8}) == 9
    got = payloads(ob)
    assert [m["n"] for m in got] == list(range(1, 9)) and [m["seq"] for m in got] == list(range(2, 10))
    assert seqs_in_db(tmp_path) == list(range(2, 10)) and ob.acked["alert"] == 1
    ob._conn = real
    ob.close()


def test_held_messages_are_bounded_by_meaning_and_counted(tmp_path, monkeypatch):
    import edge_agent.outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "HELD_MAX_ITEMS", 10)
    ob = Outbox(tmp_path, 10 << 20)
    ob._conn = disk = FullDisk(ob._conn)
    for n in range(30):
        ob.commit("alert" if n % 3 == 0 else "summary", {"n": n})
    assert ob.evicted["summary"] == 20 and ob.evicted["alert"] == 0
    disk.full = False
    ob.commit("alert", {"n": 30})
    assert [m["n"] for m in payloads(ob)] == list(range(0, 31, 3))
    ob._conn = disk._conn
    ob.close()
    assert Outbox(tmp_path, 10 << 20).evicted["summary"] == 20  # saved once the disk took writes again


def test_the_publisher_thread_retries_held_messages(tmp_path, monkeypatch):
    import edge_agent.outbox as outbox_mod

    monkeypatch.setattr(outbox_mod, "RETRY_EVERY_S", 0.0)
    ob = Outbox(tmp_path, 10 << 20)
    ob._conn = disk = FullDisk(ob._conn)
    assert ob.commit("alert", {}) is None and ob.pending(10) == []
    disk.full = False
    ob.new_item.clear()
    assert [i.seq for i in ob.pending(10)] == [1] and ob.new_item.is_set()
    ob._conn = disk._conn
    ob.close()


def test_a_message_that_is_not_json_is_dropped_and_counted_not_raised(tmp_path, caplog):
    ob = Outbox(tmp_path, 10 << 20)
    with caplog.at_level(logging.ERROR, logger="edge_agent.outbox"):
        assert ob.commit("alert", {"x": object()}) is None
    assert ob.bad_messages == 1 and "not JSON" in caplog.text
    assert ob.commit("alert", {}) == 1  # no seq was used
    ob.close()


# -- threads ---------------------------------------------------------------------------------------------
def test_commit_pending_and_ack_from_three_threads(tmp_path):
    """Processing commits, the publisher thread reads, paho's thread acks, all at once."""
    ob = Outbox(tmp_path, 10 << 20)
    n = 600
    inflight: dict[int, None] = {}
    lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        return run

    def processing():
        for i in range(n):
            ob.commit("summary" if i % 4 else "alert", {"i": i})
        done.set()

    def publisher():
        while not (done.is_set() and ob.depth() == 0):
            with lock:
                skip = set(inflight)
            for item in ob.pending(20 - len(skip), skip):
                with lock:
                    inflight[item.id] = None
            time.sleep(0.0005)

    def network():
        while not (done.is_set() and ob.depth() == 0):
            with lock:
                ids = list(inflight)[:5]
                for i in ids:
                    del inflight[i]
            for i in ids:
                ob.ack(i)
            time.sleep(0.0003)

    threads = [threading.Thread(target=guard(f)) for f in (processing, publisher, network)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert ob.depth() == 0 and sum(ob.acked.values()) == n and ob.committed == Counter({"summary": 450, "alert": 150})
    assert ob.commit("alert", {}) == n + 1
    ob.close()


# -- delivery: the real Publisher, the real mosquitto --------------------------------------------------
def _publisher(ob, broker):
    from edge_agent.config import default_config
    from edge_agent.publisher import Publisher
    from edge_agent.topics import Topics

    cfg = default_config(broker={"host": broker.host, "port": broker.port, "reconnect_min_s": 1.0,
                                 "reconnect_max_s": 2.0})
    topics = Topics(cfg.broker.topic_prefix, cfg.device.site, cfg.device.id)
    pub = Publisher(cfg.broker, topics, ob, lambda: {"schema": 1, "state": "online"})
    stop = threading.Event()
    thread = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    thread.start()
    return pub, stop, thread


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:  # say where every thread is (a stuck uplink shows here)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.broker
def test_messages_committed_during_a_broker_outage_and_an_agent_restart_all_arrive_in_order(
        tmp_path, mosquitto, mqtt_subscriber):
    sub = mqtt_subscriber(mosquitto, "pdm/+/+/+", clean_session=False, client_id="outbox-test-fleet")
    state = tmp_path / "state"
    ob = Outbox(state, 8 << 20)
    pub, stop, thread = _publisher(ob, mosquitto)
    assert pub.connected.wait(10)
    kinds: list[str] = []

    def commit_some(count):
        for _ in range(count):
            kind = "summary" if len(kinds) % 5 == 4 else "alert"
            kinds.append(kind)
            assert ob.commit(kind, {"schema": 1, "n": len(kinds), "pad": "p" * 300}) == len(kinds)

    commit_some(10)
    _wait(lambda: ob.depth() == 0, 10, "the first 10 were not acked")
    # 1: the broker goes away mid-stream; the agent keeps committing
    mosquitto.stop()
    commit_some(150)
    time.sleep(1.0)
    commit_some(50)
    assert ob.depth() >= 150
    mosquitto.start()
    _wait(lambda: ob.depth() == 0, 30, f"outbox not drained after the broker came back: {ob.depth()} left")
    # 2: broker down again, and the agent restarts (outbox closed and reopened) meanwhile
    mosquitto.stop()
    commit_some(100)
    stop.set()
    thread.join(10)
    ob.close()
    ob = Outbox(state, 8 << 20)
    assert ob.depth() >= 100
    commit_some(20)
    pub, stop, thread = _publisher(ob, mosquitto)
    mosquitto.start()
    _wait(lambda: ob.depth() == 0, 30, f"outbox not drained after the restart: {ob.depth()} left")
    total = len(kinds)
    _wait(lambda: len({json.loads(p)["seq"] for t, p, _ in sub.messages if not t.endswith("/status")}) >= total,
          20, "the subscriber did not get everything")
    stop.set()
    thread.join(10)
    ob.close()

    by_topic: dict[str, list[dict]] = {}
    for topic, payload, _ in sub.messages:
        kind = topic.rsplit("/", 1)[-1]
        if kind != "status":
            by_topic.setdefault(kind, []).append(json.loads(payload))
    seen: dict[int, dict] = {}
    duplicates = 0
    for kind, msgs in by_topic.items():
        firsts = []
        for m in msgs:
            if m["seq"] in seen:
                duplicates += 1
                assert seen[m["seq"]] == m  # a resend, never another message under the same seq
            else:
                seen[m["seq"]] = m
                firsts.append(m["seq"])
        assert firsts == sorted(firsts), f"{kind} out of order"
        assert all(kinds[s - 1] == kind for s in firsts)
    assert sorted(seen) == list(range(1, total + 1))  # no gap
    print(f"\n{total} messages through two outages and a restart; {duplicates} duplicates (QoS 1)")
    assert duplicates <= 2 * 20  # at most what was in flight at each break
