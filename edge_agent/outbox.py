"""The outbox: messages committed for publishing, held until the broker acknowledges them.

Every alert and summary is committed here first; ``seq`` (per device, monotonic, no gaps)
is assigned at commit. The publisher takes pending messages in commit order and acks them
on PUBACK; only then are they deleted.

This is the in-memory outbox of the pipeline skeleton: bounded in bytes, with eviction by
meaning (summaries oldest first, alerts only when nothing else is left), every eviction
counted. It does not survive a restart; issue #7 replaces it with the SQLite (WAL) outbox
behind the same methods.
"""
from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

# Which kinds are evicted first when the outbox is full (lower goes first).
EVICTION_RANK = {"summary": 0, "ack": 1, "alert": 2}


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    kind: str  # "alert", "summary", ...: also the topic's last segment
    seq: int
    payload: bytes


class MemoryOutbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[int, OutboxItem] = OrderedDict()
        self._bytes = 0
        self._next_id = 1
        self._next_seq = 1
        self.evicted: Counter[str] = Counter()
        self.committed: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.new_item = threading.Event()

    def commit(self, kind: str, message: dict) -> int:
        """Assign the next ``seq``, serialise and store ``message``; return the seq."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            payload = json.dumps(dict(message, seq=seq), separators=(",", ":")).encode()
            item = OutboxItem(self._next_id, kind, seq, payload)
            self._next_id += 1
            self._items[item.id] = item
            self._bytes += len(payload)
            self.committed[kind] += 1
            self._evict_over_budget()
        self.new_item.set()
        return seq

    def pending(self, limit: int, skip: set[int] | frozenset[int] = frozenset()) -> list[OutboxItem]:
        """Up to ``limit`` unacknowledged items in commit order, leaving out ids in ``skip``."""
        with self._lock:
            out = []
            for item in self._items.values():
                if item.id not in skip:
                    out.append(item)
                    if len(out) >= limit:
                        break
            return out

    def ack(self, item_id: int) -> None:
        with self._lock:
            item = self._items.pop(item_id, None)
            if item is not None:
                self._bytes -= len(item.payload)
                self.acked[item.kind] += 1

    def depth(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _evict_over_budget(self) -> None:
        while self._bytes > self.max_bytes and len(self._items) > 1:
            victim = min(self._items.values(), key=lambda it: (EVICTION_RANK.get(it.kind, 0), it.id))
            del self._items[victim.id]
            self._bytes -= len(victim.payload)
            self.evicted[victim.kind] += 1
