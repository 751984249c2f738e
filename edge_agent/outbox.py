"""The outbox: messages committed for publishing, kept on disk until the broker acknowledges them.

Every alert, summary and acknowledgement is committed here first: :meth:`Outbox.commit`
returns only once the message is on stable storage, with its ``seq`` (per device, +1 per
message, assigned in the same transaction, so a crash never leaves a gap and never reuses
one). The publisher takes :meth:`Outbox.pending` messages in commit order (which is seq
order, hence also the order per topic), publishes them with QoS 1 and calls
:meth:`Outbox.ack` on PUBACK; only then is a message deleted.

Storage: one SQLite database, ``outbox.sqlite3`` in ``[storage] dir``, in WAL mode
(``-wal`` and ``-shm`` beside it). Table ``items`` (``id`` = ``seq``, ``kind``, ``weight``,
``payload``: the JSON bytes as published) and ``meta`` (``next_seq`` and the eviction and
ack counters ``evicted.<kind>`` / ``acked.<kind>``, so they survive restarts).

Durability: ``synchronous = FULL``. In WAL mode, NORMAL does not sync the WAL at commit,
so a power cut (the usual way a gateway stops) can take back the last transactions.
Here that would be worse than losing a message: a message committed, published and seen
by the fleet could be un-committed, and its ``seq`` handed to the next message, which the
fleet then drops as a duplicate of one it has. FULL syncs the WAL before ``commit``
returns (~0.3 ms on the 2-core VM of benches/RESULTS.md, a few ms on an SD card): alerts
and summaries are a few a minute, so the price is nothing. Deletes on PUBACK are committed
with ``synchronous = NORMAL``: losing one to a power cut only means the message is sent
again (a duplicate, which QoS 1 allows and ``seq`` lets the consumer drop), and the next
FULL commit syncs it anyway. Either way the database itself stays consistent (WAL
checksums); an SD card that acknowledges a flush it has not done can still lose the last
commits: no software setting helps with that.

``seq`` also has a floor outside the database, ``outbox.seq`` (written atomically before a
seq beyond it is used, in blocks of 1000): a fresh outbox after a corrupt one was moved
aside continues above every seq ever used, so the fleet sees a gap (true: those messages
are lost) rather than old numbers that it would drop as duplicates.

Bound (``max_bytes``, from ``[storage] outbox_max_mb``) on the *files*, not the payloads:
database + WAL + shared-memory index, as ``os.stat`` sees them. Split: the ``-shm`` index
(32 KiB while the WAL stays under 4096 frames), the WAL (1/16 of the budget, 32 KiB to
4 MiB: ``journal_size_limit``, and an automatic checkpoint at half of it), and the
database file the rest, counted in pages. A commit inserts, then evicts while the pages in
use plus the new message's size exceed the database's share (so the next message of that
size fits in free pages instead of growing the file); if the file still has more pages
than its share, the free ones are handed back (``auto_vacuum = INCREMENTAL``). After every
commit the three files are measured; over the budget, the WAL is checkpointed and
truncated. The bound holds between commits; during one, the WAL holds that transaction
too. It can only be exceeded by a single message larger than the whole budget (the newest
message is never refused: logged once).

Eviction, by meaning, every one counted by kind in ``evicted`` (reported in the next
summary) and in the database:

1. summaries are thinned: with three or more, of the adjacent pair (the newest excluded)
   that stands for the fewest intervals, oldest first on ties, the older is dropped and
   the younger's ``weight`` (intervals it stands for) takes its own. So the first pass
   drops every other summary from the oldest on, and after that the whole outage stays
   covered at an even, coarser resolution; with one or two summaries left, the oldest goes;
2. then other kinds, oldest first, by ``EVICTION_RANK``: acknowledgements, and alerts only
   when nothing else is left. The last message is never evicted.

A message evicted while in flight may still reach the broker; it stays counted.

Threads: one connection, opened with ``check_same_thread=False``, used only under one lock.
It is committed to from the processing thread, read by the publisher thread and acked from
the publisher's threads (any thread may call any method); with one connection every
transaction sees the others' effects, eviction decisions are atomic with the insert, and
there are no lock-busy retries between our own threads. Commits are a few a minute and an
ack is a ~40 us delete, so the lock is never held for long (a FULL commit holds it for one
fsync; a commit at the cap also for the eviction, ~1-2 ms).

Interface (what the agent and publisher.py use): ``commit(kind, message) -> seq | None``,
``pending(limit, skip) -> [OutboxItem]`` (commit order), ``ack(id)``, ``depth()``,
``size_bytes``, the ``new_item`` event (set on every commit), and the counters
``evicted`` / ``acked`` (by kind, persistent), ``committed`` (by kind, this process),
``write_errors``, ``bad_messages``, ``resets``; ``close()`` for tests and tools (the agent
never needs it: every commit is durable when it returns). Neither ``commit`` nor ``ack``
raises for a disk error or a bad message.

Failures:

* at start, ``PRAGMA quick_check`` reads the whole file (~60 ms for 64 MB on the VM, page
  cache warm; seconds on an SD card). A database that cannot be used (not a database, ``quick_check`` not ok, a
  schema this agent does not know, cannot be opened) is renamed to
  ``outbox.sqlite3.corrupt-<UTC time>`` (with its -wal/-shm; the two newest such sets are
  kept), one error line is logged, a fresh outbox starts (seq above the floor) and the
  reset is counted (``resets``, shown as ``evicted["corrupt_reset"]``). Other errors at
  start (permissions, a full disk) are a :class:`StartupError`.
* a write that fails while running (disk full, I/O error): the transaction is rolled
  back, the message is held in memory (bounded: 1000 messages / 16 MiB, dropped by the
  same meaning and counted), an error is logged (at most once a minute), and the agent
  goes on. Held messages are committed, in order and with their seq only then, at the next
  commit or (from the publisher) every 5 s; nothing already committed is touched. A failed
  ack delete is retried the same way; the message is not sent again meanwhile.
* a message that is not JSON (a bug of the caller's) is dropped, logged with its
  traceback and counted (``bad_messages``); it uses no seq.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import StartupError

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
SEQ_FILENAME = "outbox.seq"
SCHEMA_VERSION = 1
PAGE_SIZE = 4096
SHM_BYTES = 32 * 1024
WAL_MIN_BYTES, WAL_MAX_BYTES = 32 * 1024, 4 * 1024 * 1024
MIN_DB_PAGES = 8
SEQ_BLOCK = 1000
KEEP_ASIDE = 2
HELD_MAX_ITEMS = 1000
HELD_MAX_BYTES = 16 * 1024 * 1024
ERROR_LOG_EVERY_S = 60.0
RETRY_EVERY_S = 5.0

# Which kinds are evicted first when the outbox is full (lower goes first). Summaries are
# thinned (see the module docstring) before any other kind is touched.
EVICTION_RANK = {"summary": 0, "ack": 1, "alert": 2}
_UNUSABLE_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN")
_RANK_SQL = "CASE kind " + " ".join(f"WHEN '{k}' THEN {r}" for k, r in EVICTION_RANK.items()) + " ELSE 0 END"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int  # = seq
    kind: str  # "alert", "summary", ...: also the topic's last segment
    seq: int
    payload: bytes


class _Unusable(Exception):
    """The database file is not an outbox this agent can use."""


@dataclass(slots=True)
class _Held:
    kind: str
    message: dict
    nbytes: int = 0


def budget(max_bytes: int) -> tuple[int, int]:
    """(WAL bytes, database pages) of a ``max_bytes`` outbox; the rest is the -shm index."""
    wal = min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, max_bytes // 16))
    return wal, max(MIN_DB_PAGES, (max_bytes - wal - SHM_BYTES) // PAGE_SIZE)


def _pages_for(nbytes: int) -> int:
    """Pages a row of ``nbytes`` payload occupies, about (leaf share + overflow pages)."""
    return 1 + (nbytes + 64) // (PAGE_SIZE - 8)


class Outbox:
    """The persistent outbox in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous: {synchronous!r}")
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.seq_path = self.dir / SEQ_FILENAME
        self.max_bytes = int(max_bytes)
        self.synchronous = synchronous
        self.wal_budget_bytes, self.db_budget_pages = budget(self.max_bytes)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._evicted: Counter[str] = Counter()
        self._evicted_unsaved: Counter[str] = Counter()  # held messages dropped: saved at the next write
        self._acked: Counter[str] = Counter()
        self._committed: Counter[str] = Counter()
        self._held: deque[_Held] = deque()
        self._held_bytes = 0
        self._ack_failed: set[int] = set()
        self._failing = False
        self._last_error_log = -ERROR_LOG_EVERY_S
        self._errors_since_log = 0
        self._last_attempt = 0.0
        self._warned_oversize = False
        self.write_errors = 0
        self.bad_messages = 0
        self.new_item = threading.Event()
        state = self._read_seq_file()
        self._seq_reserved: int = state.get("reserved", 0)
        self.resets: int = state.get("resets", 0)
        try:
            self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"storage.dir {self.dir}: cannot create it: {exc.strerror}") from None
        self._open()

    # -- public interface ---------------------------------------------------------------------
    def commit(self, kind: str, message: dict) -> int | None:
        """Store ``dict(message, seq=seq)`` durably and return the seq; or, when the disk
        refuses the write, hold it in memory (committed later, in order) and return None."""
        with self._lock:
            self._check_open()
            if self._ack_failed:
                self._delete_acked()
            self._held.append(_Held(kind, message))
            seq = self._flush_held()
        if seq is not None:
            self.new_item.set()
        return seq

    def pending(self, limit: int, skip: set[int] | frozenset[int] = frozenset()) -> list[OutboxItem]:
        """Up to ``limit`` unacknowledged items in commit order, leaving out ids in ``skip``."""
        with self._lock:
            self._check_open()
            if (self._held or self._ack_failed) and time.monotonic() - self._last_attempt >= RETRY_EVERY_S:
                self._retry()
            out_of = set(self._ack_failed)
            try:
                rows = self._conn.execute(
                    "SELECT id, kind, payload FROM items ORDER BY id LIMIT ?", (limit + len(skip) + len(out_of),)
                ).fetchall()
            except sqlite3.Error as exc:
                self._failed(exc, "reading")
                return []
        out = [OutboxItem(i, k, i, bytes(p)) for i, k, p in rows if i not in skip and i not in out_of]
        return out[:limit]

    def ack(self, item_id: int) -> None:
        """The broker has the item: delete it (an unknown id, e.g. evicted meanwhile, is
        ignored). Never raises: a failed delete is retried later."""
        with self._lock:
            if self._conn is None:
                return
            self._ack_failed.add(item_id)
            self._delete_acked()

    def depth(self) -> int:
        """Messages not yet acknowledged (including any held in memory)."""
        with self._lock:
            self._check_open()
            try:
                n = self._conn.execute("SELECT count(*) FROM items").fetchone()[0]
            except sqlite3.Error as exc:
                self._failed(exc, "reading")
                n = 0
            return max(0, n - len(self._ack_failed)) + len(self._held)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk: database + WAL + shared-memory index."""
        return self._disk_bytes()

    @property
    def evicted(self) -> Counter[str]:
        """Evictions by kind since the outbox was created (a copy); ``corrupt_reset``: how
        many times an unusable database file was moved aside."""
        with self._lock:
            out = Counter(self._evicted)
        if self.resets:
            out["corrupt_reset"] = self.resets
        return out

    @property
    def acked(self) -> Counter[str]:
        """Acknowledged (deleted on PUBACK) by kind since the outbox was created (a copy)."""
        with self._lock:
            return Counter(self._acked)

    @property
    def committed(self) -> Counter[str]:
        """Committed by kind by this process (a copy)."""
        with self._lock:
            return Counter(self._committed)

    def close(self) -> None:
        """Commit what is held if possible, checkpoint and truncate the WAL, close."""
        with self._lock:
            if self._conn is None:
                return
            if self._held or self._ack_failed:
                self._retry()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._connect()
            try:
                self._shrink_to_budget()
            except sqlite3.Error as exc:
                if self._unusable(exc):
                    raise
                log.warning("outbox %s: could not apply its budget at start (%s); the next commit will", self.path, exc)
            return
        except (sqlite3.Error, _Unusable) as exc:
            if not self._unusable(exc):
                self._close_quietly()
                raise StartupError(f"storage.dir: outbox {self.path}: {exc}") from None
            self._close_quietly()
            why = str(exc)
        aside = self._move_aside()
        self.resets += 1
        try:
            self._write_seq_file(max(self._seq_reserved, 1 if self._seq_reserved else int(time.time() * 1000)))
        except OSError as exc:
            raise StartupError(f"storage.dir: outbox {self.seq_path}: {exc.strerror}") from None
        try:
            self._connect()
        except (sqlite3.Error, _Unusable) as exc:
            raise StartupError(f"storage.dir: outbox {self.path}: a fresh outbox cannot be made either: {exc}") from None
        log.error("outbox %s unusable (%s): moved aside to %s; started a fresh outbox, seq continues at %d "
                  "(reset %d, counted in summaries as evicted.corrupt_reset)",
                  self.path, why, aside.name, self._next_seq(), self.resets)

    def _unusable(self, exc: Exception) -> bool:
        if isinstance(exc, _Unusable):
            return True
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith("SQLITE_CANTOPEN"):
            return self.path.exists()
        return name.startswith(_UNUSABLE_CODES) or "malformed" in str(exc) or "not a database" in str(exc)

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _connect(self) -> None:
        wal_pages = max(4, self.wal_budget_bytes // 2 // (PAGE_SIZE + 24))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # these two only act on a new file
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode here (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_budget_bytes}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _Unusable(f"quick_check: {'; '.join(str(r[0]) for r in check[:3])}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise _Unusable("not an edge-agent outbox (tables but no schema version)")
                self._create(conn)
            elif version != SCHEMA_VERSION:
                raise _Unusable(f"outbox schema version {version}, this agent knows {SCHEMA_VERSION}")
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "next_seq" not in rows:
                raise _Unusable("no next_seq in meta")
            conn.execute("SELECT id, kind, weight, payload FROM items LIMIT 0").fetchall()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._evicted = Counter({k[8:]: v for k, v in rows.items() if k.startswith("evicted.") and v})
        self._acked = Counter({k[6:]: v for k, v in rows.items() if k.startswith("acked.") and v})

    def _create(self, conn: sqlite3.Connection) -> None:
        """The schema, in one transaction; seq starts at 1, or above the floor when there is one."""
        start = max(1, self._seq_reserved)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                         "weight INTEGER NOT NULL DEFAULT 1, payload BLOB NOT NULL)")
            conn.execute("CREATE INDEX items_kind ON items (kind, id, weight)")
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT INTO meta VALUES ('next_seq', ?)", (start,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{FILENAME}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside, n = self.path.with_name(f"{FILENAME}.corrupt-{stamp}-{n}"), n + 1
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists() or src.is_symlink():
                    os.replace(src, f"{aside}{suffix}")
        except OSError as exc:
            raise StartupError(f"storage.dir: outbox {self.path} is unusable and cannot be moved aside: {exc.strerror}") from None
        olds = sorted(p for p in self.dir.glob(f"{FILENAME}.corrupt-*") if not p.name.endswith(("-wal", "-shm")))
        for old in olds[:-KEEP_ASIDE]:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(f"{old}{suffix}")
                except OSError:
                    pass
        return aside

    def _shrink_to_budget(self) -> None:
        """At start: a smaller ``outbox_max_mb`` than the file was made with is applied now
        (and the WAL left by the last run is checkpointed)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        pages, free = self._pages()
        if pages - free <= self.db_budget_pages and pages <= self.db_budget_pages and self._disk_bytes() <= self.max_bytes:
            return
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            evicted = self._enforce_budget(0)
            self._save_counts("evicted", evicted)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._evicted.update(evicted)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if evicted:
            log.warning("outbox %s: over its %d-byte budget at start; evicted %s", self.path, self.max_bytes, dict(evicted))

    # -- the seq floor ------------------------------------------------------------------------------
    def _read_seq_file(self) -> dict:
        try:
            state = json.loads(self.seq_path.read_text())
            return {k: int(state[k]) for k in ("reserved", "resets") if k in state}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as exc:
            log.warning("outbox seq floor %s unreadable (%s); ignored", self.seq_path, exc)
            return {}

    def _write_seq_file(self, reserved: int) -> None:
        tmp = self.seq_path.with_name(SEQ_FILENAME + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"reserved": reserved, "resets": self.resets}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.seq_path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seq_reserved = reserved

    def _next_seq(self) -> int:
        return self._conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]

    # -- writing (all under the lock) ----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._conn is None:
            raise RuntimeError(f"outbox {self.path} is closed")

    def _flush_held(self) -> int | None:
        """Commit the held messages in order; the last one's seq, or None if one failed."""
        seq = None
        self._last_attempt = time.monotonic()
        while self._held:
            h = self._held[0]
            try:
                seq = self._write(h.kind, h.message)
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc, f"committing a {h.kind}")
                self._bound_held()
                return None
            except (TypeError, ValueError):  # not JSON: a bug of the caller's, not the disk's
                self._held.popleft()
                self._held_bytes -= h.nbytes
                self.bad_messages += 1
                log.exception("outbox: a %s message that is not JSON was dropped (counted: bad_messages)", h.kind)
                seq = None
                continue
            self._held.popleft()
            self._held_bytes -= h.nbytes
            self._committed[h.kind] += 1
        self._recovered()
        return seq

    def _write(self, kind: str, message: dict) -> int:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            seq = self._next_seq()
            if seq >= self._seq_reserved:
                self._write_seq_file(seq + SEQ_BLOCK)
            payload = json.dumps(dict(message, seq=seq), separators=(",", ":")).encode()
            c.execute("INSERT INTO items (id, kind, weight, payload) VALUES (?, ?, 1, ?)", (seq, kind, payload))
            c.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            evicted = self._enforce_budget(len(payload))
            self._save_counts("evicted", evicted + self._evicted_unsaved)
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._evicted.update(evicted)
        self._evicted_unsaved.clear()
        self._bound_files()
        return seq

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _save_counts(self, prefix: str, counts: Counter[str]) -> None:
        for kind, n in counts.items():
            if n:
                self._conn.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                    (f"{prefix}.{kind}", n))

    def _pages(self) -> tuple[int, int]:
        c = self._conn
        return c.execute("PRAGMA page_count").fetchone()[0], c.execute("PRAGMA freelist_count").fetchone()[0]

    def _enforce_budget(self, new_bytes: int) -> Counter[str]:
        """In the open transaction: evict until the pages in use leave room for another
        message of ``new_bytes`` within the database's share; give back free pages beyond
        the share. Returns the evictions by kind."""
        evicted: Counter[str] = Counter()
        room = _pages_for(new_bytes) if new_bytes else 0
        pages, free = self._pages()
        while pages - free + room > self.db_budget_pages:
            kind = self._evict_one()
            if kind is None:
                break
            evicted[kind] += 1
            pages, free = self._pages()
        for _ in range(min(free, pages - self.db_budget_pages)):
            # one page per statement: Python's sqlite3 steps a statement without result
            # columns once, and incremental_vacuum frees one page per step
            self._conn.execute("PRAGMA incremental_vacuum")
        return evicted

    def _evict_one(self) -> str | None:
        """Delete (or merge away) one message by the eviction policy; its kind, or None when
        only one message is left."""
        c = self._conn
        if c.execute("SELECT count(*) FROM items").fetchone()[0] <= 1:
            return None
        summaries = c.execute("SELECT id, weight FROM items WHERE kind = 'summary' ORDER BY id").fetchall()
        if len(summaries) >= 3:
            older = summaries[:-1]  # the newest summary is not thinned
            k = min(range(len(older) - 1), key=lambda i: (older[i][1] + older[i + 1][1], i))
            (drop, w_drop), (keep, w_keep) = older[k], older[k + 1]
            c.execute("DELETE FROM items WHERE id = ?", (drop,))
            c.execute("UPDATE items SET weight = ? WHERE id = ?", (w_drop + w_keep, keep))
            return "summary"
        if summaries:
            c.execute("DELETE FROM items WHERE id = ?", (summaries[0][0],))
            return "summary"
        victim, kind = c.execute(f"SELECT id, kind FROM items ORDER BY {_RANK_SQL}, id LIMIT 1").fetchone()
        c.execute("DELETE FROM items WHERE id = ?", (victim,))
        return kind

    def _bound_files(self) -> None:
        """After a commit: over the budget on disk, checkpoint and truncate the WAL."""
        if self._disk_bytes() <= self.max_bytes:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            self._failed(exc, "checkpointing")
            return
        size = self._disk_bytes()
        if size > self.max_bytes and not self._warned_oversize:
            self._warned_oversize = True
            log.warning("outbox %s: %d bytes on disk, over its %d-byte budget: a single message is larger than the "
                        "budget allows (it is kept; raise [storage] outbox_max_mb)", self.path, size, self.max_bytes)

    def _disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total

    def _delete_acked(self) -> None:
        c = self._conn
        ids = sorted(self._ack_failed)
        acked: Counter[str] = Counter()
        try:
            c.execute("PRAGMA synchronous = NORMAL")
            try:
                c.execute("BEGIN IMMEDIATE")
                for item_id in ids:
                    row = c.execute("SELECT kind FROM items WHERE id = ?", (item_id,)).fetchone()
                    if row is not None:
                        c.execute("DELETE FROM items WHERE id = ?", (item_id,))
                        acked[row[0]] += 1
                self._save_counts("acked", acked)
                c.execute("COMMIT")
            finally:
                self._rollback()
                c.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            self._failed(exc, "deleting acknowledged messages")
            return
        self._acked.update(acked)
        self._ack_failed.clear()

    def _retry(self) -> None:
        if self._ack_failed:
            self._delete_acked()
        if self._held:
            if self._flush_held() is not None:
                self.new_item.set()

    def _bound_held(self) -> None:
        """Held messages (the disk refused them) are bounded like the outbox: summaries
        dropped oldest first, then by rank; counted."""
        for h in self._held:
            if not h.nbytes:
                h.nbytes = len(json.dumps(h.message, separators=(",", ":"), default=str)) + 16
                self._held_bytes += h.nbytes
        limit = min(self.max_bytes, HELD_MAX_BYTES)
        while len(self._held) > 1 and (len(self._held) > HELD_MAX_ITEMS or self._held_bytes > limit):
            victim = min(self._held, key=lambda h: EVICTION_RANK.get(h.kind, 0))  # min: the oldest of the lowest rank
            self._held.remove(victim)
            self._held_bytes -= victim.nbytes
            self._evicted[victim.kind] += 1
            self._evicted_unsaved[victim.kind] += 1

    def _failed(self, exc: Exception, what: str) -> None:
        self.write_errors += 1
        self._errors_since_log += 1
        self._failing = True
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.error("outbox %s: %s failed: %s (%s); %d message(s) held in memory until the disk takes them; "
                      "nothing committed is lost (%d error(s) since the last such line; logged at most once a minute)",
                      self.path, what, exc, getattr(exc, "sqlite_errorname", None) or type(exc).__name__,
                      len(self._held), self._errors_since_log)
            self._errors_since_log = 0

    def _recovered(self) -> None:
        if self._failing and not self._ack_failed and not self._held:
            self._failing = False
            log.warning("outbox %s: writable again; held messages committed (%d write error(s) in all)",
                        self.path, self.write_errors)
