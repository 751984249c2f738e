"""A bounded queue between threads that counts what it could not take.

Why: a stage that falls behind must neither grow memory without limit nor drop data
silently. ``offer`` never blocks the producer (a serial port cannot be paused); when the
queue is full the item is refused, counted in ``dropped`` and logged (rate-limited).
``put`` blocks with a timeout for producers that can wait (replay, tests).

``wait_for(count, timeout)`` lets the consumer sleep until ``count`` items have gathered
instead of waking for each one: a producer checks one integer after each put and sets an
event when the mark is reached. Why: on a small ARM (and this VM) a thread that wakes for
every 10 ms serial frame pays far more per wake-up than its work costs (benches/RESULTS.md,
"where the daemon's CPU goes").
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class BoundedQueue(Generic[T]):
    def __init__(self, name: str, maxsize: int, log_every_s: float = 10.0) -> None:
        if maxsize < 1:
            raise ValueError(f"queue {name}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self._q: queue.Queue[T] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._dropped = 0
        self._accepted = 0
        self._log_every_s = log_every_s
        self._last_log = 0.0
        self._want = 0  # the consumer's mark in wait_for (0: nobody waiting)
        self._gathered = threading.Event()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def accepted(self) -> int:
        return self._accepted

    def qsize(self) -> int:
        return self._q.qsize()

    def offer(self, item: T) -> bool:
        """Enqueue without blocking; on a full queue count the drop and return False."""
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self._count_drop()
            return False
        self._took()
        return True

    def put(self, item: T, timeout: float) -> bool:
        """Enqueue, waiting up to ``timeout`` s for room; a timeout counts as a drop."""
        try:
            self._q.put(item, timeout=timeout)
        except queue.Full:
            self._count_drop()
            return False
        self._took()
        return True

    def put_until(self, item: T, stop: threading.Event, poll_s: float = 0.1) -> bool:
        """Enqueue, waiting as long as it takes for room (a producer that can wait, like a
        file); False only if ``stop`` is set first. Waiting is not a drop: nothing counted."""
        while not stop.is_set():
            try:
                self._q.put(item, timeout=poll_s)
            except queue.Full:
                continue
            self._took()
            return True
        return False

    def _took(self) -> None:
        """After a put: count it, and wake a consumer in wait_for whose mark is reached."""
        with self._lock:
            self._accepted += 1
        if self._want and self._q.qsize() >= self._want:
            self._gathered.set()

    def get(self, timeout: float) -> T | None:
        """The next item, or None after ``timeout`` seconds with nothing to take."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_for(self, count: int, timeout: float) -> bool:
        """Sleep until at least ``count`` items are queued (True) or ``timeout`` s pass
        (False), without taking any. One consumer at a time."""
        self._gathered.clear()
        self._want = max(1, count)
        try:
            if self._q.qsize() >= self._want:
                return True
            return self._gathered.wait(timeout)
        finally:
            self._want = 0

    def drain(self, limit: int) -> list[T]:
        """Up to ``limit`` items already queued, without waiting."""
        items: list[T] = []
        while len(items) < limit:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items

    def _count_drop(self) -> None:
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            self._last_log = now
            log.warning("queue %s is full (%d slots): %d items refused so far", self.name, self.maxsize, dropped)
