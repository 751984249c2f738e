"""The one interface every source implements."""
from __future__ import annotations

import threading
from typing import Protocol

from edge_agent.window import SampleBlock


class Emit(Protocol):
    """Hand a block to the agent; False: refused (full queue, counted) or stopped.
    ``arrived``: when the block's last byte reached the gateway (time.time()), for a source
    that decodes some time after reading (pacing.py); by default, the moment of the call."""

    def __call__(self, block: SampleBlock, arrived: float | None = None) -> bool: ...


class Source(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit blocks until ``stop`` is set (or the source ends); never raise for bad input."""
        ...

    def counters(self) -> dict[str, int]:
        """Source-specific counters (frames, errors, reconnects, ...) for status and summaries."""
        ...
