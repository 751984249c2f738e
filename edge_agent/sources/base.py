"""The one interface every source implements."""
from __future__ import annotations

import threading
from typing import Callable, Protocol

from edge_agent.window import SampleBlock

Emit = Callable[[SampleBlock], bool]  # False: refused (full queue, counted) or stopped


class Source(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit blocks until ``stop`` is set (or the source ends); never raise for bad input."""
        ...

    def counters(self) -> dict[str, int]:
        """Source-specific counters (frames, errors, reconnects, ...) for status and summaries."""
        ...
