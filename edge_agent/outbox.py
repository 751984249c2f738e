"""The outbox: messages committed for publishing, kept on disk until the broker acknowledges them.

Every alert, summary and acknowledgement is committed here first: :meth:`Outbox.commit`
returns only once the message is on stable storage, with its ``seq`` (per device, +1 per
message, assigned in the same transaction, so a crash never leaves a gap and never reuses
one). The publisher takes :meth:`Outbox.pending` messages in commit order (which is seq
order, hence also the order per topic), publishes them with QoS 1 and calls
:meth:`Outbox.ack` on PUBACK; only then is a message deleted.

Storage: one SQLite database, ``outbox.sqlite3`` in ``[storage] dir``, in WAL mode
(``-wal`` and ``-shm`` beside it), schema 2: table ``items`` (``id`` = ``seq``, ``kind``,
``payload``: the JSON bytes as published), ``weights`` (``id``, ``weight``: the intervals a
thinned summary stands for, when more than one; see eviction) and ``meta`` (``next_seq`` and
the eviction and ack counters ``evicted.<kind>`` / ``acked.<kind>``, so they survive
restarts). The weight has its own small table because SQLite rewrites a whole record on
UPDATE: in the items row it made every thinning rewrite the kept summary's ~60 kB payload.
A schema-1 file (``weight`` in ``items``) is migrated in place at start, in one small
transaction: its weights above 1 are copied to ``weights``; items, seqs and counters are
kept as they are (its ``items.weight`` column and index stay, unused). Deleted content is
not zeroed in the freed pages (``secure_delete = FAST``; Debian builds SQLite with it on,
which writes a deleted message's whole overflow chain to the WAL again).

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
database + WAL + shared-memory index, as ``os.stat`` sees them, **at every instant**: during
commits, acks and checkpoints too. In WAL mode the database file changes only at a
checkpoint (it takes the size of the last commit) and the WAL file only at a commit (the
transaction's frames: appended, or written over its start after a checkpoint) or a
checkpoint; so the outbox checks before every transaction (``_fit``) that the database
file at its size after it, the WAL with its frames, and the ``-shm`` index fit the budget
together, and checkpoints first when they would not. The split (``budget``), for the
largest message held or coming (R pages): the WAL holds one commit of such a message (R
frames; ``TX_FRAMES`` of bookkeeping and the file's pointer-map pages, one per 820 pages;
``ROOM_EVICTIONS`` x ``EVICT_FRAMES`` for evictions), at least 1/16 of the budget (32 KiB
to 4 MiB: checkpoints are rarer with a larger WAL); the ``-shm`` index 32 KiB (per 4062 WAL
frames); the database the rest, in pages: its share of pages in use, and ``SPLIT_PAGES``
more that an insert may add to the file (``db_budget_pages``: the most the file may have).
At 1 MiB with ~60 kB summaries: WAL 41 frames (169 kB), database 204 + 2 pages (844 kB);
with small messages only, 219 + 2 pages (905 kB).

A commit, in one transaction, evicts until the pages in use leave room for the message
within the database's share (the policy may drop the message itself instead), inserts it
(into the pages just freed: the file does not grow) and gives back the file's pages beyond
the share, if any (``auto_vacuum = INCREMENTAL``). When that work would not fit in the
commit's WAL (the messages grew, so the database's share shrank; many small evictions), it
is done first in transactions of its own, each fitting beside the database file with an
empty WAL and checkpointed after it (the file shrinks then): ``_make_room``, which also
applies at start a budget that leaves the database less than the file has (a lower
``outbox_max_mb``, a file of an earlier version). An ack's delete is fitted the same way
(it never grows the file). The checkpoints are the outbox's own (``wal_autocheckpoint =
0``): RESTART, after which the WAL is written over from its start and keeps its size (an
fsync of a file that grows costs more), and TRUNCATE when the WAL file's own size is in the
way.

The frames a transaction writes are estimated from measured maxima with a margin
(``TX_FRAMES``, ``EVICT_FRAMES``, ``VACUUM_FRAMES``; tests/test_outbox.py checks every
transaction of varied loads, 256 KiB to 32 MiB, against its estimate, with the files
sampled around every statement); after a commit the WAL file is looked at (one stat): over
the budget (an estimate exceeded, counted in ``overruns``; never seen so far) it is
checkpointed and truncated at once. A summary of 55-60 kB committed into a full 1 MiB outbox
writes 22-27 WAL frames, 15 of them its own pages (51-57 with the weight in the row and
secure_delete on); an alert 3-10.

The bound can only be exceeded by a single message larger than about half the budget: its
pages pass through the WAL into the database, and the two cannot fit beside each other.
Everything else is evicted for it, it is kept (the newest message is never refused: logged
once) and the files are over the budget until it has gone. A file over a lower budget at
start is over it until the start has shrunk it. And a checkpoint cannot pass another
process's read transaction (e.g. a sqlite3 shell left open on the file): the WAL grows
meanwhile.

Eviction, by meaning, every one counted by kind in ``evicted`` (reported in the next
summary) and in the database:

1. summaries are thinned: with three or more, of the adjacent pair (the newest excluded)
   that stands for the fewest intervals, oldest first on ties, the older is dropped and
   the younger's ``weight`` (intervals it stands for) takes its own. So the first pass
   drops every other summary from the oldest on, and after that the whole outage stays
   covered at an even, coarser resolution; with one or two summaries left, the oldest goes;
2. then other kinds, oldest first, by ``EVICTION_RANK``: acknowledgements, and alerts only
   when nothing else is left. The last message is never evicted.

The message being committed is one of the candidates (the newest): a summary that needs
room in an outbox without another summary is itself the one dropped (its seq used, counted).

A message evicted while in flight may still reach the broker; it stays counted.

Threads: one connection, opened with ``check_same_thread=False``, used only under one lock.
It is committed to from the processing thread, read by the publisher thread and acked from
the publisher's threads (any thread may call any method); with one connection every
transaction sees the others' effects, eviction decisions are made with the insert, under the
lock and in its transaction (but for the rare ``_make_room`` steps, which precede it), and
there are no lock-busy retries between our own threads. Commits are a few a minute and an
ack is a ~40-50 us delete, so the lock is never held for long (a FULL commit holds it for one
fsync; a commit at the cap also for the eviction and a checkpoint, ~1.3-1.8 ms; an ack that
must checkpoint first ~1 ms).

Interface (what the agent and publisher.py use): ``commit(kind, message) -> seq | None``,
``pending(limit, skip) -> [OutboxItem]`` (commit order), ``ack(id)``, ``depth()``,
``size_bytes``, the ``new_item`` event (set on every commit), and the counters
``evicted`` / ``acked`` (by kind, persistent), ``committed`` (by kind, this process),
``write_errors``, ``bad_messages``, ``resets``, ``overruns``; ``close()`` for tests and tools (the agent
never needs it: every commit is durable when it returns). Neither ``commit`` nor ``ack``
raises for a disk error or a bad message.

Failures:

* at start, ``PRAGMA quick_check`` reads the whole file (~60 ms for 64 MB on the VM, page
  cache warm; seconds on an SD card). A database that cannot be used (not a database,
  ``quick_check`` not ok, a schema this agent does not know, cannot be opened) is renamed to
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
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edge_agent.errors import StartupError

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
SEQ_FILENAME = "outbox.seq"
SCHEMA_VERSION = 2
PAGE_SIZE = 4096
FRAME_BYTES = PAGE_SIZE + 24  # one WAL frame: a page and its header
WAL_HEADER_BYTES = 32
SHM_BLOCK_BYTES = 32 * 1024  # the -shm index: one block per 4096 WAL frames (the first holds 4062)
WAL_MIN_BYTES, WAL_MAX_BYTES = 32 * 1024, 4 * 1024 * 1024
MIN_DB_PAGES = 8
# What a transaction writes to the WAL, in frames (pages), beyond the pages of the message it
# inserts (measured on SQLite 3.40 with secure_delete = FAST, benches/RESULTS.md; tests/
# test_outbox.py checks every transaction of varied loads against these, file sizes sampled
# around every statement):
TX_FRAMES = 12  # a transaction's bookkeeping: page 1, meta, the leaf and interior pages of items
# and of its index (splits included), freelist trunks, weights; and every pointer-map page of the
# file (one per 820 pages: each is written at most once per transaction), see _overhead
EVICT_FRAMES = 6  # one message deleted (evicted or acked): its leaf and the siblings it is merged
# with, its index leaf, its weight (its overflow pages go to the freelist unwritten)
VACUUM_FRAMES = 3  # one page given back by incremental_vacuum: the page moved and what points to it
SPLIT_PAGES = 2  # pages an insert may add beyond its own (a leaf and an index page split): the
# database file may have them beyond its share
ROOM_EVICTIONS = 2  # evictions a commit's WAL reservation covers (to make room for its message)
STEP_MIN_FRAMES = 2 * EVICT_FRAMES  # the smallest step when the files are over the cap already (start)
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
_INCOMING = "incoming"  # _evict_one: the message being committed is itself the one to drop


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


def _pages_for(nbytes: int) -> int:
    """Pages a row with a payload of ``nbytes`` takes, at most: its share of a leaf page (one)
    and its overflow pages (a record over 4061 bytes keeps at least 489 in the leaf)."""
    n = nbytes + 24  # the record: header, id, kind
    return 1 if n <= PAGE_SIZE - 35 else 1 + -(-(n - 489) // (PAGE_SIZE - 4))


def _shm_bytes(frames: int) -> int:
    """The -shm index's size for a WAL of ``frames``."""
    return SHM_BLOCK_BYTES * (1 + max(0, -(-(frames - 4062) // 4096)))


def wal_min_bytes(max_bytes: int) -> int:
    """The WAL's least share of a ``max_bytes`` outbox: 1/16, 32 KiB to 4 MiB (checkpoints are
    rarer with a larger WAL; a commit reserves more when its message needs it)."""
    return min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, max_bytes // 16))


def _ptrmap_pages(n_pages: int) -> int:
    """Pointer-map pages in a file of ``n_pages`` (auto_vacuum: page 2, then every 820th)."""
    return 1 + max(0, n_pages - 3) // 820


@lru_cache(maxsize=256)
def budget(max_bytes: int, message_pages: int = 1) -> tuple[int, int]:
    """(WAL frames, database pages) of a ``max_bytes`` outbox whose largest message takes
    ``message_pages``: the WAL holds one commit of such a message (its pages, its overhead and
    ``ROOM_EVICTIONS`` evictions), at least its 1/16 share; the -shm index its size for that
    WAL; the database file the rest. Database pages + WAL + -shm <= ``max_bytes``."""
    frames = message_pages + TX_FRAMES + _ptrmap_pages(max_bytes // PAGE_SIZE) + ROOM_EVICTIONS * EVICT_FRAMES
    wal = max(wal_min_bytes(max_bytes), WAL_HEADER_BYTES + frames * FRAME_BYTES)
    frames = (wal - WAL_HEADER_BYTES) // FRAME_BYTES
    db_pages = max(MIN_DB_PAGES, (max_bytes - _shm_bytes(frames) - wal) // PAGE_SIZE - SPLIT_PAGES)
    return frames, db_pages


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
        # the most pages the database file may have (with small messages), and the WAL's least
        self.wal_budget_bytes = wal_min_bytes(self.max_bytes)
        self.db_budget_pages = budget(self.max_bytes)[1] + SPLIT_PAGES
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._evicted: Counter[str] = Counter()
        self._evicted_unsaved: Counter[str] = Counter()  # held messages dropped: saved at the next write
        self._acked: Counter[str] = Counter()
        self._committed: Counter[str] = Counter()
        self._sizes: Counter[int] = Counter()  # messages in the outbox by the pages each takes
        self._tx_sizes: Counter[int] | None = None  # the same within a transaction
        self._held: deque[_Held] = deque()
        self._held_bytes = 0
        self._ack_failed: set[int] = set()
        self._failing = False
        self._last_error_log = -ERROR_LOG_EVERY_S
        self._errors_since_log = 0
        self._last_attempt = 0.0
        self._warned_oversize = False
        self.overruns = 0  # transactions that left the files over the cap (see _after_commit)
        self._tx_estimate = 0  # WAL frames the transaction being committed may write, as estimated
        self._n_pages = 0  # the database's pages after the last write, at most
        self._wal_used = 0  # frames in the WAL since the last checkpoint, at least as many as there are
        self._db_bytes = self._wal_bytes = self._shm_bytes = 0  # the files' sizes when last looked at
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
        return sum(self._files())

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
                self._checkpoint(truncate=True)
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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # these two only act on a new file
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode here (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            # the outbox checkpoints itself, before a transaction that would not fit beside the
            # WAL (see _fit): SQLite's automatic checkpoint comes only after a commit, and its
            # size limit would cut the WAL file at every restart of a WAL that _fit allows to be
            # larger (appending costs a commit's fsync more than overwriting)
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA journal_size_limit = -1")
            # a deleted message's overflow pages are not zeroed on disk (Debian builds SQLite
            # with SECURE_DELETE): that would write them all to the WAL again for nothing, the
            # content was published; FAST still clears the deleted cells in the b-tree pages
            conn.execute("PRAGMA secure_delete = FAST")
            conn.execute("PRAGMA cache_spill = OFF")  # nothing reaches the WAL before COMMIT
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _Unusable(f"quick_check: {'; '.join(str(r[0]) for r in check[:3])}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise _Unusable("not an edge-agent outbox (tables but no schema version)")
                self._create(conn)
            elif version == 1:
                self._migrate_v1(conn)
            elif version != SCHEMA_VERSION:
                raise _Unusable(f"outbox schema version {version}, this agent knows {SCHEMA_VERSION}")
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "next_seq" not in rows:
                raise _Unusable("no next_seq in meta")
            conn.execute("SELECT id, kind, payload FROM items LIMIT 0").fetchall()
            conn.execute("SELECT id, weight FROM weights LIMIT 0").fetchall()
            sizes = Counter(_pages_for(n) for (n,) in conn.execute("SELECT length(payload) FROM items"))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._sizes = sizes
        self._db_bytes, self._wal_bytes, self._shm_bytes = self._files()
        self._wal_used = max(0, (self._wal_bytes - WAL_HEADER_BYTES) // FRAME_BYTES)
        self._n_pages = conn.execute("PRAGMA page_count").fetchone()[0]
        self._evicted = Counter({k[8:]: v for k, v in rows.items() if k.startswith("evicted.") and v})
        self._acked = Counter({k[6:]: v for k, v in rows.items() if k.startswith("acked.") and v})

    def _create(self, conn: sqlite3.Connection) -> None:
        """The schema, in one transaction; seq starts at 1, or above the floor when there is one."""
        start = max(1, self._seq_reserved)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL)")
            conn.execute("CREATE INDEX items_kind ON items (kind, id)")
            conn.execute("CREATE TABLE weights (id INTEGER PRIMARY KEY, weight INTEGER NOT NULL)")
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
            conn.execute("INSERT INTO meta VALUES ('next_seq', ?)", (start,))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Schema 1 (``weight`` in the items row, beside the payload) to 2, in place, in one
        small transaction: the weights above 1 are copied to ``weights``; items, seqs and
        counters are not touched. The v1 ``items.weight`` column and its index
        ``items_kind (kind, id, weight)`` stay, unused and never written again (dropping the
        column would rewrite every row: the whole file through the WAL, over the budget)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] != 1:  # migrated meanwhile
                conn.execute("ROLLBACK")
                return
            conn.execute("SELECT id, kind, weight, payload FROM items LIMIT 0").fetchall()
            conn.execute("CREATE TABLE weights (id INTEGER PRIMARY KEY, weight INTEGER NOT NULL)")
            conn.execute("INSERT INTO weights SELECT id, weight FROM items WHERE weight != 1")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if "no such" in str(exc) or "already exists" in str(exc):  # not the v1 schema after all
                raise _Unusable(f"outbox schema version 1 with other tables: {exc}") from None
            raise
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.warning("outbox %s: schema 1 migrated to %d (weights in their own table)", self.path, SCHEMA_VERSION)

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
        """At start: the WAL left by the last run is checkpointed, and a smaller
        ``outbox_max_mb`` than the file was made with (or a budget that leaves the database less
        than the last run did) is applied now."""
        self._checkpoint(truncate=True)
        self._n_pages = self._pages()[0]
        evicted = self._make_room(0)
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
        seq = self._next_seq()  # (one connection, under the lock: the transaction below sees the same)
        payload = json.dumps(dict(message, seq=seq), separators=(",", ":")).encode()
        pages = _pages_for(len(payload))
        incoming = (seq, kind)
        drop = False
        for attempt in range(2):
            # 1. (second attempt only) this commit's WAL could not hold the evictions and the
            # shrinking needed first: they go in transactions of their own, each fitting the WAL
            if attempt:
                drop = self._make_room(pages, incoming)[_INCOMING] > 0
            # 2. checkpoint first if this transaction might not fit beside what the WAL holds
            n_pages, free = self._pages()
            share = self._plan(pages)[1]
            base = self._overhead(n_pages + pages) + pages
            want = base + ROOM_EVICTIONS * EVICT_FRAMES + VACUUM_FRAMES * max(0, n_pages - share - SPLIT_PAGES)
            # (the file after it: an insert takes free pages first, and the evictions before it
            # keep it within the share)
            after = n_pages if drop else max(n_pages, min(n_pages + pages + SPLIT_PAGES - free, share + SPLIT_PAGES))
            room = self._fit(want, after)
            if room < want and not attempt:
                continue
            c.execute("BEGIN IMMEDIATE")
            try:
                self._tx_sizes = Counter(self._sizes)
                budget_frames = room - base
                evicted: Counter[str] = Counter()
                state = (n_pages, n_pages - free)
                if not drop:  # 3. room for this message, by the policy (which may drop it instead)
                    evicted, cost, fits, state = self._evict_for_room(pages, budget_frames, incoming, state)
                    if not fits and not evicted[_INCOMING] and not attempt:
                        c.execute("ROLLBACK")  # (nothing was written: cache_spill is off)
                        self._tx_sizes = None
                        continue
                    drop = evicted.pop(_INCOMING, 0) > 0
                    budget_frames -= cost
                if seq >= self._seq_reserved:
                    self._write_seq_file(seq + SEQ_BLOCK)
                if drop:
                    evicted[kind] += 1
                else:
                    c.execute("INSERT INTO items (id, kind, payload) VALUES (?, ?, ?)", (seq, kind, payload))
                    self._tx_sizes[pages] += 1
                    state = (max(state[0], state[1] + pages + SPLIT_PAGES), state[1] + pages + SPLIT_PAGES)
                c.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
                # 4. the file within its pages (it has more when the database's share shrank)
                more, cost, _, state = self._evict_for_room(0, budget_frames, None, state)
                evicted.update(more)
                self._save_counts("evicted", evicted + self._evicted_unsaved)
                self._tx_estimate = room - budget_frames + cost
                c.execute("COMMIT")
                self._wal_used += self._tx_estimate
            except BaseException:
                self._rollback()
                self._tx_sizes = None
                raise
            break
        self._sizes, self._tx_sizes = +self._tx_sizes, None
        self._n_pages = state[0]
        self._evicted.update(evicted)
        self._evicted_unsaved.clear()
        self._after_commit()
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

    # -- the budget ------------------------------------------------------------------------------------
    def _files(self) -> tuple[int, int, int]:
        """Sizes of the database, the WAL and the -shm index, as os.stat sees them."""
        out = []
        for suffix in ("", "-wal", "-shm"):
            try:
                out.append(os.stat(f"{self.path}{suffix}").st_size)
            except OSError:
                out.append(0)
        return out[0], out[1], out[2]

    def _pages(self) -> tuple[int, int]:
        c = self._conn
        return c.execute("PRAGMA page_count").fetchone()[0], c.execute("PRAGMA freelist_count").fetchone()[0]

    def _largest(self) -> int:
        """Pages of the largest message in the outbox (as of the open transaction), at least 1."""
        sizes = self._sizes if self._tx_sizes is None else self._tx_sizes
        return max((p for p, n in sizes.items() if n > 0), default=1)

    def _plan(self, incoming_pages: int = 0) -> tuple[int, int]:
        """(WAL frames, database pages) for the largest message held or coming."""
        return budget(self.max_bytes, max(incoming_pages, self._largest()))

    @staticmethod
    def _overhead(n_pages: int) -> int:
        """WAL frames of a transaction's bookkeeping in a file of ``n_pages``."""
        return TX_FRAMES + _ptrmap_pages(n_pages)

    def _checkpoint(self, truncate: bool = False) -> None:
        """Copy the WAL into the database (whose file takes the size of its last commit: pages
        given back by incremental_vacuum leave the file here); the next transaction writes the
        WAL from its start again. ``truncate``: the WAL file too is cut to nothing (else it
        keeps its size: overwriting it costs a commit's fsync less than appending to it)."""
        mode = "TRUNCATE" if truncate else "RESTART"
        busy, frames, _ = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self._wal_used = frames if busy else 0  # (busy: another process reads the file: no restart)
        self._db_bytes, self._wal_bytes, self._shm_bytes = self._files()

    def _wal_index_frames(self) -> int | None:
        """The frames in the WAL, as SQLite's wal-index says (``mxFrame`` of its header, the
        first 48 bytes of -shm, kept twice: https://www.sqlite.org/walformat.html); None if
        the header cannot be read or does not look right (then the estimates stand)."""
        try:
            with open(f"{self.path}-shm", "rb") as f:
                head = f.read(96)
        except OSError:
            return None
        if len(head) < 96 or head[:48] != head[48:]:
            return None
        version, _, _, init, _, page, frames = struct.unpack("=IIIBBHI", head[:20])
        if version != 3007000 or not init or page != PAGE_SIZE:
            return None
        if WAL_HEADER_BYTES + frames * FRAME_BYTES > self._wal_bytes:  # (more than the file holds)
            return None
        return frames

    def _look(self) -> None:
        """The files' sizes, as they are now."""
        db, wal, self._shm_bytes = self._files()
        if wal > self._wal_bytes:  # it grew: the last commit's frames end at its end
            self._wal_used = (wal - WAL_HEADER_BYTES) // FRAME_BYTES
        self._db_bytes, self._wal_bytes = db, wal

    def _fit(self, frames: int, pages_after: int) -> int:
        """Before a transaction that writes at most ``frames`` WAL frames and leaves the
        database at most ``pages_after`` pages: checkpoint first if the files could otherwise
        exceed the budget, at its commit (the WAL with those frames beside the database file)
        or at the next checkpoint (the database file grown to ``pages_after`` beside that
        WAL); the WAL file itself is truncated if its size is in the way. Returns the frames
        the transaction may write. (The files are looked at only when the sizes known from
        the last look, and the frames committed since, as estimated, leave too little room.)"""
        share = self._plan()[0]  # (the WAL's share: a larger WAL only makes checkpoints longer)

        def room() -> int:
            wal = max(self._wal_bytes, WAL_HEADER_BYTES + self._wal_used * FRAME_BYTES if self._wal_used else 0)
            avail = (self.max_bytes - max(self._db_bytes, pages_after * PAGE_SIZE)
                     - max(self._shm_bytes, _shm_bytes(self._wal_used + frames)))
            if wal > avail:
                return -1
            return min((avail - WAL_HEADER_BYTES) // FRAME_BYTES, max(share, frames)) - self._wal_used

        if room() >= frames:
            return room()
        self._look()
        frames_now = self._wal_index_frames()
        if frames_now is not None and frames_now < self._wal_used:
            self._wal_used = frames_now
        for truncate in (False, True):
            if room() >= frames or not self._wal_bytes:
                break
            self._checkpoint(truncate)
        return room()

    def _make_room(self, pages: int, incoming: tuple[int, str] | None = None) -> Counter[str]:
        """Before a commit of a message of ``pages`` (``incoming``: its (seq, kind); none at
        start) whose transaction could not hold the evictions and the shrinking it needs:
        evict and give back pages in transactions of their own, each one fitting beside the
        database file with the WAL empty, checkpointed after it (the file shrinks then), until
        the database is within its share with room for the message. ``_INCOMING`` in the
        result: the policy drops the incoming message itself."""
        evicted: Counter[str] = Counter()
        c = self._conn
        while True:
            in_use, limit = self._targets(pages, incoming)
            n_pages, free = self._pages()
            if n_pages - free <= in_use and n_pages <= limit and self._files()[0] <= limit * PAGE_SIZE:
                return evicted
            self._checkpoint()  # (a database file not yet truncated to its pages: this may be all)
            if n_pages - free <= in_use and n_pages <= limit and self._files()[0] <= limit * PAGE_SIZE:
                return evicted
            room = self._fit(self._overhead(n_pages) + STEP_MIN_FRAMES, n_pages) - self._overhead(n_pages)
            c.execute("BEGIN IMMEDIATE")
            try:
                self._tx_sizes = Counter(self._sizes)
                step, cost, _, state = self._evict_for_room(pages, max(STEP_MIN_FRAMES, room), incoming)
                self._save_counts("evicted", step - Counter({_INCOMING: step[_INCOMING]}))
                self._tx_estimate = self._overhead(n_pages) + cost
                c.execute("COMMIT")
                self._wal_used += self._tx_estimate
            except BaseException:
                self._rollback()
                self._tx_sizes = None
                raise
            self._sizes, self._tx_sizes = +self._tx_sizes, None
            self._n_pages = state[0]
            self._evicted.update(step - Counter({_INCOMING: step[_INCOMING]}))
            evicted.update(step)
            self._checkpoint()
            if step[_INCOMING] or not cost:  # dropped, or no progress (a message too large)
                return evicted

    def _targets(self, pages: int, incoming: tuple[int, str] | None) -> tuple[int, int]:
        """(pages in use at most, pages of the file at most): before the ``incoming`` message
        of ``pages`` goes in, room for it within the database's share; with none coming (after
        the insert, or at start), the share and what an insert may add to it (``SPLIT_PAGES``),
        which is also the most pages the file may have."""
        share = self._plan(pages)[1]
        return (share - pages if incoming is not None else share + SPLIT_PAGES), share + SPLIT_PAGES

    def _evict_for_room(self, pages: int, budget_frames: int, incoming: tuple[int, str] | None,
                        state: tuple[int, int] | None = None) -> tuple[Counter[str], int, bool, tuple[int, int]]:
        """In the open transaction: evict until the pages in use leave room within the
        database's share for the ``incoming`` message of ``pages`` (not yet inserted), or with
        none coming until they are within it (``_targets``); then give back the file's pages
        beyond it (incremental_vacuum); as far as ``budget_frames`` of WAL go. ``state``:
        (pages, pages in use) of the database, at most, if known (SQLite is asked only when
        they are not within the targets). Returns the evictions by kind, their WAL frames (as
        estimated: ``EVICT_FRAMES`` a message, ``VACUUM_FRAMES`` a page given back), whether
        the targets are met, and the new (pages, pages in use), at most."""
        evicted: Counter[str] = Counter()
        cost = 0
        in_use, limit = self._targets(pages, incoming)
        if state is not None and state[1] <= in_use and state[0] <= limit:
            return evicted, 0, True, state
        while True:
            n_pages, free = self._pages()
            fits = n_pages - free <= in_use
            if fits or cost + EVICT_FRAMES > budget_frames:
                break
            kind = self._evict_one(incoming)
            if kind is None:
                break
            if kind == _INCOMING:
                evicted[kind] += 1
                return evicted, cost, False, (n_pages, n_pages - free)
            evicted[kind] += 1
            cost += EVICT_FRAMES
            in_use, limit = self._targets(pages, incoming)  # (the largest message may have gone)
        vacuum = max(0, min(free, n_pages - limit, (budget_frames - cost) // VACUUM_FRAMES))
        for _ in range(vacuum):
            # one page per statement: Python's sqlite3 steps a statement without result
            # columns once, and incremental_vacuum frees one page per step
            self._conn.execute("PRAGMA incremental_vacuum")
        n_pages -= vacuum
        return evicted, cost + VACUUM_FRAMES * vacuum, fits and n_pages <= limit, (n_pages, n_pages - free + vacuum)

    def _delete(self, item_id: int) -> str | None:
        """Delete one message (and its weight); its kind, or None if it is not there."""
        c = self._conn
        row = c.execute("SELECT kind, length(payload) FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        c.execute("DELETE FROM items WHERE id = ?", (item_id,))
        if row[0] == "summary":  # (only summaries have a weight)
            c.execute("DELETE FROM weights WHERE id = ?", (item_id,))
        self._tx_sizes[_pages_for(row[1])] -= 1
        return row[0]

    def _evict_one(self, incoming: tuple[int, str] | None = None) -> str | None:
        """Delete (or merge away) one message by the eviction policy; its kind, ``_INCOMING``
        if the policy picks the message being committed (``incoming``: (seq, kind), not yet
        inserted), or None when only one message is left."""
        c = self._conn
        n = c.execute("SELECT count(*) FROM items").fetchone()[0] + (incoming is not None)
        if n <= 1:
            return None
        summaries = c.execute("SELECT i.id, coalesce(w.weight, 1) FROM items i LEFT JOIN weights w ON w.id = i.id "
                              "WHERE i.kind = 'summary' ORDER BY i.id").fetchall()
        if incoming is not None and incoming[1] == "summary":
            summaries.append((incoming[0], 1))
        if len(summaries) >= 3:
            older = summaries[:-1]  # the newest summary is not thinned
            k = min(range(len(older) - 1), key=lambda i: (older[i][1] + older[i + 1][1], i))
            (drop, w_drop), (keep, w_keep) = older[k], older[k + 1]
            self._delete(drop)
            c.execute("INSERT INTO weights VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET weight = excluded.weight",
                      (keep, w_drop + w_keep))
            return "summary"
        if summaries:
            if incoming is not None and summaries[0][0] == incoming[0]:
                return _INCOMING
            self._delete(summaries[0][0])
            return "summary"
        row = c.execute(f"SELECT id, kind, {_RANK_SQL} FROM items ORDER BY 3, id LIMIT 1").fetchone()
        if incoming is not None and (row is None or EVICTION_RANK.get(incoming[1], 0) < row[2]):
            return _INCOMING
        self._delete(row[0])
        return row[1]

    def _after_commit(self) -> None:
        """After a commit: the files should be within the budget (what _fit and _make_room
        reserved); if not (a message too large for the budget, or a transaction that wrote more
        than reserved: counted in ``overruns``), checkpoint and truncate the WAL now."""
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        if wal > self._wal_bytes:  # it grew: this commit's frames end at its end
            self._wal_used = (wal - WAL_HEADER_BYTES) // FRAME_BYTES
            self._wal_bytes = wal
        if self._db_bytes + wal + self._shm_bytes <= self.max_bytes:
            return
        self._look()
        if self._db_bytes + self._wal_bytes + self._shm_bytes <= self.max_bytes:
            return
        largest = self._largest()
        oversize = budget(self.max_bytes, largest)[1] < largest  # not even once beside its WAL
        if not oversize:
            self.overruns += 1
        try:
            self._checkpoint(truncate=True)
        except sqlite3.Error as exc:
            self._failed(exc, "checkpointing")
            return
        size = sum(self._files())
        if oversize and not self._warned_oversize:
            self._warned_oversize = True
            log.warning("outbox %s: %d bytes on disk, over its %d-byte budget: a single message is larger than the "
                        "budget allows (about half of it: its pages go through the WAL into the database; it is "
                        "kept; raise [storage] outbox_max_mb)", self.path, size, self.max_bytes)
        elif not oversize and self.overruns & (self.overruns - 1) == 0:  # (the 1st, 2nd, 4th, 8th...)
            log.warning("outbox %s: a transaction took the files to more than the %d-byte budget (%d overrun(s)); "
                        "checkpointed", self.path, self.max_bytes, self.overruns)

    def _delete_acked(self) -> None:
        c = self._conn
        ids = sorted(self._ack_failed)
        wal_frames = self._plan()[0]
        chunk = max(1, (wal_frames - self._overhead(self._n_pages)) // EVICT_FRAMES)  # (several only after failures)
        try:
            for start in range(0, len(ids), chunk):
                part = ids[start:start + chunk]
                # deletes do not grow the file; checkpoint first if the WAL cannot take them
                estimate = self._overhead(self._n_pages) + EVICT_FRAMES * len(part)
                self._fit(estimate, self._n_pages)
                c.execute("PRAGMA synchronous = NORMAL")
                try:
                    c.execute("BEGIN IMMEDIATE")
                    self._tx_sizes = Counter(self._sizes)
                    done: Counter[str] = Counter()
                    for item_id in part:
                        kind = self._delete(item_id)
                        if kind is not None:
                            done[kind] += 1
                    self._save_counts("acked", done)
                    self._tx_estimate = estimate
                    c.execute("COMMIT")
                    self._wal_used += estimate
                    self._sizes = +self._tx_sizes
                finally:
                    self._tx_sizes = None
                    self._rollback()
                    c.execute(f"PRAGMA synchronous = {self.synchronous}")
                self._acked.update(done)
                self._ack_failed.difference_update(part)
        except sqlite3.Error as exc:
            self._failed(exc, "deleting acknowledged messages")

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
